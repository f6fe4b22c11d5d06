package imape2e

// The backend leg: TLS to Dovecot (verified), backends that are down, hang
// or present a certificate nobody vouches for, and forward_client_ip.

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/loopback"
	"mailgate/test/syncbuf"
)

// TestBackendUnavailable: a backend that refuses connections or never
// greets costs the client at most backend_dial, then NO [UNAVAILABLE]
// that does not name the backend; the client may try again. Not parallel:
// it measures time.
func TestBackendUnavailable(t *testing.T) {
	g := startGateway(t, gwOptions{BackendDial: time.Second})
	for _, dom := range []string{domDown, domSilent} {
		t.Run(dom, func(t *testing.T) {
			a := newAccount(t, dom)
			c := dialRaw(t, g.Addr("imap-clear"))
			for i := range 2 {
				tag := fmt.Sprintf("u%d", i)
				start := time.Now()
				_, st := c.Tagged(tag, fmt.Sprintf("LOGIN %q %q", a.User, a.Pass))
				took := time.Since(start)
				if !strings.HasPrefix(st, tag+" NO [UNAVAILABLE]") {
					t.Fatalf("LOGIN with the backend %s: %q, want NO [UNAVAILABLE]", dom, st)
				}
				if took >= 2*time.Second {
					t.Errorf("NO [UNAVAILABLE] took %v with backend_dial 1s", took)
				}
				if strings.Contains(st, "127.0.0.1") || strings.Contains(strings.ToLower(st), "dial") {
					t.Errorf("the reply names the backend or the error: %q", st)
				}
			}
			if !logHas(g, `"msg":"imap backend unavailable"`, a.User) {
				t.Errorf("no warning logged for the unavailable backend")
			}
		})
	}
}

// TestBackendTLS: mailgate reaches Dovecot over STARTTLS and over implicit
// TLS, verifying its certificate with the configured CA; with the system
// roots instead, the same certificate is refused. Taps in front of Dovecot
// show that nothing but the STARTTLS exchange crossed in cleartext (Dovecot's
// own log cannot tell: it calls every loopback connection "secured").
func TestBackendTLS(t *testing.T) {
	t.Parallel()
	d := backend(t)
	taps := map[string]*tap{}
	via := map[string]string{}
	for name, target := range map[string]string{"starttls": d.IMAPAddr, "implicit": d.IMAPSAddr} {
		taps[name], via[name] = startTap(t, target)
	}
	g := startGateway(t, gwOptions{Via: via})
	for _, tc := range []struct{ dom, tap string }{
		{domStartTLS, "starttls"},
		{domImplicit, "implicit"},
		{domPlain, ""},
	} {
		t.Run(tc.dom, func(t *testing.T) {
			a := newAccount(t, tc.dom)
			msgs := [][]byte{message("backend-tls", strings.Repeat("over TLS to the backend\r\n", 500))}
			uids := seed(t, a, "INBOX", msgs...)
			c := dialClientPlain(t, g.Addr("imap-clear"), nil)
			if err := c.Login(a.User, a.Pass).Wait(); err != nil {
				t.Fatalf("LOGIN: %v", err)
			}
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				t.Fatal(err)
			}
			wantBodies(t, fetchBodies(t, c, uids...), uids, msgs)
			c.Logout().Wait()
			if tc.tap == "" {
				return
			}
			sent := taps[tc.tap].String()
			if tc.tap == "starttls" {
				// Up to and including the STARTTLS command in clear (RFC
				// 9051 §6.2.1), then a TLS handshake record.
				i := strings.Index(sent, " STARTTLS\r\n")
				if i < 0 {
					t.Fatalf("no STARTTLS in what mailgate sent: %.200q", sent)
				}
				sent = sent[i+len(" STARTTLS\r\n"):]
			}
			if len(sent) == 0 || sent[0] != 0x16 {
				t.Fatalf("mailgate's bytes to the %s backend do not start a TLS handshake: %.200q", tc.tap, sent)
			}
			for _, clear := range []string{a.User, "LOGIN", "AUTHENTICATE", "SELECT"} {
				if strings.Contains(sent, clear) {
					t.Errorf("%q crossed to the %s backend in cleartext", clear, tc.tap)
				}
			}
		})
	}

	t.Run("untrusted certificate", func(t *testing.T) {
		a := newAccount(t, domUntrusted)
		c := dialRaw(t, g.Addr("imap-clear"))
		if _, st := c.Tagged("u", fmt.Sprintf("LOGIN %q %q", a.User, a.Pass)); !strings.HasPrefix(st, "u NO [UNAVAILABLE]") {
			t.Fatalf("LOGIN with a backend certificate from an unknown CA: %q, want NO [UNAVAILABLE]", st)
		}
		if !logHas(g, `"msg":"imap backend unavailable"`, a.User, "certificate signed by unknown authority") {
			t.Errorf("the log does not say why: want the x509 error")
		}
		if dovecotSawLogin(t, a.User) {
			t.Errorf("the password went to a backend whose certificate failed verification")
		}
	})
}

// tap records what mailgate sends through a TCP relay in front of Dovecot.
type tap = syncbuf.Buffer

// startTap listens on loopback and relays every connection to target.
func startTap(t *testing.T, target string) (*tap, string) {
	t.Helper()
	tp := &tap{}
	return tp, loopback.Serve(t, func(front net.Conn) {
		back, err := net.DialTimeout("tcp", target, ioTimeout)
		if err != nil {
			front.Close()
			return
		}
		done := make(chan struct{})
		go func() { io.Copy(front, back); front.Close(); close(done) }()
		io.Copy(back, io.TeeReader(front, tp))
		back.Close()
		<-done
	})
}

// TestForwardClientIP: with forward_client_ip, mailgate sends Dovecot an ID
// with the client's address and port before logging in, and the login
// works. Whether Dovecot believes it depends on its login_trusted_networks,
// which test/dovecot does not set (it would also show nothing here: client
// and mailgate are both 127.0.0.1), so the ID is checked on the wire.
func TestForwardClientIP(t *testing.T) {
	t.Parallel()
	tp, tapAddr := startTap(t, backend(t).IMAPAddr)
	g := startGateway(t, gwOptions{Via: map[string]string{"forward": tapAddr}})
	a := newAccount(t, domForward)
	seed(t, a, "INBOX", message("forward", "hello\r\n"))

	c := dialRaw(t, g.Addr("imap-clear"))
	_, port, _ := net.SplitHostPort(c.NetConn().LocalAddr().String())
	if _, st := c.Tagged("l", fmt.Sprintf("LOGIN %q %q", a.User, a.Pass)); !strings.HasPrefix(st, "l OK") {
		t.Fatalf("LOGIN with forward_client_ip: %q", st)
	}
	if _, st := c.Tagged("s", "SELECT INBOX"); !strings.HasPrefix(st, "s OK") {
		t.Fatalf("SELECT: %q", st)
	}
	sent := tp.String()
	_, gwPort, _ := net.SplitHostPort(g.Addr("imap-clear"))
	want := fmt.Sprintf(` ID ("x-originating-ip" "127.0.0.1" "x-originating-port" %q "x-connected-ip" "127.0.0.1" "x-connected-port" %q)`+"\r\n", port, gwPort)
	id := strings.Index(sent, want)
	login := strings.Index(sent, " AUTHENTICATE PLAIN ")
	if id < 0 || login < 0 || id > login {
		t.Fatalf("mailgate sent Dovecot (ID at %d, login at %d, want ID first):\n%s", id, login, redact(sent, a))
	}
	if !strings.Contains(sent[login:], " SELECT INBOX\r\n") {
		t.Errorf("the client's SELECT did not pass through the tap")
	}
}

// redact hides an account's password, plain and in an AUTHENTICATE PLAIN
// blob, in a transcript printed by a failing test.
func redact(s string, a account) string {
	blob := base64.StdEncoding.EncodeToString([]byte("\x00" + a.User + "\x00" + a.Pass))
	return strings.NewReplacer(a.Pass, "<password>", blob, "<AUTHENTICATE PLAIN blob>").Replace(s)
}

// TestGarbagePreauthDoesNotDisturbOthers: clients sending 100 KB of garbage
// before login are disconnected, while a logged-in session and new logins
// carry on (a hostile client costs bounded memory and disturbs no other
// session).
func TestGarbagePreauthDoesNotDisturbOthers(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	msgs := [][]byte{message("steady", strings.Repeat("steady body line\r\n", 2000))}
	uids := seed(t, a, "INBOX", msgs...)

	steady := dialClientPlain(t, g.Addr("imap-clear"), nil)
	if err := steady.Login(a.User, a.Pass).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := steady.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	random := make([]byte, 100<<10)
	for i := range random {
		random[i] = byte(i*7919 + i>>8) // every byte value, newlines among them
	}
	garbage := map[string][]byte{
		"binary":        random,
		"one long line": bytes.Repeat([]byte("A"), 100<<10),
		"huge literal":  append([]byte("g LOGIN {102400}\r\n"), bytes.Repeat([]byte("x"), 100<<10)...),
		"many commands": bytes.Repeat([]byte("g FETCH 1:* BODY[]\r\n"), 100<<10/20),
	}
	var wg sync.WaitGroup
	for name, junk := range garbage {
		for _, listener := range []string{"imap-clear", "imap"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := net.DialTimeout("tcp", g.Addr(listener), ioTimeout)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				defer conn.Close()
				// The server may hang up before all is written: fine.
				go func() {
					conn.SetWriteDeadline(time.Now().Add(ioTimeout))
					conn.Write(junk)
				}()
				conn.SetReadDeadline(time.Now().Add(ioTimeout))
				if _, err := io.Copy(io.Discard, conn); err != nil && !isReset(err) {
					t.Errorf("%s on %s: not disconnected within %v: %v", name, listener, ioTimeout, err)
				}
			}()
		}
	}
	// Meanwhile the logged-in session works, repeatedly.
	for range 5 {
		wantBodies(t, fetchBodies(t, steady, uids...), uids, msgs)
		if err := steady.Noop().Wait(); err != nil {
			t.Fatalf("NOOP during the garbage: %v", err)
		}
	}
	wg.Wait()
	// And after it a new client logs in as usual.
	fresh := dialClientPlain(t, g.Addr("imap-clear"), nil)
	if err := fresh.Login(a.User, a.Pass).Wait(); err != nil {
		t.Fatalf("LOGIN after the garbage: %v", err)
	}
	sel, err := fresh.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatalf("SELECT after the garbage: %v", err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("SELECT after the garbage: %d messages, want 1", sel.NumMessages)
	}
	wantBodies(t, fetchBodies(t, steady, uids...), uids, msgs)
}

// isReset tells a connection reset (the server closed with unread input
// pending, which makes the kernel send RST) from a real failure.
func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset by peer")
}
