package faults

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// One Dovecot serves the package; every test uses users of its own.
func TestMain(m *testing.M) { harness.Main(m, dovecot.Options{}) }

func dovecotServer(t testing.TB) *dovecot.Server { return harness.Dovecot(t) }

// account is a Dovecot user made for one test.
type account = harness.Account

func newAccount(t testing.TB) account {
	t.Helper()
	return harness.NewAccount(t, "f", "faults.test")
}

// seededAccount makes a user of the test's own whose INBOX holds n
// messages tagged tag0, tag1, ..., the i-th of about base+i*step octets. It
// returns the messages and their UIDs, in order.
func seededAccount(t testing.TB, tag string, n, base, step int) (account, [][]byte, []uint32) {
	t.Helper()
	a := newAccount(t)
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = message(fmt.Sprintf("%s%d", tag, i), base+i*step)
	}
	uids, err := dovecotServer(t).Append(a.User, a.Pass, "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}
	return a, msgs, uids
}

// message builds a distinct message of about size octets, CRLF line ends,
// with lines starting with "." to exercise dot-stuffing.
func message(tag string, size int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: faults@test\r\nTo: user@test\r\nSubject: %s\r\nMessage-ID: <%s@faults.test>\r\n\r\n", tag, tag)
	for i := 0; b.Len() < size; i++ {
		if i%7 == 3 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "%s line %d of a test message, padded to make it longer\r\n", tag, i)
	}
	return []byte(b.String())
}

// gatewayYAML is mailgate in front of backendAddr with one cleartext POP3
// listener and short backend timeouts. The body cache and fetch-ahead are
// off unless extra says otherwise, so that every RETR crosses the proxy.
func gatewayYAML(backendAddr, pop3Section string) string {
	if pop3Section == "" {
		pop3Section = "{cache: {max_bytes: 0B}, fetch_ahead: 0B}"
	}
	return harness.POP3Config("dovecot", backendAddr, fmt.Sprintf(`pop3: %s
limits: {per_ip: 10000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: %s, backend_command: %s, shutdown: 2s}
`, pop3Section, backendDial, backendCommand))
}

// The gateway's backend timeouts in these tests, and the slack allowed on
// top of them for a loaded machine running -race.
const (
	backendDial    = 2 * time.Second
	backendCommand = 3 * time.Second
	slack          = 3 * time.Second
	clientTimeout  = 20 * time.Second
)

// uidOf reads the UID out of a UIDL made by the default format %08Xu%08Xv.
func uidOf(t testing.TB, uidl string) uint32 {
	t.Helper()
	if len(uidl) != 16 {
		t.Fatalf("UIDL %q is not %%08Xu%%08Xv", uidl)
	}
	u, err := strconv.ParseUint(uidl[:8], 16, 32)
	if err != nil {
		t.Fatalf("UIDL %q: %v", uidl, err)
	}
	return uint32(u)
}

// cleanFailure reports whether err is what a client may see when the backend
// fails: -ERR [SYS/TEMP], or the connection closed (never another -ERR, a
// hang until the client's own deadline, or a malformed answer).
func cleanFailure(err error) bool {
	if code, ok := pop3client.ErrCode(err); ok {
		return code == "SYS/TEMP"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// fdList describes the open descriptors, for failure messages.
func fdList() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" -> "+target)
	}
	return strings.Join(out, "\n")
}

// leakCheck records goroutines and descriptors now; the returned function,
// called once the gateway and proxy are stopped, fails t if any were left
// behind (goroutines of Dovecot's helpers and of the test itself that
// already ran are ignored).
func leakCheck(t *testing.T) func() {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	before := openFDs(t)
	return func() {
		t.Helper()
		if err := goleak.Find(ignore); err != nil {
			t.Errorf("goroutines leaked after the gateway stopped: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := openFDs(t)
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d file descriptors open after the gateway stopped, %d before:\n%s", n, before, fdList())
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// dialPOP3 logs in through the gateway, retrying while an earlier session of
// the same user still holds the maildrop ([IN-USE]) for up to wait.
func dialPOP3(t testing.TB, addr string, a account, wait time.Duration) *pop3client.Client {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		c, err := pop3client.Dial(addr, clientTimeout)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		err = c.Login(a.User, a.Pass)
		if err == nil {
			return c
		}
		c.Close()
		if code, _ := pop3client.ErrCode(err); code != "IN-USE" || time.Now().After(deadline) {
			t.Fatalf("login as %s: %v", a.User, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func hasFlag(flags []imap.Flag, f imap.Flag) bool {
	for _, g := range flags {
		if strings.EqualFold(string(g), string(f)) {
			return true
		}
	}
	return false
}

func sortedUIDs(m map[uint32]bool) []uint32 {
	var out []uint32
	for u := range m {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
