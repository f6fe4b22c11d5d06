package upstream

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"mailgate/test/testca"
)

// TestCertificateFailureNamesBackendAndKey: a login to a backend whose
// certificate does not verify fails with an error that names the backend
// and the key that fixes it.
func TestCertificateFailureNamesBackendAndKey(t *testing.T) {
	ca := testca.NewT(t)
	cert := ca.CertificateT(t, "imap.internal")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	for _, tc := range []struct {
		serverName, want string
	}{
		{"imap.internal", "set backends.store.ca to the PEM file of the CA"},
		{"imap.example", "set backends.store.server_name to a name its certificate holds"},
	} {
		b := &BackendConfig{Address: ln.Addr().String(), TLS: TLSImplicit, ServerName: tc.serverName}
		b.ApplyDefaults()
		if errs := b.Validate(); len(errs) > 0 {
			t.Fatal(errs)
		}
		if tc.serverName == "imap.example" {
			b.tlsConfig.RootCAs = ca.Pool()
		}
		target := Target{Name: "store", Address: ln.Addr().String(), Config: b}
		_, err := Login(context.Background(), target, Timeouts{Dial: 5 * time.Second}, "alice", "secret")
		if err == nil || !strings.Contains(err.Error(), "backend store") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Login with server_name %s: %v, want the backend and %q", tc.serverName, err, tc.want)
		}
		if err := Probe(context.Background(), target, 5*time.Second); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Probe with server_name %s: %v, want %q", tc.serverName, err, tc.want)
		}
	}
}
