package testca

import (
	"crypto/tls"
	"testing"
)

// The T variants are for tests: they fail t instead of returning an error,
// so that a test's set-up reads as what it makes.
//
//	ca := testca.NewT(t)
//	cert := ca.CertificateT(t, "127.0.0.1")
//	certFile, keyFile := ca.WriteLeafT(t, dir, "gateway", "mail.test")

// NewT is New, failing t on error.
func NewT(t testing.TB) *CA {
	t.Helper()
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// CertificateT is TLSCertificate, failing t on error.
func (ca *CA) CertificateT(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	cert, err := ca.TLSCertificate(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// WriteLeafT is WriteLeaf, failing t on error.
func (ca *CA) WriteLeafT(t testing.TB, dir, name string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := ca.WriteLeaf(dir, name, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// WriteCAT is WriteCA, failing t on error.
func (ca *CA) WriteCAT(t testing.TB, dir string) string {
	t.Helper()
	f, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
