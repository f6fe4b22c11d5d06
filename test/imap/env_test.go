package imape2e

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/goleak"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/loopback"
	"mailgate/test/transcript"
)

// The package's Dovecot, started once by TestMain: starting one per test
// would cost a second each for nothing, since every test has its own users.
var (
	dc      *dovecot.Server
	dcError error
)

func TestMain(m *testing.M) {
	dc, dcError = dovecot.Start(dovecot.Options{TLS: true})
	code := m.Run()
	harness.RemoveCAFiles()
	if dc != nil {
		if err := dc.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping dovecot:", err)
			code = 1
		}
	}
	// Every gateway has been shut down by its test's cleanup: a goroutine
	// left now is a relay or a pre-auth session that outlived its sockets.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// backend returns the package's Dovecot, or skips (fails under CI=true) when
// it could not start.
func backend(t testing.TB) *dovecot.Server {
	t.Helper()
	if dc == nil {
		dovecot.SkipOrFail(t, dcError)
	}
	return dc
}

// account is a Dovecot user. Its domain chooses the backend entry the
// gateway routes it to (see gatewayYAML).
type account struct{ User, Pass string }

var userSeq atomic.Int64

// newAccount adds a user in domain with a long random password, registered
// with harness.Secret so that every gateway's logs are searched for it.
func newAccount(t testing.TB, domain string) account {
	t.Helper()
	a := account{
		User: fmt.Sprintf("u%d@%s", userSeq.Add(1), domain),
		Pass: "pw-" + randomHex(t, 12),
	}
	harness.Secret(a.Pass)
	if err := backend(t).AddUser(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	return a
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// seed appends msgs to the account's mailbox straight at Dovecot and returns
// their UIDs.
func seed(t testing.TB, a account, mailbox string, msgs ...[]byte) []uint32 {
	t.Helper()
	uids, err := backend(t).Append(a.User, a.Pass, mailbox, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	return uids
}

// state reads a mailbox straight from Dovecot, bodies included.
func state(t testing.TB, a account, mailbox string) *dovecot.MailboxState {
	t.Helper()
	st, err := backend(t).Mailbox(a.User, a.Pass, mailbox, true)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// message builds a small RFC 5322 message with a recognisable subject.
func message(subject, body string) []byte {
	return []byte("From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@imap.test>\r\n\r\n" + body)
}

// Routing domains: the backends: entry a user of each domain reaches.
const (
	domPlain     = "plain.test"     // Dovecot, cleartext (the default route)
	domStartTLS  = "starttls.test"  // Dovecot via STARTTLS, verified with its CA
	domImplicit  = "implicit.test"  // Dovecot's implicit-TLS port, verified with its CA
	domUntrusted = "untrusted.test" // the implicit-TLS port, verified with the system roots
	domForward   = "forward.test"   // cleartext through a recording tap, forward_client_ip on
	domDown      = "down.test"      // a port nobody listens on
	domSilent    = "silent.test"    // a listener that accepts and never greets
)

// gwOptions vary the generated configuration.
type gwOptions struct {
	// BackendDial is timeouts.backend_dial; zero means 10s.
	BackendDial time.Duration
	// Via replaces the address of the named backends: entries ("starttls",
	// "implicit", "forward"), to put a recording tap in front of Dovecot.
	Via map[string]string
}

// startGateway starts mailgate in front of the package's Dovecot with three
// IMAP listeners: "imap" (STARTTLS required before login), "imaps"
// (implicit TLS) and "imap-clear" (cleartext, plaintext login allowed: the
// splice path). Its logs are searched for every password at cleanup.
func startGateway(t testing.TB, o gwOptions) *harness.Gateway {
	t.Helper()
	return harness.Start(t, gatewayYAML(t, o))
}

func gatewayYAML(t testing.TB, o gwOptions) string {
	t.Helper()
	d := backend(t)
	cert, key := harness.LeafFiles(t, t.TempDir())
	if o.BackendDial == 0 {
		o.BackendDial = 10 * time.Second
	}
	addr := func(name, def string) string {
		if a, ok := o.Via[name]; ok {
			return a
		}
		return def
	}
	return fmt.Sprintf(`log: {level: debug, format: json}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: starttls}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
  - {name: imap-clear, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  plain: {address: %q, tls: none}
  starttls: {address: %q, tls: starttls, ca: %q}
  implicit: {address: %q, tls: implicit, ca: %q}
  untrusted: {address: %q, tls: implicit}
  forward: {address: %q, tls: none, forward_client_ip: true}
  down: {address: %q, tls: none}
  silent: {address: %q, tls: none}
routing:
  default: plain
  rules:
    - {domain: %s, backend: starttls}
    - {domain: %s, backend: implicit}
    - {domain: %s, backend: untrusted}
    - {domain: %s, backend: forward}
    - {domain: %s, backend: down}
    - {domain: %s, backend: silent}
limits: {per_ip: 10000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: %s, backend_command: 30s, imap_preauth: 30s, shutdown: 5s}
`, cert, key,
		d.IMAPAddr, addr("starttls", d.IMAPAddr), d.CAFile, addr("implicit", d.IMAPSAddr), d.CAFile,
		d.IMAPSAddr, addr("forward", d.IMAPAddr),
		refusedAddr(t), silentAddr(t),
		domStartTLS, domImplicit, domUntrusted, domForward, domDown, domSilent,
		o.BackendDial)
}

// refusedAddr is a loopback port that was free a moment ago: connecting to
// it is refused.
func refusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// silentAddr listens until the test ends, accepts every connection and
// never sends a byte: a backend that hangs before its greeting.
func silentAddr(t testing.TB) string {
	t.Helper()
	return loopback.Serve(t, func(net.Conn) {}) // accepted, then never a byte
}

// ioTimeout bounds every read and write of the test clients.
const ioTimeout = 20 * time.Second

// rawClient is an IMAP transcript (test/transcript) that remembers the
// server's greeting.
type rawClient struct {
	*transcript.Conn
	// Greeting is the server's first line.
	Greeting string
}

// dialRaw connects in cleartext and reads the greeting.
func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return newRaw(t, conn)
}

// dialRawTLS connects with implicit TLS (trusting the harness CA) and reads
// the greeting.
func dialRawTLS(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, harness.ClientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	return newRaw(t, conn)
}

func newRaw(t testing.TB, conn net.Conn) *rawClient {
	t.Helper()
	c := &rawClient{Conn: transcript.New(t, conn)}
	c.Timeout = ioTimeout
	c.Greeting = c.Expect("* OK")
	return c
}

// startTLS runs STARTTLS and the handshake; later commands go over TLS.
func (c *rawClient) startTLS(t testing.TB) {
	t.Helper()
	if _, st := c.Tagged("tls", "STARTTLS"); !strings.HasPrefix(st, "tls OK") {
		t.Fatalf("STARTTLS: %q", st)
	}
	c.StartTLS(harness.ClientTLS(t))
}

// capsOf returns the capability list of an untagged CAPABILITY response or
// of a [CAPABILITY ...] response code in line, upper-cased; nil if none.
func capsOf(line string) []string {
	if i := strings.Index(strings.ToUpper(line), "CAPABILITY "); i >= 0 {
		rest := line[i+len("CAPABILITY "):]
		if j := strings.IndexByte(rest, ']'); j >= 0 {
			rest = rest[:j]
		}
		return strings.Fields(strings.ToUpper(rest))
	}
	return nil
}

func hasCap(caps []string, c string) bool {
	for _, have := range caps {
		if have == c {
			return true
		}
	}
	return false
}

// newClient wraps conn with go-imap's client, closed when the test ends or,
// since imapclient has no timeouts of its own, after a minute.
func newClient(t testing.TB, c *imapclient.Client) *imapclient.Client {
	t.Helper()
	watchdog := time.AfterFunc(time.Minute, func() { c.Close() })
	t.Cleanup(func() {
		watchdog.Stop()
		c.Close()
	})
	return c
}

// dialClientStartTLS connects go-imap's client to the STARTTLS listener.
func dialClientStartTLS(t testing.TB, addr string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = harness.ClientTLS(t)
	opts.Dialer = &net.Dialer{Timeout: ioTimeout}
	c, err := imapclient.DialStartTLS(addr, opts)
	if err != nil {
		t.Fatalf("imapclient STARTTLS: %v", err)
	}
	return newClient(t, c)
}

// dialClientPlain connects go-imap's client to a cleartext listener.
func dialClientPlain(t testing.TB, addr string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, imapclient.New(conn, opts))
}

// logHas reports whether some gateway log entry contains every one of parts.
func logHas(g *harness.Gateway, parts ...string) bool {
	for _, l := range strings.Split(g.Logs(), "\n") {
		all := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}
