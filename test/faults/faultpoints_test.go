package faults

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// The fault points of a POP3 session over IMAP, in the order the session
// reaches them, and the command at which the client must see the failure.
const (
	atPASS = "PASS" // login, SELECT, snapshot: the maildrop is opened at PASS
	atRETR = "RETR" // a body fetch
	atQUIT = "QUIT" // the commit: UID STORE \Deleted, UID EXPUNGE
	atNone = ""     // no failure: the conditions are slow, not broken
)

// faultCase is one fault point.
type faultCase struct {
	name   string
	faults Faults
	at     string        // the command that must fail cleanly
	within time.Duration // how soon after that command the client must have its answer
	// commitMayApply: the fault falls inside the commit, so the deleted
	// messages may be gone or not; elsewhere none may be gone.
	commitMayApply bool
}

func up(pattern string, a Action) Trigger { return Trigger{Dir: Upstream, Pattern: pattern, Action: a} }
func down(pattern string, a Action) Trigger {
	return Trigger{Dir: Downstream, Pattern: pattern, Action: a}
}

// TestFaultPoints cuts or stalls the backend connection at every point of a
// POP3 session (a failing backend costs that session alone, within the
// timeout, and removes nothing not deleted and committed: RFC 1939 §6) and
// checks, for each:
//   - the client gets -ERR [SYS/TEMP] or a closed connection, at the command
//     the fault belongs to, within the configured backend timeout (+ slack);
//   - a message body is never delivered truncated or altered;
//   - nothing is removed unless the session reached QUIT, and then only the
//     messages it deleted; no message it did not delete is even flagged
//     \Deleted;
//   - the next session sees every message that is still there and not
//     flagged \Deleted, with the same UIDL and bytes, and completes the
//     interrupted deletion;
//   - once the gateway stops, no goroutine and no file descriptor is left.
func TestFaultPoints(t *testing.T) {
	dovecotServer(t)
	login := backendDial + slack
	open := backendDial + backendCommand + slack
	cmd := backendCommand + slack
	cases := []faultCase{
		{name: "stops answering at connect", faults: Faults{Blackhole: true}, at: atPASS, within: login},
		{name: "reset after 100 bytes of greeting", faults: Faults{Triggers: []Trigger{{Dir: Downstream, After: 100, Action: Reset}}},
			at: atPASS, within: login},
		{name: "reset during login", faults: Faults{Triggers: []Trigger{up("AUTHENTICATE", Reset)}}, at: atPASS, within: login},
		{name: "stops answering during login", faults: Faults{Triggers: []Trigger{up("AUTHENTICATE", Blackhole)}},
			at: atPASS, within: login},
		{name: "reset at SELECT", faults: Faults{Triggers: []Trigger{up("SELECT", Reset)}}, at: atPASS, within: open},
		{name: "stops answering at SELECT", faults: Faults{Triggers: []Trigger{up("SELECT", Blackhole)}},
			at: atPASS, within: open},
		{name: "reset at snapshot FETCH", faults: Faults{Triggers: []Trigger{up("UID FETCH 1:*", Reset)}},
			at: atPASS, within: open},
		{name: "reset mid snapshot answer", faults: Faults{Triggers: []Trigger{down("* 3 FETCH", Reset)}},
			at: atPASS, within: open},
		{name: "stops answering mid snapshot", faults: Faults{Triggers: []Trigger{down("* 3 FETCH", Blackhole)}},
			at: atPASS, within: open},
		{name: "reset mid body literal", faults: Faults{Triggers: []Trigger{{Dir: Downstream, Pattern: "BODY[] {", After: 3000, Action: Reset}}},
			at: atRETR, within: cmd},
		{name: "stops answering mid body literal", faults: Faults{Triggers: []Trigger{{Dir: Downstream, Pattern: "BODY[] {", After: 3000, Action: Blackhole}}},
			at: atRETR, within: cmd},
		{name: "reset at UID STORE", faults: Faults{Triggers: []Trigger{up("UID STORE", Reset)}},
			at: atQUIT, within: cmd, commitMayApply: true},
		{name: "UID STORE applied, answer lost", faults: Faults{Triggers: []Trigger{{Dir: Upstream, Pattern: "UID STORE", OnReply: true, Action: Reset}}},
			at: atQUIT, within: cmd, commitMayApply: true},
		{name: "reset at UID EXPUNGE", faults: Faults{Triggers: []Trigger{up("UID EXPUNGE", Reset)}},
			at: atQUIT, within: cmd, commitMayApply: true},
		{name: "UID EXPUNGE applied, answer lost", faults: Faults{Triggers: []Trigger{{Dir: Upstream, Pattern: "UID EXPUNGE", OnReply: true, Action: Reset}}},
			at: atQUIT, within: cmd, commitMayApply: true},
		{name: "stops answering at UID EXPUNGE", faults: Faults{Triggers: []Trigger{up("UID EXPUNGE", Blackhole)}},
			at: atQUIT, within: cmd, commitMayApply: true},
		{name: "slow and narrow backend", faults: Faults{Latency: 20 * time.Millisecond, BytesPerSecond: 256 << 10},
			at: atNone, within: cmd},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runFaultCase(t, tc) })
	}
}

func runFaultCase(t *testing.T, tc faultCase) {
	dc := dovecotServer(t)
	a := newAccount(t)
	// Message 2 is large enough that a reset 3000 bytes into its literal
	// is mid-body; the others are small.
	msgs := [][]byte{message("m1", 300), message("m2", 20000), message("m3", 500), message("m4", 800), message("m5", 200)}
	uids, err := dc.Append(a.User, a.Pass, "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}
	body := make(map[uint32][]byte)
	for i, u := range uids {
		body[u] = msgs[i]
	}
	verify := leakCheck(t)

	p := Listen(t, dc.IMAPAddr)
	g := harness.Start(t, gatewayYAML(p.Addr(), ""))
	addr := g.Addr("pop3")
	p.Set(tc.faults)

	// The session under the fault: PASS, UIDL, RETR 2, DELE 1 and 3, QUIT.
	deleted := map[uint32]bool{uids[0]: true, uids[2]: true}
	reachedQuit, failedAt := faultSession(t, addr, a, tc, body)

	if tc.at != atNone && failedAt != tc.at {
		t.Errorf("the fault hit at %q, want at %s", failedAt, tc.at)
	}
	if tc.at != atNone && len(p.Fired()) == 0 {
		t.Fatalf("the fault never fired (the session did not reach its point)")
	}

	// Dovecot's own view: nothing but the deleted messages may be missing,
	// and those only if the fault left the commit a chance.
	p.Set(Faults{})
	st := mailboxState(t, a, true)
	for _, u := range uids {
		m, ok := st.Message(u)
		switch {
		case !ok && !deleted[u]:
			t.Errorf("invariant 1: UID %d was removed but never deleted by a client", u)
		case !ok && !(reachedQuit && (tc.commitMayApply || tc.at == atNone)):
			t.Errorf("invariant 1: UID %d was removed, but its session failed before the commit (at %s)", u, failedAt)
		case ok && tc.at == atNone && deleted[u]:
			t.Errorf("UID %d is still there after a successful QUIT that deleted it", u)
		case ok && !deleted[u] && m.Has(imap.FlagDeleted):
			t.Errorf("invariant 1: UID %d, never deleted by a client, is flagged \\Deleted", u)
		case ok && !bytes.Equal(m.Body, body[u]):
			_, where := dovecot.Equal(m.Body, body[u])
			t.Errorf("UID %d changed on the backend: %s", u, where)
		}
	}

	for _, u := range sortedUIDs(deleted) {
		m, ok := st.Message(u)
		switch {
		case !ok:
			t.Logf("deleted UID %d: gone after the fault", u)
		case m.Has(imap.FlagDeleted):
			t.Logf("deleted UID %d: flagged \\Deleted, not expunged (hidden from POP3)", u)
		default:
			t.Logf("deleted UID %d: still there, visible again", u)
		}
	}

	// The next session: everything still there and not \Deleted is
	// visible with its UIDL and exact bytes; it completes the deletion.
	recoverySession(t, addr, a, body, deleted)
	after := mailboxState(t, a, false)
	for _, u := range uids {
		m, ok := after.Message(u)
		if ok == deleted[u] && !(ok && m.Has(imap.FlagDeleted)) {
			t.Errorf("after the recovery session UID %d present=%v, deleted by the client=%v", u, ok, deleted[u])
		}
	}

	g.Stop(5 * time.Second)
	p.Close()
	verify()
}

// faultSession runs the session under the fault and returns whether QUIT was
// sent in TRANSACTION and the command that failed ("" if none).
func faultSession(t *testing.T, addr string, a account, tc faultCase, body map[uint32][]byte) (reachedQuit bool, failedAt string) {
	t.Helper()
	c, err := pop3client.Dial(addr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// failed checks one command's failure: clean, and in time.
	failed := func(cmd string, start time.Time, err error) string {
		t.Helper()
		took := time.Since(start)
		if !cleanFailure(err) {
			t.Errorf("%s under the fault: %v (%T), want -ERR [SYS/TEMP] or a closed connection", cmd, err, err)
		}
		if took > tc.within {
			t.Errorf("%s under the fault answered after %v, want within %v", cmd, took.Round(time.Millisecond), tc.within)
		}
		return cmd
	}
	start := time.Now()
	if err := c.Login(a.User, a.Pass); err != nil {
		return false, failed(atPASS, start, err)
	}
	if tc.at == atNone && time.Since(start) > tc.within+backendDial {
		t.Errorf("login over a slow backend took %v", time.Since(start))
	}
	items, err := c.UIDL()
	if err != nil {
		t.Fatalf("UIDL: %v", err)
	}
	if len(items) != len(body) {
		t.Fatalf("UIDL lists %d messages, want %d", len(items), len(body))
	}
	for _, it := range items {
		if _, ok := body[uidOf(t, it.UIDL)]; !ok {
			t.Errorf("UIDL %q names no message of this user", it.UIDL)
		}
	}
	start = time.Now()
	got, err := c.Retr(2)
	if err != nil {
		failedAt = failed(atRETR, start, err)
		var re *pop3client.ReplyError
		if !errors.As(err, &re) {
			return false, failedAt // the connection is gone
		}
	} else if want := body[uidOf(t, items[1].UIDL)]; !bytes.Equal(got, want) {
		_, where := dovecot.Equal(got, want)
		t.Errorf("invariant 2: RETR 2 under the fault delivered other bytes: %s", where)
	}
	for _, n := range []int{1, 3} {
		if err := c.Dele(n); err != nil {
			t.Fatalf("DELE %d: %v", n, err)
		}
	}
	start = time.Now()
	if err := c.Quit(); err != nil {
		if failedAt == "" {
			failedAt = failed(atQUIT, start, err)
		} else if !cleanFailure(err) {
			t.Errorf("QUIT after a failed RETR: %v", err)
		}
		return true, failedAt
	}
	if took := time.Since(start); took > tc.within {
		t.Errorf("QUIT took %v, want within %v", took, tc.within)
	}
	return true, failedAt
}

// recoverySession logs in again over a clean backend and checks that the
// maildrop is exactly what Dovecot holds without \Deleted messages, with
// unchanged UIDLs and bytes; then it deletes what the first session deleted
// and is still visible, and QUITs.
func recoverySession(t *testing.T, addr string, a account, body map[uint32][]byte, deleted map[uint32]bool) {
	t.Helper()
	full := mailboxState(t, a, false)
	want := map[uint32]bool{}
	for _, m := range full.Messages {
		if !m.Has(imap.FlagDeleted) {
			want[m.UID] = true
		}
	}
	c := dialPOP3(t, addr, a, 10*time.Second)
	defer c.Close()
	items, err := c.UIDL()
	if err != nil {
		t.Fatalf("recovery UIDL: %v", err)
	}
	got := map[uint32]bool{}
	for _, it := range items {
		u := uidOf(t, it.UIDL)
		got[u] = true
		b, err := c.Retr(it.N)
		if err != nil {
			t.Fatalf("recovery RETR %d: %v", it.N, err)
		}
		if !bytes.Equal(b, body[u]) {
			_, where := dovecot.Equal(b, body[u])
			t.Errorf("invariant 2: recovery RETR of UID %d: %s", u, where)
		}
		if deleted[u] {
			if err := c.Dele(it.N); err != nil {
				t.Fatalf("recovery DELE %d: %v", it.N, err)
			}
		}
	}
	if !slices.Equal(sortedUIDs(got), sortedUIDs(want)) {
		t.Errorf("the next session lists UIDs %v; Dovecot holds %v without \\Deleted", sortedUIDs(got), sortedUIDs(want))
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("recovery QUIT: %v", err)
	}
}
