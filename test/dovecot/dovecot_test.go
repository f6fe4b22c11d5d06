package dovecot_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailgate/test/dovecot"
	"mailgate/test/pop3client"
)

// TestHarness proves the harness itself: an instance starts with TLS and
// POP3, takes users while running, stores APPENDed bytes exactly, reports
// them back, serves them over POP3 with its default UIDL format, and
// disappears with its directory on Stop.
func TestHarness(t *testing.T) {
	srv := dovecot.StartForTest(t, dovecot.Options{TLS: true, POP3: true})
	const user, pass = "alice@a.test", "harness-pw-1"
	if err := srv.AddUser(user, pass); err != nil {
		t.Fatal(err)
	}
	msgs := [][]byte{
		[]byte("From: a@a.test\r\nSubject: one\r\n\r\nhello\r\n"),
		[]byte("From: a@a.test\r\nSubject: dots\r\n\r\n.\r\n..\r\n.x\r\nno final CRLF"),
		[]byte("From: a@a.test\r\nSubject: 8bit\r\n\r\ncaf\xc3\xa9 \xff\xfe\r\n"),
	}
	uids, err := srv.Append(user, pass, "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}
	if len(uids) != 3 || uids[0] >= uids[1] || uids[1] >= uids[2] {
		t.Fatalf("APPEND UIDs %v, want three ascending", uids)
	}
	st, err := srv.Mailbox(user, pass, "INBOX", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Messages) != 3 || st.UIDValidity == 0 {
		t.Fatalf("mailbox state %+v", st)
	}
	for i, m := range st.Messages {
		if ok, diff := dovecot.Equal(m.Body, msgs[i]); !ok {
			t.Errorf("message %d BODY[] differs from what was appended: %s", i+1, diff)
		}
		if m.Size != int64(len(msgs[i])) {
			t.Errorf("message %d RFC822.SIZE %d, appended %d bytes", i+1, m.Size, len(msgs[i]))
		}
		if m.Has(imap.FlagSeen) {
			t.Errorf("message %d is \\Seen after a read-only BODY.PEEK[]", i+1)
		}
	}

	// Another IMAP client's view: flag one deleted, expunge another.
	if err := srv.Store(user, pass, "INBOX", false, []imap.Flag{imap.FlagDeleted}, uids[0]); err != nil {
		t.Fatal(err)
	}
	if err := srv.Expunge(user, pass, "INBOX", uids[2]); err != nil {
		t.Fatal(err)
	}
	st, err = srv.Mailbox(user, pass, "INBOX", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.UIDs(); len(got) != 2 || got[0] != uids[0] || got[1] != uids[1] {
		t.Fatalf("after expunging UID %d: UIDs %v, want %v", uids[2], got, uids[:2])
	}
	if m, _ := st.Message(uids[0]); !m.Has(imap.FlagDeleted) {
		t.Errorf("UID %d lost its \\Deleted flag", uids[0])
	}

	// Dovecot's own POP3 with pop3_uidl_format %08Xu%08Xv: Dovecot renders
	// it in lower-case hex (its X modifier means hex, not upper case).
	// Messages flagged \Deleted are still listed (its POP3 ignores them).
	p, err := pop3client.Dial(srv.POP3Addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	uidl, err := p.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range uidl {
		if want := fmt.Sprintf("%08x%08x", st.Messages[i].UID, st.UIDValidity); it.UIDL != want {
			t.Errorf("dovecot POP3 UIDL %d = %q, want %q", it.N, it.UIDL, want)
		}
	}
	got, err := p.Retr(2)
	if err != nil {
		t.Fatal(err)
	}
	// Dovecot's POP3 adds the missing final CRLF.
	if want := append(append([]byte(nil), msgs[1]...), "\r\n"...); !bytes.Equal(got, want) {
		t.Errorf("dovecot POP3 RETR 2 = %q, want %q", got, want)
	}
	if err := p.Quit(); err != nil {
		t.Fatal(err)
	}

	// Implicit TLS and STARTTLS, verified against the test CA.
	tlsCfg := &tls.Config{RootCAs: srv.CA.Pool(), ServerName: "127.0.0.1"}
	c, err := imapclient.DialTLS(srv.IMAPSAddr, &imapclient.Options{TLSConfig: tlsCfg})
	if err != nil {
		t.Fatalf("IMAPS: %v", err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("IMAPS login: %v", err)
	}
	c.Close()
	c, err = imapclient.DialStartTLS(srv.IMAPAddr, &imapclient.Options{TLSConfig: tlsCfg})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	c.Close()

	// Stop ends the master and removes the directory.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(srv.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop", srv.Dir)
	}
	if conn, err := net.DialTimeout("tcp", srv.IMAPAddr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts after Stop", srv.IMAPAddr)
	}
}

// TestParallelInstances: two instances side by side share nothing.
func TestParallelInstances(t *testing.T) {
	a := dovecot.StartForTest(t, dovecot.Options{})
	b := dovecot.StartForTest(t, dovecot.Options{})
	if a.IMAPAddr == b.IMAPAddr || a.Dir == b.Dir {
		t.Fatalf("instances share %s / %s", a.IMAPAddr, a.Dir)
	}
	for _, s := range []*dovecot.Server{a, b} {
		if err := s.AddUser("u@x.test", "pw"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Append("u@x.test", "pw", "INBOX", []byte("Subject: a\r\n\r\na\r\n")); err != nil {
		t.Fatal(err)
	}
	st, err := b.Mailbox("u@x.test", "pw", "INBOX", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Messages) != 0 {
		t.Errorf("instance b sees %d messages appended to instance a", len(st.Messages))
	}
	if _, err := a.Login("u@x.test", "wrong"); err == nil {
		t.Error("login with a wrong password succeeded")
	}
}

// TestCloneMailboxes: a clone has the same UIDs, UIDVALIDITY and bytes, and
// changing it leaves the original alone.
func TestCloneMailboxes(t *testing.T) {
	srv := dovecot.StartForTest(t, dovecot.Options{})
	for _, u := range []string{"src@c.test", "dst@c.test"} {
		if err := srv.AddUser(u, "pw"); err != nil {
			t.Fatal(err)
		}
	}
	msgs := [][]byte{[]byte("Subject: 1\r\n\r\none\r\n"), []byte("Subject: 2\r\n\r\ntwo\r\n")}
	uids, err := srv.Append("src@c.test", "pw", "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.CloneMailboxes("src@c.test", "dst@c.test"); err != nil {
		t.Fatal(err)
	}
	a, err := srv.Mailbox("src@c.test", "pw", "INBOX", true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := srv.Mailbox("dst@c.test", "pw", "INBOX", true)
	if err != nil {
		t.Fatal(err)
	}
	if a.UIDValidity != b.UIDValidity || len(b.Messages) != 2 {
		t.Fatalf("clone: %+v, original: %+v", b, a)
	}
	for i := range msgs {
		if b.Messages[i].UID != uids[i] || !bytes.Equal(b.Messages[i].Body, msgs[i]) {
			t.Errorf("clone message %d = UID %d %q", i, b.Messages[i].UID, b.Messages[i].Body)
		}
	}
	if err := srv.Expunge("dst@c.test", "pw", "INBOX", uids[0]); err != nil {
		t.Fatal(err)
	}
	if err := srv.Store("dst@c.test", "pw", "INBOX", false, []imap.Flag{imap.FlagSeen}, uids[1]); err != nil {
		t.Fatal(err)
	}
	a, err = srv.Mailbox("src@c.test", "pw", "INBOX", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Messages) != 2 || a.Messages[1].Has(imap.FlagSeen) || !bytes.Equal(a.Messages[0].Body, msgs[0]) {
		t.Errorf("changing the clone changed the original: %+v", a.Messages)
	}
}

// TestAppendConcurrently: every message arrives exactly once whatever the
// split (more connections than messages, none at all), and a failed login
// is reported.
func TestAppendConcurrently(t *testing.T) {
	srv := dovecot.StartForTest(t, dovecot.Options{})
	for _, tc := range []struct {
		user  string
		conns int
		n     int
	}{{"seven@p.test", 3, 7}, {"two@p.test", 5, 2}, {"none@p.test", 4, 0}} {
		if err := srv.AddUser(tc.user, "pw"); err != nil {
			t.Fatal(err)
		}
		want := map[string]int{}
		var msgs [][]byte
		for i := range tc.n {
			m := fmt.Sprintf("Subject: %d\r\n\r\nmessage %d of %s\r\n", i, i, tc.user)
			msgs = append(msgs, []byte(m))
			want[m]++
		}
		if err := srv.AppendConcurrently(tc.user, "pw", "INBOX", tc.conns, msgs); err != nil {
			t.Fatalf("%s: %v", tc.user, err)
		}
		st, err := srv.Mailbox(tc.user, "pw", "INBOX", true)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, m := range st.Messages {
			got[string(m.Body)]++
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s over %d connections: INBOX holds %v, want %v", tc.user, tc.conns, got, want)
		}
	}
	if err := srv.AppendConcurrently("seven@p.test", "wrong", "INBOX", 2, [][]byte{[]byte("Subject: x\r\n\r\nx\r\n")}); err == nil {
		t.Error("APPEND with a wrong password succeeded")
	}
}

// With Options.Proxy the instance keeps no mail: a login passes to the
// server behind it, which checks the password, and the session is that
// server's.
func TestProxyInstance(t *testing.T) {
	store := dovecot.StartForTest(t, dovecot.Options{})
	proxy := dovecot.StartForTest(t, dovecot.Options{Proxy: store.IMAPAddr})
	if err := store.AddUser("p@x.test", "secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append("p@x.test", "secret", "INBOX", []byte("Subject: via proxy\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	st, err := proxy.Mailbox("p@x.test", "secret", "INBOX", true)
	if err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	if len(st.Messages) != 1 || !bytes.Contains(st.Messages[0].Body, []byte("via proxy")) {
		t.Fatalf("through the proxy: %+v", st.Messages)
	}
	if _, err := proxy.Login("p@x.test", "wrong"); err == nil {
		t.Fatal("the proxy let a wrong password in")
	}
}
