package faults

// Sessions against Dovecot through the fault proxy: drops that must release
// the lock at once, a maildrop that follows the backend, and regressions
// TestModel found.

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// TestReconnectAfterDropNeverInUse: a session that ends without QUIT
// releases its maildrop lock within a second. A client that drops its connection without QUIT (a reset, a close, a
// TLS connection broken under it) and reconnects at once is never told
// [IN-USE]: the old session releases its maildrop lock first and does its
// backend clean-up (the \Seen batch, LOGOUT) afterwards, in the background.
// It used to wait for the fetcher and then for LOGOUT on a connection it had
// just killed, 2-16 s in which every reconnect got [IN-USE]. Each drop comes
// after RETR (a \Seen to flush, a body fetched ahead) and DELE (a deletion
// that must not happen), and the reconnect gets one attempt, no retry. The
// backend goes silent when the old session sends its \Seen batch, so a
// release that waited for the clean-up would be seconds late.
func TestReconnectAfterDropNeverInUse(t *testing.T) {
	dc := dovecotServer(t)
	a, msgs, _ := seededAccount(t, "drop", 4, 3000, 5000)
	verify := leakCheck(t)
	p := Listen(t, dc.IMAPAddr)
	p.Set(Faults{Triggers: []Trigger{
		{Dir: Upstream, Pattern: "+FLAGS.SILENT (\\Seen)", Action: Blackhole},
	}})
	certFile, keyFile := harness.LeafFiles(t, t.TempDir())
	g := harness.Start(t, fmt.Sprintf(`log: {level: info, format: json}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot}
pop3: {}
limits: {per_ip: 10000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: %s, backend_command: %s, shutdown: 2s}
`, certFile, keyFile, p.Addr(), backendDial, backendCommand))

	dialPlain := func() (*pop3client.Client, error) { return pop3client.Dial(g.Addr("pop3"), clientTimeout) }
	dialTLS := func() (*pop3client.Client, error) {
		return pop3client.DialTLS(g.Addr("pop3s"), harness.ClientTLS(t), clientTimeout)
	}
	drops := []struct {
		name string
		dial func() (*pop3client.Client, error)
		drop func(c *pop3client.Client)
	}{
		{"RST", dialPlain, func(c *pop3client.Client) {
			c.Conn().(*net.TCPConn).SetLinger(0) // close sends RST
			c.Close()
		}},
		{"FIN", dialPlain, func(c *pop3client.Client) { c.Close() }},
		{"TLS abort", dialTLS, func(c *pop3client.Client) {
			// A record the gateway cannot decrypt, then a reset under
			// the TLS connection: its read fails with a TLS error.
			raw := c.Conn().(*tls.Conn).NetConn().(*net.TCPConn)
			raw.Write([]byte("\x17\x03\x03\x00\x20garbage-that-is-no-tls-record-xx"))
			raw.SetLinger(0)
			raw.Close()
		}},
	}
	login := func(dial func() (*pop3client.Client, error)) (*pop3client.Client, error) {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		if err := c.Login(a.User, a.Pass); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	c, err := login(dialPlain)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 50
	for i := range rounds {
		d := drops[i%len(drops)]
		n := 1 + i%len(msgs)
		if _, err := c.Retr(n); err != nil {
			t.Fatalf("round %d: RETR %d: %v", i, n, err)
		}
		if err := c.Dele(n); err != nil {
			t.Fatalf("round %d: DELE %d: %v", i, n, err)
		}
		d.drop(c)
		start := time.Now()
		c, err = login(drops[(i+1)%len(drops)].dial)
		if err != nil {
			var re *pop3client.ReplyError
			if errors.As(err, &re) && re.Code() == "IN-USE" {
				t.Fatalf("round %d: reconnect %v after a %s: %v", i, time.Since(start), d.name, err)
			}
			t.Fatalf("round %d: reconnect after a %s: %v", i, d.name, err)
		}
		if count, _, err := c.Stat(); err != nil || count != len(msgs) {
			t.Fatalf("round %d: after a %s: STAT = %d, %v; want %d (a drop deletes nothing)", i, d.name, count, err, len(msgs))
		}
	}
	harness.Quit(t, c)
	if st := a.Inbox(t, false); len(st.UIDs()) != len(msgs) {
		t.Errorf("%d messages left, want %d: drops must delete nothing", len(st.UIDs()), len(msgs))
	}
	if len(p.Fired()) < rounds/2 {
		t.Errorf("the backend went silent at %d of %d \\Seen batches: the test proves little", len(p.Fired()), rounds)
	}
	g.Stop(5 * time.Second)
	p.Close()
	verify()
}

// TestExpungedMidSessionAgainstDovecot: a body is served only for a message
// the backend still has. With the cache and fetch-ahead on (the defaults), a message
// another IMAP client expunges mid-session answers -ERR on RETR and TOP
// whether its body was cached (by TOP of a small message), fetched ahead (by
// reading in order), fetched in parts (TOP of a larger one) or not fetched at
// all, and the session goes on: the other messages are
// served exactly and QUIT deletes only what was DELEted. Dovecot reports the
// expunges only in answer to a command; the gateway learns of them with its
// next body FETCH or, for a body it holds, with a NOOP once the backend's
// last word is a few seconds old (the wait below).
func TestExpungedMidSessionAgainstDovecot(t *testing.T) {
	dc := dovecotServer(t)
	a, msgs, uids := seededAccount(t, "follow", 5, 2000, 1000)
	big := message("follow-big", 60<<10) // TOP fetches its parts only
	bigUID, err := dc.Append(a.User, a.Pass, "INBOX", big)
	if err != nil {
		t.Fatal(err)
	}
	msgs, uids = append(msgs, big), append(uids, bigUID...)
	g := harness.Start(t, gatewayYAML(dc.IMAPAddr, "{}"))
	c := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer c.Close()
	if _, err := c.Top(4, 0); err != nil { // 4's body is now cached
		t.Fatal(err)
	}
	if _, err := c.Top(6, 3); err != nil { // header and a few lines, not cached
		t.Fatal(err)
	}
	if _, err := c.Retr(1); err != nil { // 2 and 3 are fetched ahead
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	// 2 fetched ahead, 4 cached, 5 never fetched, 6 fetched in parts.
	if err := dc.Expunge(a.User, a.Pass, "INBOX", uids[1], uids[3], uids[4], uids[5]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // older than the gateway's staleAfter
	_, err = c.Retr(2)
	harness.WantGone(t, "RETR 2 (fetched ahead)", err)
	_, err = c.Top(4, 0)
	harness.WantGone(t, "TOP 4 (cached)", err)
	_, err = c.Retr(4)
	harness.WantGone(t, "RETR 4 (cached)", err)
	_, err = c.Retr(5)
	harness.WantGone(t, "RETR 5 (never fetched)", err)
	_, err = c.Top(6, 3)
	harness.WantGone(t, "TOP 6 3 (fetched in parts)", err)
	_, err = c.Top(6, 0)
	harness.WantGone(t, "TOP 6 0", err)
	got, err := c.Retr(3) // fetched ahead, still there
	if err != nil {
		t.Fatalf("RETR 3: %v", err)
	}
	if ok, where := dovecot.Equal(got, msgs[2]); !ok {
		t.Errorf("RETR 3: %s", where)
	}
	if err := c.Dele(3); err != nil {
		t.Fatal(err)
	}
	harness.Quit(t, c)
	st := a.Inbox(t, false)
	if got := st.UIDs(); len(got) != 1 || got[0] != uids[0] {
		t.Errorf("left %v, want only UID %d", got, uids[0])
	}
}

// TestRegressionFetchAheadAgainstDovecot: reading a maildrop in order makes
// the gateway pipeline one UID FETCH per message (fetch-ahead). Dovecot
// answers such a pipeline with the next commands' FETCH data before the
// tagged OK of the first (observed: "* 1 FETCH ... * 4 FETCH, f0 OK, f1 OK
// ..."). The fetcher used to wait for each command's tagged OK before
// reading the next command's body, while go-imap's reader waited for that
// body's literal to be consumed: a deadlock that no watchdog could break
// (closing the socket does not wake a reader blocked on a channel), so RETR
// hung forever and so did the gateway's Shutdown. Found by TestModel (seed
// 1795458787436448271).
func TestRegressionFetchAheadAgainstDovecot(t *testing.T) {
	dc := dovecotServer(t)
	a, msgs, _ := seededAccount(t, "ahead", 8, 5000, 7000)
	verify := leakCheck(t)
	// The default pop3 section: cache and fetch-ahead on.
	g := harness.Start(t, gatewayYAML(dc.IMAPAddr, "{}"))
	c, err := pop3client.Dial(g.Addr("pop3"), backendCommand+slack)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= len(msgs); n++ {
		got, err := c.Retr(n)
		if err != nil {
			t.Fatalf("RETR %d (reading in order, fetch-ahead pipelined): %v", n, err)
		}
		if ok, where := dovecot.Equal(got, msgs[n-1]); !ok {
			t.Fatalf("RETR %d: %s", n, where)
		}
	}
	harness.Quit(t, c)
	g.Stop(5 * time.Second)
	verify()
}

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
	st := a.Inbox(t, true)
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
	after := a.Inbox(t, false)
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
	full := a.Inbox(t, false)
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
