// Package pebbletest runs Pebble, Let's Encrypt's test ACME server, for
// tests: /usr/bin/pebble (Debian package `pebble`) on 127.0.0.1 with a
// generated configuration and API certificate, optionally with
// pebble-challtestsrv as its DNS server so real HTTP-01 and TLS-ALPN-01
// validations reach listeners on 127.0.0.1.
//
//	srv := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true})
//	cfg := mgtls.Config{ACME: &mgtls.ACMEConfig{
//		Domains: []string{"mail.test"}, Email: "postmaster@mail.test",
//		CA: srv.Directory, CARoot: srv.CARoot, Storage: t.TempDir(),
//		Challenges: mgtls.Challenges{TLSALPN: srv.TLSALPNAddr()},
//	}}
//	client := &tls.Config{RootCAs: srv.Roots(t), ServerName: "mail.test"}
//
// When the binaries are missing, Start skips the test loudly, or fails it
// under CI=true. It stops only the processes it started, in t.Cleanup.
//
// This package must not import mailgate/tls, so that tests inside that
// package can use it.
package pebbletest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"mailgate/test/syncbuf"
	"mailgate/test/testca"
)

// Paths of the Debian package's binaries.
const (
	PebbleBin    = "/usr/bin/pebble"
	ChallTestBin = "/usr/bin/pebble-challtestsrv"
)

// startTimeout bounds waiting for a started process to listen.
const startTimeout = 15 * time.Second

// Options selects Pebble's behaviour.
type Options struct {
	// AlwaysValid makes every challenge pass without contacting anyone
	// (PEBBLE_VA_ALWAYS_VALID=1). False: Pebble really validates, so set DNS.
	AlwaysValid bool
	// DNS starts pebble-challtestsrv as Pebble's DNS server, answering
	// 127.0.0.1 for every A query (and nothing for AAAA).
	DNS bool
	// CertValidity is the lifetime of issued certificates, in whole seconds;
	// zero keeps Pebble's default (years). Short values exercise renewal.
	CertValidity time.Duration
	// Blocklist are domains Pebble refuses to issue for (rejectedIdentifier).
	Blocklist []string
}

// Server is a running Pebble.
type Server struct {
	// Directory is the ACME directory URL (tls.acme.ca).
	Directory string
	// CARoot is a PEM file holding the root that signs the certificate
	// Pebble's HTTPS API presents (tls.acme.ca_root).
	CARoot string
	// HTTPPort and TLSPort are where Pebble's VA connects for HTTP-01 and
	// TLS-ALPN-01 validations: run the challenge listeners there.
	HTTPPort, TLSPort int

	mgmt   string // management API host:port
	apiCAs *x509.CertPool
}

// HTTPAddr is "127.0.0.1:<HTTPPort>", for tls.acme.challenges.http.
func (s *Server) HTTPAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.HTTPPort)) }

// TLSALPNAddr is "127.0.0.1:<TLSPort>", for tls.acme.challenges.tls_alpn.
func (s *Server) TLSALPNAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.TLSPort)) }

// Require skips t loudly when Pebble is not installed, or fails it under
// CI=true, where the tests must run.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	for _, b := range append([]string{PebbleBin}, bins...) {
		if _, err := os.Stat(b); err != nil {
			msg := fmt.Sprintf("!!! %s is not installed (Debian package `pebble`): ACME tests NOT RUN: %v", b, err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// Start runs Pebble (and pebble-challtestsrv when opts.DNS) for the duration
// of the test.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.DNS {
		Require(t, ChallTestBin)
	} else {
		Require(t)
	}
	dir := t.TempDir()
	// The Debian package ships no certificate for Pebble's HTTPS API: serve
	// it with a leaf of a throwaway CA, and hand that CA's root to clients.
	ca, err := testca.New()
	if err != nil {
		t.Fatalf("pebbletest: %v", err)
	}
	apiCert, apiKey, err := ca.WriteLeaf(dir, "api", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatalf("pebbletest: %v", err)
	}
	caRoot, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatalf("pebbletest: %v", err)
	}
	ports := FreePorts(t, 4)
	s := &Server{
		Directory: fmt.Sprintf("https://127.0.0.1:%d/dir", ports[0]),
		CARoot:    caRoot,
		HTTPPort:  ports[2],
		TLSPort:   ports[3],
		mgmt:      fmt.Sprintf("127.0.0.1:%d", ports[1]),
		apiCAs:    ca.Pool(),
	}

	type pebbleConfig struct {
		ListenAddress             string   `json:"listenAddress"`
		ManagementListenAddress   string   `json:"managementListenAddress"`
		Certificate               string   `json:"certificate"`
		PrivateKey                string   `json:"privateKey"`
		HTTPPort                  int      `json:"httpPort"`
		TLSPort                   int      `json:"tlsPort"`
		OCSPResponderURL          string   `json:"ocspResponderURL"`
		ExternalAccountBinding    bool     `json:"externalAccountBindingRequired"`
		DomainBlocklist           []string `json:"domainBlocklist,omitempty"`
		CertificateValidityPeriod uint64   `json:"certificateValidityPeriod,omitempty"`
	}
	conf, err := json.Marshal(map[string]pebbleConfig{"pebble": {
		ListenAddress:             fmt.Sprintf("127.0.0.1:%d", ports[0]),
		ManagementListenAddress:   s.mgmt,
		Certificate:               apiCert,
		PrivateKey:                apiKey,
		HTTPPort:                  s.HTTPPort,
		TLSPort:                   s.TLSPort,
		DomainBlocklist:           opts.Blocklist,
		CertificateValidityPeriod: uint64(opts.CertValidity / time.Second),
	}})
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		t.Fatal(err)
	}

	args := []string{"-config", confPath}
	if opts.DNS {
		dns := startChallTestSrv(t)
		args = append(args, "-dnsserver", dns)
	}
	env := append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // no random 0-15 s sleep before validating
		"PEBBLE_WFE_NONCEREJECT=0", // do not reject 5% of good nonces
	)
	if opts.AlwaysValid {
		env = append(env, "PEBBLE_VA_ALWAYS_VALID=1")
	}
	startProcess(t, "pebble", PebbleBin, args, env)
	waitHTTPS(t, s.Directory, s.apiCAs)
	return s
}

// APIRoots is the pool that trusts Pebble's HTTPS API (the CA of CARoot),
// for an ACME client of the directory.
func (s *Server) APIRoots() *x509.CertPool { return s.apiCAs }

// MailgateACME is the tls section of a mailgate configuration that obtains
// a certificate for mail.test from this Pebble: storage is tls.acme.storage
// (a directory, or redis), alpn the address of the tls-alpn-01 responder.
func (s *Server) MailgateACME(storage, alpn string) string {
	return fmt.Sprintf(`tls:
  acme:
    domains: [mail.test]
    email: postmaster@mail.test
    ca: %q
    ca_root: %q
    storage: %q
    challenges: {tls_alpn: %q}
`, s.Directory, s.CARoot, storage, alpn)
}

// Roots returns the pool of Pebble's issuing root (GET /roots/0 on the
// management API; Pebble makes a new root at every start). A client that
// trusts only this pool validates certificates Pebble issued.
func (s *Server) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	body := httpsGet(t, "https://"+s.mgmt+"/roots/0", s.apiCAs)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(body) {
		t.Fatalf("pebbletest: /roots/0 returned no PEM certificate: %q", body)
	}
	return pool
}

// FreePorts returns n distinct TCP ports free on 127.0.0.1 (and, for UDP, on
// the same numbers) at the time of the call.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var lns []io.Closer
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var ports []int
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pebbletest: %v", err)
		}
		lns = append(lns, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // UDP taken: keep the TCP one held so it is not picked again
		}
		lns = append(lns, pc)
		ports = append(ports, port)
	}
	return ports
}

// startChallTestSrv runs pebble-challtestsrv as a DNS server only and returns
// its address.
func startChallTestSrv(t testing.TB) string {
	ports := FreePorts(t, 2)
	dns := fmt.Sprintf("127.0.0.1:%d", ports[0])
	mgmt := fmt.Sprintf("127.0.0.1:%d", ports[1])
	startProcess(t, "pebble-challtestsrv", ChallTestBin, []string{
		"-dns01", dns, "-management", mgmt,
		"-http01", "", "-https01", "", "-tlsalpn01", "",
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
	}, os.Environ())
	waitTCP(t, mgmt)
	return dns
}

// startProcess starts bin and arranges for exactly that process to be
// killed and reaped in t.Cleanup. Its output is logged if the test fails.
func startProcess(t testing.TB, name, bin string, args, env []string) {
	t.Helper()
	out := &syncbuf.Buffer{}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("pebbletest: starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
}

func waitTCP(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebbletest: %s not listening after %s: %v", addr, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitHTTPS(t testing.TB, url string, roots *x509.CertPool) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		_, err := tryGet(url, roots)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebbletest: %s not answering after %s: %v", url, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httpsGet(t testing.TB, url string, roots *x509.CertPool) []byte {
	t.Helper()
	body, err := tryGet(url, roots)
	if err != nil {
		t.Fatalf("pebbletest: %v", err)
	}
	return body
}

func tryGet(url string, roots *x509.CertPool) ([]byte, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}
