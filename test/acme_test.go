package test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailgate/test/harness"
	"mailgate/test/pebbletest"
	"mailgate/test/pop3client"
)

// TestACMECertificateServesEveryListener: mailgate obtains a certificate from
// Pebble (an ACME CA) at start, and POP3S, POP3 STLS, IMAPS and IMAP
// STARTTLS clients that trust only Pebble's root complete the handshake, see
// that one certificate, and log in to Dovecot through mailgate.
func TestACMECertificateServesEveryListener(t *testing.T) {
	pebble := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true})
	dc := dovecotServer(t)
	a := newAccount(t)
	msg := message("acme", "Served over a certificate from ACME.\r\n")
	seed(t, a, msg)

	yaml := "log: {level: debug}\n" + pebble.MailgateACME(t.TempDir(), pebble.TLSALPNAddr()) + fmt.Sprintf(`listeners:
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
  - {name: pop3,  protocol: pop3, address: "127.0.0.1:0", tls: starttls}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
  - {name: imap,  protocol: imap, address: "127.0.0.1:0", tls: starttls}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot}
limits: {auth_failure_delay: 1ms}
`, dc.IMAPAddr)
	g := harness.Start(t, yaml)

	roots := pebble.Roots(t)
	// What each client saw; all must be the same ACME certificate.
	var seen [][]byte
	verify := func(name string) func(tls.ConnectionState) error {
		return func(cs tls.ConnectionState) error {
			leaf := cs.PeerCertificates[0]
			if leaf.Issuer.CommonName == "" || leaf.VerifyHostname("mail.test") != nil {
				return fmt.Errorf("%s: unexpected certificate %v", name, leaf.Subject)
			}
			seen = append(seen, leaf.Raw)
			return nil
		}
	}
	clientTLS := func(name string) *tls.Config {
		return &tls.Config{RootCAs: roots, ServerName: "mail.test", VerifyConnection: verify(name)}
	}

	// POP3S.
	c, err := pop3client.DialTLS(g.Addr("pop3s"), clientTLS("pop3s"), 10*time.Second)
	if err != nil {
		t.Fatalf("POP3S with only Pebble's root: %v", err)
	}
	if err := c.Login(a.User, a.Pass); err != nil {
		t.Fatalf("POP3S login: %v", err)
	}
	if body, err := c.Retr(1); err != nil || !bytes.Equal(body, msg) {
		t.Fatalf("POP3S RETR: %v", err)
	}
	c.Quit()

	// POP3 with STLS.
	c, err = pop3client.Dial(g.Addr("pop3"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.STLS(clientTLS("pop3 STLS")); err != nil {
		t.Fatalf("STLS: %v", err)
	}
	if err := c.Login(a.User, a.Pass); err != nil {
		t.Fatalf("login after STLS: %v", err)
	}
	c.Quit()

	// IMAPS and IMAP with STARTTLS.
	for _, tc := range []struct {
		listener string
		dial     func(string, *imapclient.Options) (*imapclient.Client, error)
	}{
		{"imaps", imapclient.DialTLS},
		{"imap", imapclient.DialStartTLS},
	} {
		ic, err := tc.dial(g.Addr(tc.listener), &imapclient.Options{TLSConfig: clientTLS(tc.listener)})
		if err != nil {
			t.Fatalf("%s with only Pebble's root: %v", tc.listener, err)
		}
		if err := ic.Login(a.User, a.Pass).Wait(); err != nil {
			t.Fatalf("%s login: %v", tc.listener, err)
		}
		sel, err := ic.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil || sel.NumMessages != 1 {
			t.Fatalf("%s SELECT: %v %v", tc.listener, sel, err)
		}
		ic.Logout().Wait()
		ic.Close()
	}

	if len(seen) != 4 {
		t.Fatalf("saw %d handshakes, want 4", len(seen))
	}
	for i := range seen {
		if !bytes.Equal(seen[i], seen[0]) {
			t.Fatal("the listeners serve different certificates")
		}
	}
	cert, _ := x509.ParseCertificate(seen[0])
	t.Logf("ACME certificate for %v from %q, valid until %v", cert.DNSNames, cert.Issuer.CommonName, cert.NotAfter)
}
