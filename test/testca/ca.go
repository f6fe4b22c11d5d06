// Package testca is a throwaway certificate authority for tests: one root
// made per run, leaf certificates for 127.0.0.1 and test host names, written
// to PEM files for programs (Dovecot, curl, fetchmail, the gateway's config)
// or handed over as crypto/tls values.
//
//	ca, err := testca.New()
//	certFile, keyFile, err := ca.WriteLeaf(dir, "gateway", "mail.test", "127.0.0.1")
//	os.WriteFile(caFile, ca.CertPEM, 0o644) // or ca.WriteCA(dir) for curl --cacert
//
// Keys are ECDSA P-256: fast to make and accepted by Dovecot, OpenSSL and Go.
// Nothing here is fit for production.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a root certificate and its key.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte // the root, PEM-encoded: what clients trust
	key     *ecdsa.PrivateKey
}

// New makes a root valid from an hour ago for a day.
func New() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "mailgate test CA", Organization: []string{"mailgate tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key}, nil
}

// Pool returns a pool holding only this root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf issues a server certificate for hosts (DNS names or IP addresses; the
// first is also the common name) and returns the PEM chain (leaf, then root)
// and the PEM private key.
func (ca *CA) Leaf(hosts ...string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("testca: a leaf needs at least one host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	chain := append(pemBlock("CERTIFICATE", der), ca.CertPEM...)
	return chain, pemBlock("PRIVATE KEY", keyDER), nil
}

// TLSCertificate issues a leaf for hosts as a crypto/tls value.
func (ca *CA) TLSCertificate(hosts ...string) (tls.Certificate, error) {
	c, k, err := ca.Leaf(hosts...)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(c, k)
}

// WriteLeaf issues a leaf for hosts and writes it to dir/name.crt and
// dir/name.key (mode 0644 and 0600).
func (ca *CA) WriteLeaf(dir, name string, hosts ...string) (certFile, keyFile string, err error) {
	c, k, err := ca.Leaf(hosts...)
	if err != nil {
		return "", "", err
	}
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, c, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, k, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// WriteCA writes the root to dir/ca.crt and returns the path.
func (ca *CA) WriteCA(dir string) (string, error) {
	f := filepath.Join(dir, "ca.crt")
	return f, os.WriteFile(f, ca.CertPEM, 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
