package test

// POP3 sessions through mailgate against Dovecot: what happens when other
// IMAP clients change the mailbox mid-session, locking, STLS, implicit TLS,
// TOP, and TLS towards the backend.

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// A message expunged by an IMAP client after the snapshot answers -ERR on
// RETR (and TOP); the session goes on, and the other messages stay readable
// under their numbers (all access is by UID).
func TestExpungedMidSessionRetrErrSessionGoesOn(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	msgs := [][]byte{message("mid-1", "one\r\n"), message("mid-2", "two\r\n"), message("mid-3", "three\r\n")}
	uids := seed(t, a, msgs...)

	c := g.login(a)
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Fatalf("STAT = %d, %v; want 3", n, err)
	}
	if err := dovecotServer(t).Expunge(a.User, a.Pass, "INBOX", uids[1]); err != nil {
		t.Fatal(err)
	}
	_, err := c.Retr(2)
	var re *pop3client.ReplyError
	if !errors.As(err, &re) {
		t.Fatalf("RETR of a message expunged elsewhere: %v; want -ERR", err)
	}
	if _, err := c.Top(2, 0); !errors.As(err, &re) {
		t.Errorf("TOP of a message expunged elsewhere: %v; want -ERR", err)
	}
	// The session goes on: numbers are fixed, the others are intact.
	if err := c.Noop(); err != nil {
		t.Fatalf("NOOP after the failed RETR: %v", err)
	}
	for _, n := range []int{3, 1} {
		got, err := c.Retr(n)
		if err != nil {
			t.Fatalf("RETR %d: %v", n, err)
		}
		if !bytes.Equal(got, msgs[n-1]) {
			t.Errorf("RETR %d = %q, want %q", n, got, msgs[n-1])
		}
	}
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Errorf("STAT later in the session = %d, %v; want 3 (the snapshot is fixed)", n, err)
	}
	dele(t, c, 1)
	harness.Quit(t, c)
	if got, want := a.Inbox(t, false).UIDs(), []uint32{uids[2]}; !slices.Equal(got, want) {
		t.Errorf("backend UIDs %v, want %v", got, want)
	}
}

// A message appended mid-session is not in that session's maildrop (numbers
// are fixed when the maildrop opens, RFC 1939 §4); it appears in the next.
func TestAppendedMidSessionAppearsOnlyInNextSession(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	seed(t, a, message("app-1", "one\r\n"), message("app-2", "two\r\n"))

	c := g.login(a)
	_, size1, err := c.Stat()
	if err != nil {
		t.Fatal(err)
	}
	late := message("app-late", "arrived during the session\r\n")
	seed(t, a, late)
	if n, size, err := c.Stat(); err != nil || n != 2 || size != size1 {
		t.Errorf("STAT after another client's APPEND = %d %d, %v; want 2 %d", n, size, err, size1)
	}
	if list, err := c.UIDL(); err != nil || len(list) != 2 {
		t.Errorf("UIDL after another client's APPEND: %d entries, %v; want 2", len(list), err)
	}
	if _, err := c.Cmd("LIST 3"); err == nil {
		t.Error("LIST 3 succeeded in a session that opened with 2 messages")
	}
	if _, err := c.Retr(3); err == nil {
		t.Error("RETR 3 succeeded in a session that opened with 2 messages")
	}
	harness.Quit(t, c)

	c = g.loginEventually(a)
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Fatalf("next session: STAT = %d, %v; want 3", n, err)
	}
	if got, err := c.Retr(3); err != nil || !bytes.Equal(got, late) {
		t.Errorf("next session: RETR 3 = %q, %v; want %q", got, err, late)
	}
	c.Quit()
}

// A second session of the same user gets -ERR [IN-USE] (RFC 1939 §4, RFC
// 2449 §8.1.2) while the first holds the maildrop; the lock goes with the
// first session's QUIT.
func TestSecondSessionInUse(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	seed(t, a, message("lock", "x\r\n"))

	first := g.login(a)
	second := g.dial("pop3")
	err := second.Login(a.User, a.Pass)
	var re *pop3client.ReplyError
	if !errors.As(err, &re) || re.Code() != "IN-USE" {
		t.Fatalf("second concurrent login: %v; want -ERR [IN-USE]", err)
	}
	// The same over TLS and over AUTH PLAIN: the lock is per user, not per
	// listener or mechanism.
	third := g.dial("pop3s")
	if err := third.Login(a.User, a.Pass); !errors.As(err, &re) || re.Code() != "IN-USE" {
		t.Errorf("concurrent login on pop3s: %v; want -ERR [IN-USE]", err)
	}
	// The first session is unaffected.
	if _, err := first.Retr(1); err != nil {
		t.Errorf("the first session broke: %v", err)
	}
	harness.Quit(t, first)
	// Regression: the lock is released before QUIT is answered, so a
	// client that reconnects at once is not told [IN-USE].
	for i := 0; i < 20; i++ {
		c := g.dial("pop3")
		if err := c.Login(a.User, a.Pass); err != nil {
			t.Fatalf("login %d right after the previous session's QUIT: %v", i, err)
		}
		harness.Quit(t, c)
	}
}

// STLS (RFC 2595 §4): offered before login on the starttls listener,
// plaintext auth refused until then; after TLS, CAPA no longer offers STLS
// and login works.
func TestSTLSThenLogin(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	want := message("stls", "over TLS\r\n")
	seed(t, a, want)

	c := g.dial("pop3-stls")
	capa, err := c.Capa()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(capa, "STLS") {
		t.Errorf("CAPA before TLS = %q, want STLS", capa)
	}
	var re *pop3client.ReplyError
	if err := c.Login(a.User, a.Pass); !errors.As(err, &re) {
		t.Errorf("USER/PASS in cleartext on a starttls listener: %v; want -ERR", err)
	}
	if err := c.STLS(harness.ClientTLS(t)); err != nil {
		t.Fatal(err)
	}
	capa, err = c.Capa()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(capa, "STLS") {
		t.Errorf("CAPA after TLS still offers STLS: %q", capa)
	}
	if _, err := c.Cmd("STLS"); err == nil {
		t.Error("a second STLS was accepted")
	}
	if err := c.Login(a.User, a.Pass); err != nil {
		t.Fatalf("login after STLS: %v", err)
	}
	if got, err := c.Retr(1); err != nil || !bytes.Equal(got, want) {
		t.Errorf("RETR 1 over STLS = %q, %v", got, err)
	}
	harness.Quit(t, c)
}

// Implicit TLS (POP3S, RFC 8314) with a certificate the client verifies.
func TestPOP3SImplicitTLS(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	want := message("pop3s", "implicit TLS\r\n")
	seed(t, a, want)

	c := g.loginEventuallyOn("pop3s", a)
	if got, err := c.Retr(1); err != nil || !bytes.Equal(got, want) {
		t.Errorf("RETR 1 over POP3S = %q, %v", got, err)
	}
	harness.Quit(t, c)
}

// TOP n k (RFC 1939 §7): the header, the blank line, then k lines of the body
// (dot-stuffed like RETR); the whole message when k exceeds the body. TOP does
// not set \Seen; RETR does (pop3.mark_seen defaults to true).
func TestTopNK(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	header := "From: top@example.org\r\nSubject: top\r\n"
	body := "line 1\r\n.line 2 starts with a dot\r\nline 3\r\n.\r\nline 5\r\n"
	msg := []byte(header + "\r\n" + body)
	seed(t, a, msg, message("top-2", "other\r\n"))

	c := g.login(a)
	lines := strings.SplitAfter(body, "\r\n")
	for _, k := range []int{0, 1, 2, 4, 5, 100} {
		want := header + "\r\n" + strings.Join(lines[:min(k, 5)], "")
		got, err := c.Top(1, k)
		if err != nil {
			t.Errorf("TOP 1 %d: %v", k, err)
			continue
		}
		if string(got) != want {
			t.Errorf("TOP 1 %d = %q, want %q", k, got, want)
		}
	}
	var re *pop3client.ReplyError
	for _, bad := range []string{"TOP 1", "TOP 3 0", "TOP 0 1", "TOP 1 -1", "TOP x 1"} {
		if _, err := c.Cmd(bad); !errors.As(err, &re) {
			t.Errorf("%s: %v; want -ERR", bad, err)
		}
	}
	if got, err := c.Retr(2); err != nil || len(got) == 0 {
		t.Fatalf("RETR 2: %v", err)
	}
	harness.Quit(t, c)
	st := a.Inbox(t, false)
	if st.Messages[0].Has(imap.FlagSeen) {
		t.Error("TOP set \\Seen on message 1")
	}
	if !st.Messages[1].Has(imap.FlagSeen) {
		t.Error("RETR did not set \\Seen on message 2 (pop3.mark_seen defaults to true)")
	}
}

// mailgate reaches the backend over implicit TLS and over STARTTLS,
// verifying Dovecot's certificate against the configured CA.
func TestBackendTLS(t *testing.T) {
	dc := dovecotServer(t)
	for _, tc := range []struct{ name, backend string }{
		{"implicit", fmt.Sprintf("{address: %q, tls: implicit, ca: %q}", dc.IMAPSAddr, dc.CAFile)},
		{"starttls", fmt.Sprintf("{address: %q, tls: starttls, ca: %q}", dc.IMAPAddr, dc.CAFile)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, gwOptions{Backend: tc.backend})
			a := newAccount(t)
			want := message("backend-"+tc.name, "via TLS\r\n")
			seed(t, a, want)
			c := g.login(a)
			if got, err := c.Retr(1); err != nil || !bytes.Equal(got, want) {
				t.Errorf("RETR 1 = %q, %v", got, err)
			}
			harness.Quit(t, c)
		})
	}
	// A backend certificate the gateway cannot verify fails the login with
	// a temporary error, not an authentication failure.
	t.Run("unverified", func(t *testing.T) {
		g := startGateway(t, gwOptions{Backend: fmt.Sprintf("{address: %q, tls: implicit}", dc.IMAPSAddr)})
		a := newAccount(t)
		c := g.dial("pop3")
		err := c.Login(a.User, a.Pass)
		if code, _ := pop3client.ErrCode(err); code != "SYS/TEMP" {
			t.Errorf("login through a backend with an untrusted certificate: %v; want -ERR [SYS/TEMP]", err)
		}
	})
}

// A wrong password is -ERR [AUTH] (RFC 3206), and the right one works on the
// next connection.
func TestWrongPasswordThenRight(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	c := g.dial("pop3")
	err := c.Login(a.User, "not-"+a.Pass)
	var re *pop3client.ReplyError
	if !errors.As(err, &re) || re.Code() != "AUTH" {
		t.Errorf("wrong password: %v; want -ERR [AUTH]", err)
	}
	c.Close()
	g.loginEventually(a).Quit()
}
