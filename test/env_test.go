package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"mailgate/gateway"
	"mailgate/gateway/config"
	"mailgate/test/dovecot"
	"mailgate/test/pop3client"
	"mailgate/test/testca"
)

// One Dovecot serves the whole package: every test uses users of its own, so
// tests cannot see each other's mail, and the run pays one startup.
var backend struct {
	once sync.Once
	srv  *dovecot.Server
	err  error
}

// caOnce is the CA of the gateway's client-facing certificates.
var ca struct {
	once sync.Once
	ca   *testca.CA
	file string
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if backend.srv != nil {
		if err := backend.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping dovecot:", err)
			code = 1
		}
	}
	if ca.dir != "" {
		os.RemoveAll(ca.dir)
	}
	os.Exit(code)
}

// dovecotServer returns the package's Dovecot, starting it on first use (with
// TLS for backend TLS tests and POP3 for UIDL comparisons).
func dovecotServer(t testing.TB) *dovecot.Server {
	t.Helper()
	backend.once.Do(func() {
		backend.srv, backend.err = dovecot.Start(dovecot.Options{TLS: true, POP3: true})
	})
	if backend.err != nil {
		dovecot.SkipOrFail(t, backend.err)
	}
	return backend.srv
}

func testCA(t testing.TB) (*testca.CA, string) {
	t.Helper()
	ca.once.Do(func() {
		if ca.ca, ca.err = testca.New(); ca.err != nil {
			return
		}
		if ca.dir, ca.err = os.MkdirTemp("", "mailgate-ca-"); ca.err != nil {
			return
		}
		ca.file, ca.err = ca.ca.WriteCA(ca.dir)
	})
	if ca.err != nil {
		t.Fatal(ca.err)
	}
	return ca.ca, ca.file
}

// clientTLS is what a client that trusts the test CA uses.
func clientTLS(t testing.TB) *tls.Config {
	c, _ := testCA(t)
	return &tls.Config{RootCAs: c.Pool(), ServerName: "127.0.0.1"}
}

// secrets are every password handed out in this run; each gateway's log is
// searched for all of them when its test ends (invariant 5 everywhere, not
// only in the test named after it).
var secrets struct {
	mu   sync.Mutex
	list []string
}

func addSecret(s string) {
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	secrets.list = append(secrets.list, s)
}

// secretForms returns a password in every shape a careless log line could
// carry it: plain, and base64 as in AUTH LOGIN and AUTH PLAIN.
func secretForms(user, pass string) []string {
	b64 := base64.StdEncoding.EncodeToString
	return []string{pass, b64([]byte(pass)), b64([]byte("\x00" + user + "\x00" + pass)),
		b64([]byte(user + "\x00" + user + "\x00" + pass))}
}

var userSeq atomic.Int64

// account is a Dovecot user made for one test.
type account struct {
	User, Pass string
}

// newAccount adds a user with a random password, unique to this run.
func newAccount(t testing.TB) account {
	t.Helper()
	dc := dovecotServer(t)
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
	var rnd [8]byte
	rand.Read(rnd[:])
	a := account{User: fmt.Sprintf("%s-%d@e2e.test", name, userSeq.Add(1)), Pass: "pw-" + hex.EncodeToString(rnd[:])}
	for _, s := range secretForms(a.User, a.Pass) {
		addSecret(s)
	}
	if err := dc.AddUser(a.User, a.Pass); err != nil {
		t.Fatal(err)
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

// state reads the account's INBOX straight from Dovecot.
func state(t testing.TB, a account, bodies bool) *dovecot.MailboxState {
	t.Helper()
	st, err := dovecotServer(t).Mailbox(a.User, a.Pass, "INBOX", bodies)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// gwOptions vary the generated configuration.
type gwOptions struct {
	// Backend is the backends.dovecot entry; empty: cleartext IMAP.
	Backend string
	// POP3 is the pop3: section's body; empty: defaults.
	POP3 string
}

// gw is an in-process mailgate in front of the package's Dovecot, with
// three POP3 listeners: "pop3" (cleartext, plaintext auth allowed),
// "pop3-stls" (STLS required before auth) and "pop3s" (implicit TLS).
type gw struct {
	t    testing.TB
	srv  *gateway.Server
	yaml []byte
	logs *syncBuffer // every log entry, JSON, debug level
}

// startGateway builds mailgate from a generated YAML file (through
// config.Parse, as users' files go) and starts it. Cleanup shuts it down and
// searches its logs for every password of the run.
func startGateway(t testing.TB, o gwOptions) *gw {
	t.Helper()
	dc := dovecotServer(t)
	c, _ := testCA(t)
	dir := t.TempDir()
	certFile, keyFile, err := c.WriteLeaf(dir, "gateway", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if o.Backend == "" {
		o.Backend = fmt.Sprintf("{address: %q, tls: none}", dc.IMAPAddr)
	}
	if o.POP3 == "" {
		o.POP3 = "{}"
	}
	yaml := fmt.Sprintf(`log: {level: debug, format: json}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: pop3-stls, protocol: pop3, address: "127.0.0.1:0", tls: starttls}
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
backends:
  dovecot: %s
routing:
  default: dovecot
pop3: %s
limits: {per_ip: 1000, auth_failures_per_ip: 10000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: 5s, backend_command: 30s, shutdown: 5s}
`, certFile, keyFile, o.Backend, o.POP3)
	g := &gw{t: t, yaml: []byte(yaml), logs: &syncBuffer{}}
	g.start()
	t.Cleanup(func() {
		g.stop()
		g.checkLogsForSecrets()
		if t.Failed() {
			t.Logf("gateway log (last 60 lines):\n%s", tailLines(g.logs.String(), 60))
		}
	})
	return g
}

func (g *gw) start() {
	g.t.Helper()
	cfg, err := config.Parse(g.yaml)
	if err != nil {
		g.t.Fatalf("config.Parse:\n%v\n--- config ---\n%s", err, g.yaml)
	}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(g.logs), zapcore.DebugLevel)
	srv, err := gateway.New(cfg, zap.New(core))
	if err != nil {
		g.t.Fatalf("gateway.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		g.t.Fatalf("gateway Start: %v", err)
	}
	g.srv = srv
}

// stop shuts the gateway down, giving sessions 15s to end by themselves;
// safe to call twice.
func (g *gw) stop() { g.stopWithin(15 * time.Second) }

// stopWithin shuts the gateway down, cutting the sessions still open after
// grace.
func (g *gw) stopWithin(grace time.Duration) {
	if g.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	srv := g.srv
	g.srv = nil
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			g.t.Errorf("gateway Shutdown: %v", err)
		}
	case <-time.After(grace + 15*time.Second):
		// Shutdown must cut sessions once ctx is done; carry on with the
		// other tests rather than hang the package.
		g.t.Errorf("gateway Shutdown did not return 15s after its context ended")
	}
}

// restart is a new gateway process in all but name: same configuration,
// nothing kept in memory (body cache, locks).
func (g *gw) restart() {
	g.t.Helper()
	g.stop()
	g.start()
}

func (g *gw) addr(listener string) string {
	g.t.Helper()
	a := g.srv.Addr(listener)
	if a == nil {
		g.t.Fatalf("gateway has no listener %q", listener)
	}
	return a.String()
}

func (g *gw) checkLogsForSecrets() {
	logs := g.logs.String()
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	for _, s := range secrets.list {
		if i := strings.Index(logs, s); i >= 0 {
			g.t.Errorf("invariant 5: a credential (%q) appears in the gateway log: ...%s...", s,
				logs[max(0, i-200):min(len(logs), i+len(s)+50)])
		}
	}
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
		c, err = pop3client.DialTLS(g.addr(listener), clientTLS(g.t), clientTimeout)
	} else {
		c, err = pop3client.Dial(g.addr(listener), clientTimeout)
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
		tc = clientTLS(g.t)
	}
	c, err := loginRetry(g.addr(listener), tc, a)
	if err != nil {
		g.t.Fatalf("login %s on %s: %v", a.User, listener, err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

// loginRetry dials addr (with TLS when tc is set) and logs in, retrying for
// up to 10s while the answer is -ERR [IN-USE]. Safe in any goroutine.
func loginRetry(addr string, tc *tls.Config, a account) (*pop3client.Client, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var (
			c   *pop3client.Client
			err error
		)
		if tc != nil {
			c, err = pop3client.DialTLS(addr, tc, clientTimeout)
		} else {
			c, err = pop3client.Dial(addr, clientTimeout)
		}
		if err != nil {
			return nil, err
		}
		err = c.Login(a.User, a.Pass)
		if err == nil {
			return c, nil
		}
		c.Close()
		if re, ok := err.(*pop3client.ReplyError); !ok || re.Code() != "IN-USE" || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// needProgram returns the path of a client program, skipping the test
// loudly when it is missing (failing under CI=true).
func needProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s is not installed: %v", name, err)
	}
	t.Skipf("SKIPPING: %s is not installed (%v); .ci/run installs it", name, err)
	return ""
}

func writeFile(t testing.TB, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) Sync() error { return nil }

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func tailLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
