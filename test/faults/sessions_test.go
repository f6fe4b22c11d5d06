package faults

// Sessions against Dovecot through the fault proxy: drops that must release
// the lock at once, a maildrop that follows the backend, and regressions
// TestModel found.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

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
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if st := mailboxState(t, a, false); len(st.UIDs()) != len(msgs) {
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
// whether its body was cached (by TOP), fetched ahead (by reading in order)
// or not fetched at all, and the session goes on: the other messages are
// served exactly and QUIT deletes only what was DELEted. Dovecot reports the
// expunges only in answer to a command; the gateway learns of them with its
// next body FETCH or, for a body it holds, with a NOOP once the backend's
// last word is a few seconds old (the wait below).
func TestExpungedMidSessionAgainstDovecot(t *testing.T) {
	dc := dovecotServer(t)
	a, msgs, uids := seededAccount(t, "follow", 5, 2000, 3000)
	g := harness.Start(t, gatewayYAML(dc.IMAPAddr, "{}"))
	c := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer c.Close()
	if _, err := c.Top(4, 0); err != nil { // 4's body is now cached
		t.Fatal(err)
	}
	if _, err := c.Retr(1); err != nil { // 2 and 3 are fetched ahead
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	// 2 fetched ahead, 4 cached, 5 never fetched.
	if err := dc.Expunge(a.User, a.Pass, "INBOX", uids[1], uids[3], uids[4]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // older than the gateway's staleAfter
	gone := func(what string, err error) {
		t.Helper()
		var re *pop3client.ReplyError
		if !errors.As(err, &re) || re.Code() == "SYS/TEMP" {
			t.Errorf("%s of a message expunged elsewhere: err = %v, want a plain -ERR", what, err)
		}
	}
	_, err := c.Retr(2)
	gone("RETR 2 (fetched ahead)", err)
	_, err = c.Top(4, 0)
	gone("TOP 4 (cached)", err)
	_, err = c.Retr(4)
	gone("RETR 4 (cached)", err)
	_, err = c.Retr(5)
	gone("RETR 5 (never fetched)", err)
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
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	st := mailboxState(t, a, false)
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
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	g.Stop(5 * time.Second)
	verify()
}
