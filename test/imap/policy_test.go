package imape2e

// Before TLS on a listener that requires it: LOGINDISABLED, PRIVACYREQUIRED,
// and STARTTLS that cannot be used to smuggle cleartext commands into the
// TLS session (RFC 9051 §6.2.1, §6.2.3; RFC 8314).

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
)

// dovecotSawLogin reports whether Dovecot logged a successful login of user
// (imap-login's "Login: user=<...>" line; info_log_path is its log).
func dovecotSawLogin(t testing.TB, user string) bool {
	return dovecotLoginLine(t, user) != ""
}

// dovecotLoginLine returns Dovecot's login line for user, or "".
func dovecotLoginLine(t testing.TB, user string) string {
	for _, l := range strings.Split(backend(t).Log(), "\n") {
		if strings.Contains(l, "Login: user=<"+user+">") {
			return l
		}
	}
	return ""
}

func TestPreTLSPolicy(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	c := dialRaw(t, g.Addr("imap"))

	for _, src := range []struct{ what, line string }{
		{"greeting", c.Greeting},
		{"CAPABILITY", func() string { u, _ := c.Tagged("c1", "CAPABILITY"); return strings.Join(u, "\n") }()},
	} {
		caps := capsOf(src.line)
		if !hasCap(caps, "STARTTLS") || !hasCap(caps, "LOGINDISABLED") {
			t.Errorf("%s before TLS must offer STARTTLS and LOGINDISABLED: %q", src.what, src.line)
		}
		for _, c := range caps {
			if strings.HasPrefix(c, "AUTH=") {
				t.Errorf("%s before TLS offers %s", src.what, c)
			}
		}
	}
	for i, cmd := range []string{
		fmt.Sprintf("LOGIN %q %q", a.User, a.Pass),
		"AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+a.User+"\x00"+a.Pass)),
	} {
		tag := fmt.Sprintf("p%d", i)
		if _, st := c.Tagged(tag, cmd); !strings.HasPrefix(st, tag+" NO [PRIVACYREQUIRED]") {
			t.Errorf("%s before TLS: %q, want NO [PRIVACYREQUIRED]", strings.Fields(cmd)[0], st)
		}
	}
	if dovecotSawLogin(t, a.User) {
		t.Fatalf("credentials sent before TLS reached Dovecot")
	}

	c.startTLS(t)
	untagged, _ := c.Tagged("c2", "CAPABILITY")
	caps := capsOf(strings.Join(untagged, "\n"))
	if !hasCap(caps, "AUTH=PLAIN") || hasCap(caps, "LOGINDISABLED") || hasCap(caps, "STARTTLS") {
		t.Errorf("CAPABILITY after STARTTLS: %q, want AUTH=PLAIN and neither LOGINDISABLED nor STARTTLS", untagged)
	}
	if _, st := c.Tagged("l", fmt.Sprintf("LOGIN %q %q", a.User, a.Pass)); !strings.HasPrefix(st, "l OK [CAPABILITY ") {
		t.Fatalf("LOGIN after STARTTLS: %q", st)
	}
	// Dovecot's log process writes asynchronously: give it a moment.
	for deadline := time.Now().Add(5 * time.Second); !dovecotSawLogin(t, a.User); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot logged no login for %s: the checks above would prove nothing", a.User)
		}
	}
}

// TestStartTLSPipelinedNotExecuted: bytes a man in the middle appends after
// STARTTLS in cleartext are never executed as part of the TLS session.
func TestStartTLSPipelinedNotExecuted(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})

	t.Run("same segment", func(t *testing.T) {
		a := newAccount(t, domPlain)
		c := dialRaw(t, g.Addr("imap"))
		c.SendRaw(fmt.Sprintf("s1 STARTTLS\r\ns2 LOGIN %q %q\r\n", a.User, a.Pass))
		_, st := c.Until("s1")
		switch {
		case strings.HasPrefix(st, "s1 BAD"):
			// Refused: the connection stays cleartext, and the LOGIN is
			// answered as the cleartext command it is.
			if _, st2 := c.Until("s2"); !strings.HasPrefix(st2, "s2 NO [PRIVACYREQUIRED]") {
				t.Errorf("pipelined LOGIN after a refused STARTTLS: %q", st2)
			}
		case strings.HasPrefix(st, "s1 OK"):
			// Accepted: the pipelined bytes must have been discarded, so
			// the first reply inside TLS is to our first TLS command.
			c.StartTLS(harness.ClientTLS(t))
			if _, st2 := c.Tagged("s3", "NOOP"); !strings.HasPrefix(st2, "s3 OK") {
				t.Errorf("first reply over TLS: %q, want s3 OK (s2 must be discarded)", st2)
			}
		default:
			t.Fatalf("STARTTLS with a pipelined LOGIN: %q", st)
		}
		if dovecotSawLogin(t, a.User) || logHas(g, `"msg":"logged in, relaying"`, a.User) {
			t.Fatalf("the LOGIN pipelined after STARTTLS logged in")
		}
	})

	t.Run("after the OK, before the handshake", func(t *testing.T) {
		a := newAccount(t, domPlain)
		c := dialRaw(t, g.Addr("imap"))
		if _, st := c.Tagged("s1", "STARTTLS"); !strings.HasPrefix(st, "s1 OK") {
			t.Fatalf("STARTTLS: %q", st)
		}
		// Cleartext where the ClientHello belongs: the handshake fails and
		// the connection ends; the command is never read as a command.
		c.SendRaw(fmt.Sprintf("s2 LOGIN %q %q\r\n", a.User, a.Pass))
		for _, l := range c.DrainUntilClosed(10 * time.Second) {
			if strings.HasPrefix(l, "s2 ") {
				t.Errorf("the cleartext LOGIN was answered: %q", l)
			}
		}
		if dovecotSawLogin(t, a.User) || logHas(g, `"msg":"logged in, relaying"`, a.User) {
			t.Fatalf("cleartext sent in place of the TLS handshake logged in")
		}
	})
}

// TestNoCredentialsInLogs drives every path a password takes through
// mailgate (LOGIN quoted and as a literal, AUTHENTICATE PLAIN and LOGIN,
// wrong passwords, refusals before TLS, backends down or untrusted) with
// debug logging, then searches the logs for each password and its base64
// forms, which must never appear there. Every other test's gateway is
// searched too, at its cleanup, for the passwords registered with
// harness.Secret.
func TestNoCredentialsInLogs(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{BackendDial: 2 * time.Second})
	b64 := base64.StdEncoding.EncodeToString
	secret := func(a account) account {
		for _, s := range []string{b64([]byte(a.Pass)), b64([]byte("\x00" + a.User + "\x00" + a.Pass))} {
			harness.Secret(s)
		}
		return a
	}
	good := secret(newAccount(t, domPlain))
	wrong := secret(account{User: good.User, Pass: "wrong-" + randomHex(t, 10)})
	harness.Secret(wrong.Pass)
	down := secret(newAccount(t, domDown))
	untrusted := secret(newAccount(t, domUntrusted))

	type step struct{ send, expect string } // expect: "+" for a continuation, else the tagged reply's prefix
	for _, tc := range []struct {
		name, listener string
		a              account
		steps          []step
	}{
		{"LOGIN quoted", "imap-clear", good, []step{{fmt.Sprintf("t LOGIN %q %q\r\n", good.User, good.Pass), "t OK"}}},
		{"LOGIN literal", "imap-clear", good, []step{
			{fmt.Sprintf("t LOGIN %q {%d}\r\n", good.User, len(good.Pass)), "+"}, {good.Pass + "\r\n", "t OK"}}},
		{"AUTHENTICATE PLAIN", "imap-clear", good, []step{
			{"t AUTHENTICATE PLAIN " + b64([]byte("\x00"+good.User+"\x00"+good.Pass)) + "\r\n", "t OK"}}},
		{"AUTHENTICATE LOGIN", "imap-clear", good, []step{
			{"t AUTHENTICATE LOGIN\r\n", "+"}, {b64([]byte(good.User)) + "\r\n", "+"}, {b64([]byte(good.Pass)) + "\r\n", "t OK"}}},
		{"wrong password", "imap-clear", wrong, []step{
			{"t AUTHENTICATE PLAIN " + b64([]byte("\x00"+wrong.User+"\x00"+wrong.Pass)) + "\r\n", "t NO [AUTHENTICATIONFAILED]"}}},
		{"before TLS", "imap", good, []step{{fmt.Sprintf("t LOGIN %q %q\r\n", good.User, good.Pass), "t NO [PRIVACYREQUIRED]"}}},
		{"backend down", "imap-clear", down, []step{{fmt.Sprintf("t LOGIN %q %q\r\n", down.User, down.Pass), "t NO [UNAVAILABLE]"}}},
		{"backend untrusted", "imap-clear", untrusted, []step{
			{fmt.Sprintf("t LOGIN %q %q\r\n", untrusted.User, untrusted.Pass), "t NO [UNAVAILABLE]"}}},
	} {
		c := dialRaw(t, g.Addr(tc.listener))
		for _, s := range tc.steps {
			c.SendRaw(s.send)
			if s.expect == "+" {
				if l := c.Response(); !strings.HasPrefix(l, "+") {
					t.Fatalf("%s: want a continuation request, got %q", tc.name, l)
				}
				continue
			}
			if _, st := c.Until("t"); !strings.HasPrefix(st, s.expect) {
				t.Fatalf("%s: %q, want %s", tc.name, st, s.expect)
			}
		}
		c.Send("z LOGOUT")
		c.DrainUntilClosed(10 * time.Second)
	}
	// The logs do speak of these logins, so searching them means something.
	for _, a := range []account{good, down, untrusted} {
		if !logHas(g, a.User) {
			t.Errorf("no log entry names %s", a.User)
		}
	}
	g.CheckNoSecrets()
}
