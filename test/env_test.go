package test

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// One Dovecot serves the whole package (with TLS for backend TLS tests and
// POP3 for UIDL comparisons).
// The gateway (on 127.0.0.1) is a trusted proxy to Dovecot, so that
// forward_client_ip reaches it; clients that test the forwarding connect
// from 127.0.0.2, which is not trusted.
func TestMain(m *testing.M) {
	harness.Main(m, dovecot.Options{TLS: true, POP3: true, TrustedNetworks: "127.0.0.1/32"})
}

// secretForms returns a password in every shape a careless log line could
// carry it: plain, and base64 as in AUTH LOGIN and AUTH PLAIN.
func secretForms(user, pass string) []string {
	b64 := base64.StdEncoding.EncodeToString
	return []string{pass, b64([]byte(pass)), b64([]byte("\x00" + user + "\x00" + pass)),
		b64([]byte(user + "\x00" + user + "\x00" + pass))}
}

var userSeq atomic.Int64

// dovecotServer returns the package's Dovecot, starting it on first use.
func dovecotServer(t testing.TB) *dovecot.Server { return harness.Dovecot(t) }

// account is a Dovecot user made for one test.
type account = harness.Account

// newAccount adds a user with a random password, unique to this run, named
// after the test.
func newAccount(t testing.TB) account {
	t.Helper()
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return -1
	}, strings.TrimPrefix(t.Name(), "Test"))
	if len(name) > 24 {
		name = name[:24]
	}
	a := harness.NewAccount(t, name+"-", "e2e.test")
	// Every form of every password of the run is searched for in each
	// gateway's logs when its test ends: invariant 5 everywhere, not only in
	// the test named after it.
	for _, s := range secretForms(a.User, a.Pass) {
		harness.Secret(s)
	}
	return a
}

// seed appends messages to the account's INBOX and returns their UIDs.
func seed(t testing.TB, a account, msgs ...[]byte) []uint32 {
	t.Helper()
	uids, err := dovecotServer(t).Append(a.User, a.Pass, "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}
	return uids
}

// gwOptions vary the generated configuration.
type gwOptions struct {
	// Backend is the backends.dovecot entry; empty: cleartext IMAP.
	Backend string
	// POP3 is the pop3: section's body; empty: defaults.
	POP3 string
	// MoreBackends are further entries of backends: ("  name: {...}\n"
	// lines); Default is routing.default (empty: dovecot).
	MoreBackends, Default string
}

// gw is an in-process mailgate in front of the package's Dovecot, with
// three POP3 listeners: "pop3" (cleartext, plaintext auth allowed),
// "pop3-stls" (STLS required before auth) and "pop3s" (implicit TLS).
// Starting, stopping, addresses, logs and the credential check are the
// harness's; gw adds POP3 clients.
type gw struct {
	*harness.Gateway
	t testing.TB
}

// startGateway builds mailgate from a generated YAML file and starts it
// (harness.Start: cleanup shuts it down and searches its logs for every
// password of the run).
func startGateway(t testing.TB, o gwOptions) *gw {
	t.Helper()
	return &gw{Gateway: harness.Start(t, gatewayYAML(t, o)), t: t}
}

// gatewayYAML is the configuration startGateway runs.
func gatewayYAML(t testing.TB, o gwOptions) string {
	t.Helper()
	dc := dovecotServer(t)
	certFile, keyFile := harness.LeafFiles(t, t.TempDir())
	if o.Backend == "" {
		o.Backend = fmt.Sprintf("{address: %q, tls: none}", dc.IMAPAddr)
	}
	if o.POP3 == "" {
		o.POP3 = "{}"
	}
	if o.Default == "" {
		o.Default = "dovecot"
	}
	return fmt.Sprintf(`log: {level: debug, format: json}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: pop3-stls, protocol: pop3, address: "127.0.0.1:0", tls: starttls}
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  dovecot: %s
%srouting:
  default: %s
pop3: %s
limits: {per_ip: 1000, auth_failures_per_ip: 10000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: 5s, backend_command: 30s, shutdown: 5s}
`, certFile, keyFile, o.Backend, o.MoreBackends, o.Default, o.POP3)
}

const clientTimeout = 15 * time.Second

// dial opens a POP3 connection to the named listener ("pop3s" with TLS).
func (g *gw) dial(listener string) *pop3client.Client {
	g.t.Helper()
	var (
		c   *pop3client.Client
		err error
	)
	if listener == "pop3s" {
		c, err = pop3client.DialTLS(g.Addr(listener), harness.ClientTLS(g.t), clientTimeout)
	} else {
		c, err = pop3client.Dial(g.Addr(listener), clientTimeout)
	}
	if err != nil {
		g.t.Fatalf("dial %s: %v", listener, err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

// login opens a cleartext session logged in as a.
func (g *gw) login(a account) *pop3client.Client {
	g.t.Helper()
	c := g.dial("pop3")
	if err := c.Login(a.User, a.Pass); err != nil {
		g.t.Fatalf("login %s: %v", a.User, err)
	}
	return c
}

// dele marks messages ns deleted (DELE), failing t on an error.
func dele(t testing.TB, c *pop3client.Client, ns ...int) {
	t.Helper()
	for _, n := range ns {
		if err := c.Dele(n); err != nil {
			t.Fatalf("DELE %d: %v", n, err)
		}
	}
}

// loginEventually logs in on the cleartext listener, retrying while the
// previous session of the same user still holds the lock (a session's end is
// asynchronous to its client's close).
func (g *gw) loginEventually(a account) *pop3client.Client {
	g.t.Helper()
	return g.loginEventuallyOn("pop3", a)
}

// loginEventuallyOn is loginEventually on the named listener.
func (g *gw) loginEventuallyOn(listener string, a account) *pop3client.Client {
	g.t.Helper()
	var tc *tls.Config
	if listener == "pop3s" {
		tc = harness.ClientTLS(g.t)
	}
	c, err := loginRetry(g.Addr(listener), tc, a)
	if err != nil {
		g.t.Fatalf("login %s on %s: %v", a.User, listener, err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

// loginRetry dials addr (with TLS when tc is set) and logs in, retrying for
// up to 10s while the answer is -ERR [IN-USE]. Safe in any goroutine.
func loginRetry(addr string, tc *tls.Config, a account) (*pop3client.Client, error) {
	return pop3client.LoginRetry(func() (*pop3client.Client, error) {
		if tc != nil {
			return pop3client.DialTLS(addr, tc, clientTimeout)
		}
		return pop3client.Dial(addr, clientTimeout)
	}, a.User, a.Pass, 10*time.Second)
}

// expectRetr is what RETR of a message with these backend bytes must deliver
// (after unstuffing): the bytes, plus a CRLF only when they lack a final one
// (RFC 1939 §3: the terminating line needs one).
func expectRetr(body []byte) []byte {
	if bytes.HasSuffix(body, []byte("\r\n")) {
		return body
	}
	return append(append([]byte(nil), body...), '\r', '\n')
}

// message builds a small message with a unique subject.
func message(subject, body string) []byte {
	return []byte("From: Sender <sender@example.org>\r\nTo: rcpt@e2e.test\r\nSubject: " + subject +
		"\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <" + subject + "@example.org>\r\n\r\n" + body)
}

func writeFile(t testing.TB, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}
