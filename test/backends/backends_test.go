// Package backends runs one POP3 end-to-end invariant suite against every
// IMAP server the gateway is meant for: Dovecot 2.3, Cyrus IMAP 3.6 and
// Courier IMAP 5.0, each started by the test from a generated configuration
// on 127.0.0.1 (test/dovecot, test/cyrus, test/courier), with mailgate in
// front of it at its defaults (body cache, fetch-ahead and mark_seen on).
//
// What each backend must give the POP3 client (the invariants of package
// test's doc.go): message numbers fixed for the session, LIST sizes equal to
// what RETR delivers, UIDLs unique, well-formed and stable across sessions,
// RETR the backend's bytes exactly and TOP those bytes cut at the k-th line,
// deletions only at QUIT and a dropped connection deleting nothing, numbers
// that stay put while another IMAP client appends and expunges (the
// expunged message answering -ERR, the session going on), and \Seen for what
// was RETRieved only.
//
// A backend that is not installed is skipped loudly, or fails the test under
// CI=true (.ci/run installs all three).
package backends

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/courier"
	"mailgate/test/cyrus"
	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/mailserver"
	"mailgate/test/pop3client"
)

func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveCAFiles()
	os.Exit(code)
}

// server is what the suite needs of a started backend: users, and the
// helpers of another IMAP client (mailserver.IMAP).
type server interface {
	AddUser(name, password string) error
	Append(user, password, mailbox string, msgs ...[]byte) ([]uint32, error)
	Expunge(user, password, mailbox string, uids ...uint32) error
	Mailbox(user, password, mailbox string, bodies bool) (*mailserver.MailboxState, error)
}

// backend is one row of the table: how to start it, and its IMAP address.
type backend struct {
	name  string
	start func(t *testing.T) (server, string)
}

var backends = []backend{
	{"dovecot", func(t *testing.T) (server, string) {
		s := dovecot.StartForTest(t, dovecot.Options{})
		return s, s.IMAPAddr
	}},
	{"cyrus", func(t *testing.T) (server, string) {
		s := cyrus.StartForTest(t)
		return s, s.IMAPAddr
	}},
	{"courier", func(t *testing.T) (server, string) {
		s := courier.StartForTest(t)
		return s, s.IMAPAddr
	}},
}

// TestPOP3Invariants runs the suite against each backend: one server and
// one gateway per backend, one user per case.
func TestPOP3Invariants(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			srv, addr := b.start(t)
			g := harness.Start(t, gatewayYAML(addr))
			e := &env{t: t, srv: srv, pop3: g.Addr("pop3")}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					e := *e
					e.t = t
					c.run(&e)
				})
			}
		})
	}
}

var cases = []struct {
	name string
	run  func(e *env)
}{
	{"ListingRetrTop", (*env).listingRetrTop},
	{"DeleOnlyAtQuit", (*env).deleOnlyAtQuit},
	{"MidSessionAppendExpunge", (*env).midSessionAppendExpunge},
	{"MarkSeen", (*env).markSeen},
}

func gatewayYAML(backendAddr string) string {
	return harness.POP3Config("imap", backendAddr, `limits: {per_ip: 10000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: 5s, backend_command: 10s, shutdown: 2s}
`)
}

// env is one case's backend, gateway and user.
type env struct {
	t          *testing.T
	srv        server
	pop3       string
	user, pass string
}

var userSeq atomic.Int64

// newUser makes a fresh user (plain name: every backend takes it) with msgs
// in its INBOX, and returns their UIDs.
func (e *env) newUser(msgs ...[]byte) []uint32 {
	e.t.Helper()
	var rnd [6]byte
	rand.Read(rnd[:])
	e.user = fmt.Sprintf("u%d%s", userSeq.Add(1), hex.EncodeToString(rnd[:2]))
	e.pass = "pw-" + hex.EncodeToString(rnd[:])
	harness.Secret(e.pass)
	if err := e.srv.AddUser(e.user, e.pass); err != nil {
		e.t.Fatal(err)
	}
	uids, err := e.srv.Append(e.user, e.pass, "INBOX", msgs...)
	if err != nil {
		e.t.Fatal(err)
	}
	return uids
}

func (e *env) dial() *pop3client.Client {
	e.t.Helper()
	c, err := pop3client.LoginRetry(func() (*pop3client.Client, error) {
		return pop3client.Dial(e.pop3, 30*time.Second)
	}, e.user, e.pass, 5*time.Second)
	if err != nil {
		e.t.Fatalf("POP3 login as %s: %v", e.user, err)
	}
	return c
}

// state is the user's INBOX as the backend has it now.
func (e *env) state(bodies bool) *mailserver.MailboxState {
	e.t.Helper()
	st, err := e.srv.Mailbox(e.user, e.pass, "INBOX", bodies)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// asDelivered is what RETR must deliver for a stored body: the body, with a
// CRLF added only where it lacks a final one (RFC 1939 §3).
func asDelivered(body []byte) []byte {
	if len(body) == 0 || bytes.HasSuffix(body, []byte("\r\n")) {
		return body
	}
	return append(slices.Clip(body), '\r', '\n')
}

// suiteMessages: dot lines, a last line without CRLF, 8-bit bytes in a
// header (Cyrus replaces them on APPEND: the suite compares with what the
// backend stores), an empty body, and one large enough for TOP in parts.
func suiteMessages(tag string) [][]byte {
	big := &bytes.Buffer{}
	fmt.Fprintf(big, "From: suite@test\r\nSubject: %s big\r\n\r\n", tag)
	for i := 0; big.Len() < 64<<10; i++ {
		if i%5 == 0 {
			big.WriteString(".")
		}
		fmt.Fprintf(big, "%s line %d of the large message, long enough to need TOP in parts\r\n", tag, i)
	}
	return [][]byte{
		[]byte("From: suite@test\r\nSubject: " + tag + " dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n"),
		[]byte("From: suite@test\r\nSubject: " + tag + " no final CRLF\r\n\r\nfirst\r\nlast line"),
		[]byte("From: suite@test\r\nSubject: " + tag + " Gr\xc3\xbc\xc3\x9fe\r\n\r\neight-bit header\r\n"),
		[]byte("From: suite@test\r\nSubject: " + tag + " empty body\r\n\r\n"),
		big.Bytes(),
	}
}

// listingRetrTop: STAT, LIST, UIDL, RETR and TOP against the backend's own
// view of the mailbox, twice (the second session finds the same UIDLs).
func (e *env) listingRetrTop() {
	t := e.t
	msgs := suiteMessages("listing")
	e.newUser(msgs...)
	st := e.state(true)
	if len(st.Messages) != len(msgs) {
		t.Fatalf("backend holds %d messages, want %d", len(st.Messages), len(msgs))
	}
	var firstUIDLs []string
	for session := 1; session <= 2; session++ {
		c := e.dial()
		count, total, err := c.Stat()
		if err != nil {
			t.Fatal(err)
		}
		var want int64
		for _, m := range st.Messages {
			want += int64(len(m.Body))
		}
		if count != len(msgs) || total != want {
			t.Errorf("STAT = %d %d, want %d %d", count, total, len(msgs), want)
		}
		list, err := c.List()
		if err != nil {
			t.Fatal(err)
		}
		uidl, err := c.UIDL()
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != len(msgs) || len(uidl) != len(msgs) {
			t.Fatalf("LIST %d and UIDL %d lines, want %d", len(list), len(uidl), len(msgs))
		}
		seen := map[string]bool{}
		var uidls []string
		for i, m := range st.Messages {
			n := i + 1
			if list[i].N != n || uidl[i].N != n {
				t.Errorf("listing line %d numbers message %d/%d", n, list[i].N, uidl[i].N)
			}
			u := uidl[i].UIDL
			if seen[u] { // pop3client.UIDL checks the form (RFC 1939 §7)
				t.Errorf("UIDL %d = %q: not unique", n, u)
			}
			seen[u] = true
			uidls = append(uidls, u)
			retr, err := c.Retr(n)
			if err != nil {
				t.Fatalf("RETR %d: %v", n, err)
			}
			if ok, where := mailserver.Equal(retr, asDelivered(m.Body)); !ok {
				t.Errorf("RETR %d is not the backend's BODY[]: %s", n, where)
			}
			if list[i].Size != int64(len(m.Body)) {
				t.Errorf("LIST %d = %d octets, the body has %d", n, list[i].Size, len(m.Body))
			}
			for _, k := range []int{0, 1, 3, 1000} {
				top, err := c.Top(n, k)
				if err != nil {
					t.Fatalf("TOP %d %d: %v", n, k, err)
				}
				if want := pop3client.TopOf(retr, k); !bytes.Equal(top, want) {
					_, where := mailserver.Equal(top, want)
					t.Errorf("TOP %d %d is not RETR cut at line %d (RFC 1939 §7): %s", n, k, k, where)
				}
			}
		}
		if session == 1 {
			firstUIDLs = uidls
		} else if !slices.Equal(uidls, firstUIDLs) {
			t.Errorf("UIDLs changed between sessions: %v, then %v", firstUIDLs, uidls)
		}
		harness.Quit(t, c)
	}
	if after := e.state(false); !slices.Equal(after.UIDs(), st.UIDs()) {
		t.Errorf("sessions without DELE changed the mailbox: %v, then %v", st.UIDs(), after.UIDs())
	}
}

// deleOnlyAtQuit: DELE then a dropped connection deletes nothing and flags
// nothing (RFC 1939 §6); DELE, RSET, DELE and QUIT removes exactly the
// message deleted last.
func (e *env) deleOnlyAtQuit() {
	t := e.t
	uids := e.newUser(suiteMessages("dele")[:4]...)
	c := e.dial()
	for n := 1; n <= 3; n++ {
		if err := c.Dele(n); err != nil {
			t.Fatal(err)
		}
	}
	c.Close() // no QUIT
	// The backend may still be busy with the dropped session's clean-up:
	// look until the state settles, or a deadline passes.
	time.Sleep(500 * time.Millisecond)
	st := e.state(false)
	if !slices.Equal(st.UIDs(), uids) {
		t.Fatalf("a dropped session deleted messages: left %v of %v", st.UIDs(), uids)
	}
	for _, m := range st.Messages {
		if m.Has(imap.FlagDeleted) {
			t.Errorf("UID %d flagged \\Deleted by a session that never reached UPDATE", m.UID)
		}
	}

	c = e.dial()
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	if err := c.Rset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	harness.Quit(t, c)
	want := []uint32{uids[0], uids[2], uids[3]}
	if got := e.state(false).UIDs(); !slices.Equal(got, want) {
		t.Errorf("after DELE 1, RSET, DELE 2, QUIT: left %v, want %v", got, want)
	}
}

// midSessionAppendExpunge: another IMAP client appends a message and
// expunges two while a POP3 session is open. The session's numbers and
// listing stay as they were; RETR and TOP of the expunged messages answer a
// plain -ERR, whether or not their bodies were fetched before (one was read
// whole and is cached, one was TOPped in parts), and the session goes on;
// QUIT deletes only what it DELEted. The next session sees the new message.
func (e *env) midSessionAppendExpunge() {
	t := e.t
	msgs := suiteMessages("mid")
	uids := e.newUser(msgs...)
	c := e.dial()
	defer c.Close()
	if _, err := c.Retr(1); err != nil { // cached
		t.Fatal(err)
	}
	if _, err := c.Top(5, 2); err != nil { // in parts: not cached
		t.Fatal(err)
	}
	if _, err := e.srv.Append(e.user, e.pass, "INBOX", []byte("Subject: arrived meanwhile\r\n\r\nnew\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Expunge(e.user, e.pass, "INBOX", uids[0], uids[4], uids[2]); err != nil {
		t.Fatal(err)
	}
	// Backends report other clients' expunges only in answer to a command
	// (Courier only to NOOP or IDLE); the gateway asks once its last word
	// from the backend is older than a few seconds.
	time.Sleep(2500 * time.Millisecond)
	count, _, err := c.Stat()
	if err != nil || count != len(msgs) {
		t.Errorf("STAT after the other client's changes: %d messages, %v; want still %d", count, err, len(msgs))
	}
	_, err = c.Retr(1)
	harness.WantGone(t, "RETR 1 (cached)", err)
	_, err = c.Top(5, 2)
	harness.WantGone(t, "TOP 5 2 (fetched in parts)", err)
	_, err = c.Top(5, 0)
	harness.WantGone(t, "TOP 5 0", err)
	_, err = c.Retr(3)
	harness.WantGone(t, "RETR 3 (fetched ahead after RETR 1)", err)
	st := e.state(true)
	body2, _ := st.Message(uids[1])
	got, err := c.Retr(2)
	if err != nil {
		t.Fatalf("RETR 2 after the others went: %v", err)
	}
	if ok, where := mailserver.Equal(got, asDelivered(body2.Body)); !ok {
		t.Errorf("RETR 2: %s", where)
	}
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	harness.Quit(t, c)
	after := e.state(false).UIDs()
	if len(after) != 2 || after[0] != uids[3] || after[1] <= uids[4] {
		t.Errorf("left %v; want UID %d and the new message", after, uids[3])
	}
	c = e.dial()
	defer c.Close()
	if count, _, err := c.Stat(); err != nil || count != 2 {
		t.Errorf("the next session: STAT %d, %v; want 2 (the old message and the new one)", count, err)
	}
	top, err := c.Top(2, 0)
	if err != nil || !strings.Contains(string(top), "arrived meanwhile") {
		t.Errorf("the next session's message 2 is not the new one: %q, %v", top, err)
	}
	c.Quit()
}

// markSeen: RETR sets \Seen (mark_seen, the default), TOP does not, and a
// session that ends without QUIT still sends the \Seen it owes.
func (e *env) markSeen() {
	t := e.t
	uids := e.newUser(suiteMessages("seen")[:3]...)
	c := e.dial()
	if _, err := c.Retr(1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Top(2, 1); err != nil {
		t.Fatal(err)
	}
	harness.Quit(t, c)
	c = e.dial()
	if _, err := c.Retr(3); err != nil {
		t.Fatal(err)
	}
	c.Close() // dropped: \Seen is still flushed in the background
	want := map[uint32]bool{uids[0]: true, uids[1]: false, uids[2]: true}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := e.state(false)
		var wrong []string
		for _, m := range st.Messages {
			if m.Has(imap.FlagSeen) != want[m.UID] {
				wrong = append(wrong, fmt.Sprintf("UID %d \\Seen=%v", m.UID, m.Has(imap.FlagSeen)))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("flags after RETR 1, TOP 2, RETR 3: %v (want \\Seen on 1 and 3 only)", wrong)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
