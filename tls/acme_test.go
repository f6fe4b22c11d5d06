package tls

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/test/pebbletest"
)

// acmeConfig is tls.acme for srv with both challenge listeners on the ports
// Pebble validates.
func acmeConfig(t *testing.T, srv *pebbletest.Server, domains ...string) *ACMEConfig {
	return &ACMEConfig{
		Domains:       domains,
		Email:         "postmaster@" + domains[0],
		CA:            srv.Directory,
		CARoot:        srv.CARoot,
		Storage:       t.TempDir(),
		Challenges:    Challenges{HTTP: srv.HTTPAddr(), TLSALPN: srv.TLSALPNAddr()},
		ObtainTimeout: 30 * time.Second,
	}
}

func newManager(t *testing.T, cfg Config, log *zap.Logger) *Manager {
	t.Helper()
	m, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestACMEObtain(t *testing.T) {
	srv := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true})
	log, logs := testLogger(t)
	dir := t.TempDir()
	static, staticCert := writePair(t, dir, "static", "legacy.example.net")
	acme := acmeConfig(t, srv, "mail.test", "imap.test")
	m := newManager(t, Config{ACME: acme, Certificates: []CertificateFile{static}}, log)
	tc := m.ServerConfig()
	if got := strings.Join(tc.NextProtos, ","); got != "imap,pop3,acme-tls/1" {
		t.Errorf("NextProtos = %s, want imap,pop3,acme-tls/1", got)
	}
	addr := tlsServer(t, tc)
	roots := srv.Roots(t) // only Pebble's root: no system roots, no API cert

	serials := map[string]string{}
	for _, name := range []string{"mail.test", "imap.test"} {
		t.Run(name, func(t *testing.T) {
			c, err := dial(t, addr, &tls.Config{RootCAs: roots, ServerName: name, NextProtos: []string{"imap"}})
			if err != nil {
				t.Fatalf("handshake trusting Pebble's root: %v", err)
			}
			defer c.Close()
			echo(t, c)
			leaf := c.ConnectionState().PeerCertificates[0]
			if !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
				t.Errorf("issuer %q, want Pebble's intermediate", leaf.Issuer.CommonName)
			}
			serials[name] = leaf.SerialNumber.String()
		})
	}

	t.Run("no SNI gets the first domain", func(t *testing.T) {
		leaf, err := peerLeaf(t, addr, &tls.Config{InsecureSkipVerify: true, VerifyConnection: verifyAs(roots, "mail.test")})
		if err != nil {
			t.Fatalf("handshake without SNI: %v", err)
		}
		if leaf.SerialNumber.String() != serials["mail.test"] {
			t.Errorf("no-SNI serial %s, want mail.test's %s", leaf.SerialNumber, serials["mail.test"])
		}
	})
	t.Run("unknown SNI gets the first domain", func(t *testing.T) {
		_, err := peerLeaf(t, addr, &tls.Config{ServerName: "other.test", InsecureSkipVerify: true, VerifyConnection: verifyAs(roots, "mail.test")})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("static certificate by SNI", func(t *testing.T) {
		leaf, err := peerLeaf(t, addr, &tls.Config{ServerName: "legacy.example.net", InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		if !leaf.Equal(staticCert.Leaf) {
			t.Errorf("got %v, want the static certificate", leaf.DNSNames)
		}
	})
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		if c, err := dial(t, addr, &tls.Config{RootCAs: roots, ServerName: "mail.test", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
			c.Close()
			t.Fatal("TLS 1.1 handshake succeeded")
		}
	})
	fromCertmagic := logs.Filter(func(e observer.LoggedEntry) bool { return strings.HasPrefix(e.LoggerName, "certmagic") })
	if fromCertmagic.Len() == 0 {
		t.Error("certmagic logged nothing through our logger")
	}
	if n := fromCertmagic.FilterLevelExact(zap.DebugLevel).Len(); n > 0 {
		t.Errorf("certmagic logged %d entries at debug (they may carry ACME exchanges)", n)
	}

	// A restart on the same storage serves the stored certificate: no new
	// order, same serial.
	m.Close()
	m2 := newManager(t, Config{ACME: acme}, log)
	leaf, err := peerLeaf(t, tlsServer(t, m2.ServerConfig()), &tls.Config{RootCAs: roots, ServerName: "mail.test"})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.SerialNumber.String() != serials["mail.test"] {
		t.Errorf("after restart serial %s, want the stored %s", leaf.SerialNumber, serials["mail.test"])
	}
}

func TestACMEObtainFailure(t *testing.T) {
	srv := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true, Blocklist: []string{"blocked.test"}})
	log, _ := testLogger(t)
	acme := acmeConfig(t, srv, "blocked.test")
	_, err := New(context.Background(), Config{ACME: acme}, log)
	if err == nil {
		t.Fatal("New succeeded for a domain the CA refuses")
	}
	t.Logf("startup error: %v", err)
	msg := err.Error()
	for _, want := range []string{"blocked.test", srv.Directory, "rejectedIdentifier"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	// Everything New started is stopped: the challenge ports are free again
	// (and goleak checks the goroutines at the end).
	for _, addr := range []string{acme.Challenges.HTTP, acme.Challenges.TLSALPN} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("challenge listener %s still bound after a failed New: %v", addr, err)
			continue
		}
		ln.Close()
	}
}

func TestACMEObtainTimeout(t *testing.T) {
	srv := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true})
	log, _ := testLogger(t)
	acme := acmeConfig(t, srv, "slow.test")
	acme.ObtainTimeout = time.Nanosecond
	_, err := New(context.Background(), Config{ACME: acme}, log)
	if err == nil || !strings.Contains(err.Error(), "obtain_timeout") || !strings.Contains(err.Error(), "slow.test") {
		t.Fatalf("error %v, want one naming slow.test and obtain_timeout", err)
	}
}

func TestACMEConfigErrors(t *testing.T) {
	base := func() *ACMEConfig {
		return &ACMEConfig{Domains: []string{"mail.test"}, Email: "a@mail.test", Storage: t.TempDir(),
			Challenges: Challenges{TLSALPN: "127.0.0.1:0"}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*ACMEConfig)
		want string
	}{
		{"no domains", func(c *ACMEConfig) { c.Domains = nil }, "tls.acme.domains"},
		{"no storage", func(c *ACMEConfig) { c.Storage = "" }, "tls.acme.storage"},
		{"no challenges", func(c *ACMEConfig) { c.Challenges = Challenges{} }, "tls.acme.challenges"},
		{"ca_root missing", func(c *ACMEConfig) { c.CARoot = "/nonexistent/root.pem" }, "tls.acme.ca_root"},
		{"bad listener", func(c *ACMEConfig) { c.Challenges.HTTP = "127.0.0.1:99999" }, "tls.acme.challenges.http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(c)
			_, err := New(context.Background(), Config{ACME: c}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}

// TestACMERealValidation lets Pebble really validate, through
// pebble-challtestsrv's DNS (every name is 127.0.0.1), against our own
// challenge listener, once per challenge type.
func TestACMERealValidation(t *testing.T) {
	srv := pebbletest.Start(t, pebbletest.Options{DNS: true})
	roots := srv.Roots(t)
	for _, tc := range []struct {
		name   string
		domain string
		only   func(*ACMEConfig)
		served func(*acmeSource) int64
	}{
		{"tls-alpn-01", "alpn.test", func(c *ACMEConfig) { c.Challenges.HTTP = "" },
			func(a *acmeSource) int64 { return a.alpn.served.Load() }},
		{"http-01", "http.test", func(c *ACMEConfig) { c.Challenges.TLSALPN = "" },
			func(a *acmeSource) int64 { return a.http.served.Load() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := testLogger(t)
			acme := acmeConfig(t, srv, tc.domain)
			tc.only(acme)
			m := newManager(t, Config{ACME: acme}, log)
			if n := tc.served(m.acme); n == 0 {
				t.Errorf("our %s listener answered no validation", tc.name)
			}
			addr := tlsServer(t, m.ServerConfig())
			if _, err := peerLeaf(t, addr, &tls.Config{RootCAs: roots, ServerName: tc.domain}); err != nil {
				t.Fatalf("handshake trusting Pebble's root: %v", err)
			}
		})
	}
}

// TestACMERenewal: Pebble issues certificates valid for a few seconds;
// certmagic's maintenance, checking often, renews them in place and new
// handshakes get the new certificate without a restart.
func TestACMERenewal(t *testing.T) {
	const validity = 6 * time.Second
	srv := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true, CertValidity: validity})
	log, _ := testLogger(t)
	acme := acmeConfig(t, srv, "renew.test")
	acme.RenewCheckInterval = 100 * time.Millisecond
	m := newManager(t, Config{ACME: acme}, log)
	addr := tlsServer(t, m.ServerConfig())
	roots := srv.Roots(t)
	client := &tls.Config{RootCAs: roots, ServerName: "renew.test"}

	session, err := dial(t, addr, client)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	first := session.ConnectionState().PeerCertificates[0]
	if life := first.NotAfter.Sub(first.NotBefore); life > validity+time.Second {
		t.Fatalf("Pebble issued a certificate valid %s, want about %s", life, validity)
	}

	deadline := time.Now().Add(3 * validity)
	for {
		leaf, err := peerLeaf(t, addr, client)
		if err != nil {
			t.Fatalf("handshake during renewal: %v", err)
		}
		if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
			if !leaf.NotAfter.After(first.NotAfter) {
				t.Errorf("renewed certificate expires %s, not after the first's %s", leaf.NotAfter, first.NotAfter)
			}
			t.Logf("renewed %s after %s: serial %x -> %x", "renew.test", time.Since(first.NotBefore).Round(time.Millisecond), first.SerialNumber, leaf.SerialNumber)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate not renewed within %s (serial still %x)", 3*validity, first.SerialNumber)
		}
		time.Sleep(100 * time.Millisecond)
	}
	echo(t, session) // the session from before the renewal goes on
}
