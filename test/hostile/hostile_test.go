// Package hostile attacks mailgate's POP3 and IMAP listeners the way bad
// clients do (a bad client costs bounded memory, gets a clear error and
// never disturbs other sessions): slowloris, megabyte lines, binary junk, a
// thousand half-open connections, TLS handshakes that never finish.
// Each attack must cost bounded memory and time, and a normal client must be
// served while it runs (log in, STAT or NOOP, QUIT or LOGOUT within a few
// seconds).
//
//	go test -race ./test/hostile
//
// The gateway runs in-process in front of a real Dovecot (test/dovecot), so
// runtime.MemStats measures the gateway's heap together with the test's.
package hostile

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// One Dovecot serves the package; every test uses users of its own.
func TestMain(m *testing.M) { harness.Main(m, dovecot.Options{}) }

// Timeouts of the gateway under attack, and what the tests allow on top.
const (
	imapPreauth  = 2 * time.Second
	tlsHandshake = 2 * time.Second
	slack        = 3 * time.Second
	// probeWithin bounds a normal client's whole session during an attack.
	probeWithin = 5 * time.Second
	// heapBudget bounds the heap growth an attack may cause.
	heapBudget = 64 << 20
)

// env is a gateway with four listeners (pop3, imap cleartext; pop3s, imaps
// implicit TLS) in front of Dovecot, and a user with two messages.
type env struct {
	g          *harness.Gateway
	user, pass string
}

func start(t *testing.T) *env {
	t.Helper()
	dc := harness.Dovecot(t)
	a := harness.NewAccount(t, "h", "hostile.test")
	e := &env{user: a.User, pass: a.Pass}
	if _, err := dc.Append(e.user, e.pass, "INBOX", []byte("Subject: one\r\n\r\nbody one\r\n"), []byte("Subject: two\r\n\r\nbody two\r\n")); err != nil {
		t.Fatal(err)
	}
	cert, key := harness.LeafFiles(t, t.TempDir())
	e.g = harness.Start(t, fmt.Sprintf(`log: {level: info, format: json}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: pop3,  protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: imap,  protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot}
limits: {connections: 20000, per_ip: 10000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {imap_preauth: %s, tls_handshake: %s, backend_dial: 5s, backend_command: 10s, shutdown: 2s}
`, cert, key, dc.IMAPAddr, imapPreauth, tlsHandshake))
	return e
}

// probePOP3 is a normal POP3 client: it must log in, STAT and QUIT within
// probeWithin, attack or not.
func (e *env) probePOP3(t *testing.T, listener string) {
	t.Helper()
	begin := time.Now()
	var (
		c   *pop3client.Client
		err error
	)
	if listener == "pop3s" {
		c, err = pop3client.DialTLS(e.g.Addr(listener), harness.ClientTLS(t), probeWithin)
	} else {
		c, err = pop3client.Dial(e.g.Addr(listener), probeWithin)
	}
	if err != nil {
		t.Errorf("invariant 6: a normal client could not connect to %s during the attack: %v", listener, err)
		return
	}
	defer c.Close()
	if err := c.Login(e.user, e.pass); err != nil {
		t.Errorf("invariant 6: normal client login on %s during the attack: %v", listener, err)
		return
	}
	if n, _, err := c.Stat(); err != nil || n != 2 {
		t.Errorf("invariant 6: normal client STAT on %s: %d messages, %v", listener, n, err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("invariant 6: normal client QUIT on %s: %v", listener, err)
	}
	if d := time.Since(begin); d > probeWithin {
		t.Errorf("invariant 6: a normal POP3 session on %s took %v during the attack", listener, d)
	}
}

// probeIMAP is a normal IMAP client: LOGIN, NOOP (on the backend, after
// the hand-off), LOGOUT within probeWithin.
func (e *env) probeIMAP(t *testing.T, listener string) {
	t.Helper()
	begin := time.Now()
	var (
		conn net.Conn
		err  error
	)
	d := net.Dialer{Timeout: probeWithin}
	if listener == "imaps" {
		conn, err = tlsDial(t, &d, e.g.Addr(listener))
	} else {
		conn, err = d.Dial("tcp", e.g.Addr(listener))
	}
	if err != nil {
		t.Errorf("invariant 6: a normal client could not connect to %s during the attack: %v", listener, err)
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(probeWithin))
	r := bufio.NewReader(conn)
	expect := func(tag string) bool {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Errorf("invariant 6: normal IMAP client on %s, waiting for %q: %v", listener, tag, err)
				return false
			}
			if strings.HasPrefix(line, tag+" ") {
				if !strings.HasPrefix(line, tag+" OK") {
					t.Errorf("invariant 6: normal IMAP client on %s: %q", listener, strings.TrimSpace(line))
					return false
				}
				return true
			}
		}
	}
	if !expect("*") {
		return
	}
	fmt.Fprintf(conn, "a1 LOGIN %q %q\r\n", e.user, e.pass)
	if !expect("a1") {
		return
	}
	fmt.Fprintf(conn, "a2 NOOP\r\n")
	if !expect("a2") {
		return
	}
	fmt.Fprintf(conn, "a3 LOGOUT\r\n")
	if !expect("a3") {
		return
	}
	if d := time.Since(begin); d > probeWithin {
		t.Errorf("invariant 6: a normal IMAP session on %s took %v during the attack", listener, d)
	}
}

// probeAll runs the normal clients of every listener, concurrently; the two
// POP3 ones one after the other, as they share a user and a second POP3
// session of a user is rightly refused [IN-USE] (RFC 1939 §4).
func (e *env) probeAll(t *testing.T) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		e.probePOP3(t, "pop3")
		e.probePOP3(t, "pop3s")
	})
	for _, l := range []string{"imap", "imaps"} {
		wg.Go(func() { e.probeIMAP(t, l) })
	}
	wg.Wait()
}

// heapInuse is the heap in use after a collection.
func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func checkHeap(t *testing.T, what string, before uint64) {
	t.Helper()
	after := heapInuse()
	growth := int64(after) - int64(before)
	t.Logf("%s: heap in use grew by %.1f MiB", what, float64(growth)/(1<<20))
	if growth > heapBudget {
		t.Errorf("invariant 6: %s grew the heap by %d MiB, budget %d MiB", what, growth>>20, heapBudget>>20)
	}
}

// raiseFileLimit makes room for n more descriptors (both ends of each
// connection live in this process).
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d < %d needed", rl.Max, n)
	}
	old := rl.Cur
	rl.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("raising RLIMIT_NOFILE to %d: %v", n, err)
	}
	t.Logf("raised the soft RLIMIT_NOFILE from %d to %d", old, n)
}

// waitClosed waits until the server closes conn (a read returns an error
// other than the deadline) and reports how long that took; it fails t if
// the server keeps it open beyond within.
func waitClosed(t *testing.T, conn net.Conn, within time.Duration) time.Duration {
	t.Helper()
	begin := time.Now()
	conn.SetReadDeadline(begin.Add(within))
	buf := make([]byte, 4096)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue // greetings, BYE, errors: read on until the close
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("the gateway kept a hostile connection open for more than %v", within)
		}
		return time.Since(begin)
	}
}
