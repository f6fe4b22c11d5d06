package faults

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

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
	a := newAccount(t)
	var msgs [][]byte
	for i := range 4 {
		msgs = append(msgs, message(fmt.Sprintf("drop%d", i), 3000+i*5000))
	}
	if _, err := dc.Append(a.User, a.Pass, "INBOX", msgs...); err != nil {
		t.Fatal(err)
	}
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
