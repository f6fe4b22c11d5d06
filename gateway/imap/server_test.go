package imap

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/gateway/internal/connlog"
	"mailgate/test/transcript"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// A cleartext listener without allow_plaintext_auth advertises STARTTLS and
// LOGINDISABLED, offers no AUTH= mechanism, and refuses every login with
// PRIVACYREQUIRED (RFC 9051 §6.2.3 and §7.2.2, RFC 8314).
func TestCleartextRefusesLoginWithPrivacyRequired(t *testing.T) {
	b := newFakeBackend(nil)
	cfg, _ := tlsConfig(t, b)
	cfg.BadCommandLimit = 10 // each refusal counts; this test makes three
	c := startPipe(t, cfg)
	g := c.Expect("* OK [CAPABILITY ")
	for _, want := range []string{"STARTTLS", "LOGINDISABLED"} {
		if !strings.Contains(g, want) {
			t.Errorf("greeting %q lacks %s", g, want)
		}
	}
	if strings.Contains(g, "AUTH=") {
		t.Errorf("greeting %q offers AUTH= before TLS", g)
	}
	c.Command("a LOGIN alice secret", "a NO [PRIVACYREQUIRED]")
	c.SendRaw("b AUTHENTICATE PLAIN " + b64("\x00alice\x00secret") + "\r\n")
	c.Expect("b NO [PRIVACYREQUIRED]")
	c.Command("c AUTHENTICATE LOGIN", "c NO [PRIVACYREQUIRED]")
	c.Send("d CAPABILITY")
	capLine := c.Expect("* CAPABILITY IMAP4rev1 ")
	if !strings.Contains(capLine, "LOGINDISABLED") || strings.Contains(capLine, "AUTH=") {
		t.Errorf("capability %q", capLine)
	}
	c.Expect("d OK")
	c.Command("e LOGOUT", "* BYE")
	c.Expect("e OK")
	c.ExpectClosed()
	if len(b.logins) != 0 {
		t.Fatal("credentials reached the backend over cleartext")
	}
}

func TestNotAuthenticatedCommands(t *testing.T) {
	cfg := testConfig(t, newFakeBackend(nil))
	cfg.BadCommandLimit = 10 // this test makes three mistakes on purpose
	c := startPipe(t, cfg)
	c.Expect("* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN] mailgate ready")
	c.Command("a NOOP", "a OK")
	c.Command("b SELECT INBOX", "b BAD Log in first")
	c.Command("c ID (\"name\" \"Thunderbird\" \"version\" NIL)", `* ID ("name" "mailgate")`)
	c.Expect("c OK")
	c.Command("d ID NIL", "* ID")
	c.Expect("d OK")
	c.Command("e STARTTLS", "e BAD STARTTLS not available")
	c.Command("f NOOP extra", "f BAD")
	c.Command("g LOGOUT", "* BYE")
	c.Expect("g OK")
	c.ExpectClosed()
}

func TestIDBounds(t *testing.T) {
	long := strings.Repeat("v", maxIDValueLen+1)
	var many strings.Builder
	for i := 0; i <= maxIDPairs; i++ {
		fmt.Fprintf(&many, `"k%d" "v" `, i)
	}
	tests := []struct{ name, args string }{
		{"value too long", `("name" "` + long + `")`},
		{"key too long", `("` + strings.Repeat("k", maxIDKeyLen+1) + `" "v")`},
		{"too many pairs", "(" + strings.TrimSpace(many.String()) + ")"},
		{"odd fields", `("name")`},
		{"not a list", `"name"`},
		{"atom key", `(name "x")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := greet(t, testConfig(t, newFakeBackend(nil)))
			c.SendRaw("a ID " + tt.args + "\r\n")
			c.Expect("a BAD")
		})
	}
}

// Every way to present credentials reaches the backend with the same user
// and password, and the client gets the backend's capabilities.
func TestLoginVariantsReachBackend(t *testing.T) {
	tests := []struct {
		name   string
		dialog func(c *transcript.Conn)
		user   string
		pass   string
	}{
		{"LOGIN atoms", func(c *transcript.Conn) { c.Send("a LOGIN alice secret") }, "alice", "secret"},
		{"LOGIN quoted", func(c *transcript.Conn) { c.SendRaw(`a LOGIN "alice@example.org" "p a\"s\\s"` + "\r\n") }, "alice@example.org", `p a"s\s`},
		{"LOGIN sync literals", func(c *transcript.Conn) {
			c.Command("a LOGIN {5}", "+ ")
			c.Command("alice {6}", "+ ")
			c.Send("pässw")
		}, "alice", "pässw"},
		{"LOGIN LITERAL+", func(c *transcript.Conn) { c.SendRaw("a LOGIN {5+}\r\nalice {2+}\r\n\"\\\r\n") }, "alice", `"\`},
		{"PLAIN SASL-IR", func(c *transcript.Conn) { c.SendRaw("a AUTHENTICATE PLAIN " + b64("\x00alice\x00secret") + "\r\n") }, "alice", "secret"},
		{"PLAIN authzid equal", func(c *transcript.Conn) {
			c.SendRaw("a AUTHENTICATE PLAIN " + b64("alice\x00alice\x00secret") + "\r\n")
		}, "alice", "secret"},
		{"PLAIN continuation", func(c *transcript.Conn) {
			c.Send("a authenticate plain")
			if l := c.Line(); l != "+ " {
				t.Fatalf("challenge %q, want empty", l)
			}
			c.SendRaw(b64("\x00alice\x00secret") + "\r\n")
		}, "alice", "secret"},
		{"LOGIN mechanism", func(c *transcript.Conn) {
			c.Command("a AUTHENTICATE LOGIN", "+ "+b64("Username:"))
			c.SendRaw(b64("alice") + "\r\n")
			c.Expect("+ " + b64("Password:"))
			c.SendRaw(b64("secret") + "\r\n")
		}, "alice", "secret"},
		{"LOGIN mechanism with initial response", func(c *transcript.Conn) {
			c.SendRaw("a AUTHENTICATE LOGIN " + b64("alice") + "\r\n")
			c.Expect("+ " + b64("Password:"))
			c.SendRaw(b64("secret") + "\r\n")
		}, "alice", "secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend(nil)
			c := greet(t, testConfig(t, b))
			tt.dialog(c)
			login := <-b.logins
			if login.User != tt.user || login.Password != tt.pass {
				t.Fatalf("backend got %q/%q, want %q/%q", login.User, login.Password, tt.user, tt.pass)
			}
			if login.Remote == nil {
				t.Error("Login.Remote is nil")
			}
			peer := <-b.peers
			defer peer.Close()
			c.Expect("a OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in")

			// Bytes pass both ways untouched.
			c.Send("b SELECT INBOX")
			pc := transcript.New(t, peer)
			pc.Expect("b SELECT INBOX")
			pc.SendRaw("* 3 EXISTS\r\nb OK [READ-WRITE] SELECT completed\r\n")
			c.Expect("* 3 EXISTS")
			c.Expect("b OK [READ-WRITE]")
		})
	}
}

func TestLoginFailures(t *testing.T) {
	tests := []struct {
		name    string
		backend error
		dialog  string
		want    string
	}{
		{"wrong password", fmt.Errorf("%w: login: NO", ErrAuthFailed), "a LOGIN alice wrong\r\n", "a NO [AUTHENTICATIONFAILED]"},
		{"backend down", fmt.Errorf("%w: dial 10.9.9.9:143: connection refused", ErrUnavailable), "a LOGIN alice x\r\n", "a NO [UNAVAILABLE]"},
		{"unexpected error", errors.New("routing: lookup 10.9.9.9 failed"), "a LOGIN alice x\r\n", "a NO [UNAVAILABLE]"},
		{"in use", ErrInUse, "a LOGIN alice x\r\n", "a NO [INUSE]"},
		{"authzid", nil, "a AUTHENTICATE PLAIN " + b64("bob\x00alice\x00x") + "\r\n", "a NO [AUTHORIZATIONFAILED]"},
		{"malformed PLAIN", nil, "a AUTHENTICATE PLAIN " + b64("alice-secret") + "\r\n", "a BAD"},
		{"bad base64 IR", nil, "a AUTHENTICATE PLAIN ***\r\n", "a BAD"},
		{"unknown mechanism", nil, "a AUTHENTICATE CRAM-MD5\r\n", "a NO"},
		{"LOGIN one arg", nil, "a LOGIN alice\r\n", "a BAD"},
		{"LOGIN list arg", nil, "a LOGIN (alice) x\r\n", "a BAD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend(tt.backend)
			c := greet(t, testConfig(t, b))
			c.SendRaw(tt.dialog)
			l := c.Expect(tt.want)
			if strings.Contains(l, "10.9.9.9") || strings.Contains(l, "routing") {
				t.Errorf("reply %q names the backend", l)
			}
			// The session goes on.
			c.Command("z NOOP", "z OK")
		})
	}
}

func TestAuthenticateCancel(t *testing.T) {
	b := newFakeBackend(nil)
	c := greet(t, testConfig(t, b))
	c.Command("a AUTHENTICATE PLAIN", "+ ")
	c.Command("*", "a BAD AUTHENTICATE cancelled")
	c.Command("b AUTHENTICATE LOGIN", "+ ")
	c.Command("not base64!", "b BAD")
	c.Command("c NOOP", "c OK")
	if len(b.logins) != 0 {
		t.Fatal("cancelled exchange reached the backend")
	}
}

func TestBadCommandLimitDisconnects(t *testing.T) {
	cfg := testConfig(t, newFakeBackend(fmt.Errorf("%w: no", ErrAuthFailed)))
	cfg.BadCommandLimit = 4
	endsAfterMistakes(t, cfg,
		[2]string{"a FETCH 1 BODY[]", "a BAD"},
		[2]string{"\x01\x02", "* BAD"},
		[2]string{"b LOGIN alice wrong", "b NO [AUTHENTICATIONFAILED]"},
		[2]string{"c LIST \"\" *", "c BAD"})
}

// endsAfterMistakes runs the steps (a command, the start of its reply) of a
// session with cfg; then the session must end: too many invalid commands.
func endsAfterMistakes(t *testing.T, cfg Config, steps ...[2]string) {
	t.Helper()
	c := greet(t, cfg)
	for _, st := range steps {
		c.Command(st[0], st[1])
	}
	c.Expect("* BYE Too many invalid commands")
	c.ExpectClosed()
}

// The default pre-login allowance is small (issue 11, finding 10): the third
// mistake ends the connection, as in Dovecot's login processes. A mail
// client errs once or twice; another protocol's client errs on every line.
func TestDefaultPreauthAllowanceIsThree(t *testing.T) {
	endsAfterMistakes(t, testConfig(t, newFakeBackend(nil)),
		[2]string{"EHLO attacker.example", "EHLO BAD"},
		[2]string{"a FETCH 1 BODY[]", "a BAD"},
		[2]string{"b NOOP", "b OK"}, // a good command does not reset the count, nor add to it
		[2]string{"MAIL FROM:<a@example.org>", "MAIL BAD"})
}

func TestLongLineDisconnects(t *testing.T) {
	c := greet(t, testConfig(t, newFakeBackend(nil)))
	go c.NetConn().Write([]byte(strings.Repeat("A", 100<<10))) // 100 KB of garbage, no LF
	c.Expect("* BYE Command too long")
	c.ExpectClosed()
}

func TestPreauthTimeout(t *testing.T) {
	cfg := testConfig(t, newFakeBackend(nil))
	cfg.PreauthTimeout = 150 * time.Millisecond
	c := greet(t, cfg)
	start := time.Now()
	c.Expect("* BYE Autologout")
	c.ExpectClosed()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

// Commands pipelined after LOGIN are the backend's (LITERAL+ clients send
// LOGIN and SELECT in one packet).
func TestPipelinedAfterLoginGoesToBackend(t *testing.T) {
	b := newFakeBackend(nil)
	c := greet(t, testConfig(t, b))
	peer := b.handoff(c.SendRaw, "a LOGIN alice secret\r\nb SELECT INBOX\r\n")
	defer peer.Close()
	c.Expect("a OK")
	transcript.New(t, peer).Expect("b SELECT INBOX")
}

// STARTTLS: fresh capabilities over TLS; nothing of the cleartext phase
// survives; LOGIN works afterwards.
func TestStartTLS(t *testing.T) {
	b := newFakeBackend(nil)
	cfg, pool := tlsConfig(t, b)
	c := greet(t, cfg)
	c.Command("a STARTTLS", "a OK Begin TLS")
	c.StartTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})
	tlsc := c
	tlsc.Send("b CAPABILITY")
	caps := tlsc.Expect("* CAPABILITY ")
	if strings.Contains(caps, "STARTTLS") || strings.Contains(caps, "LOGINDISABLED") || !strings.Contains(caps, "AUTH=PLAIN") {
		t.Fatalf("capabilities after TLS: %q", caps)
	}
	tlsc.Expect("b OK")
	tlsc.Command("c STARTTLS", "c BAD")
	peer := b.handoff(tlsc.Send, "d LOGIN alice secret")
	tlsc.Expect("d OK [CAPABILITY")
	peer.Close()
	tlsc.ExpectClosed()
}

// Bytes pipelined after STARTTLS are refused, never carried into TLS (the
// STARTTLS command injection; RFC 9051 §6.2.1 lets nothing of the cleartext
// phase survive): STARTTLS fails and they are answered as cleartext.
func TestStartTLSRefusesPipelinedCommands(t *testing.T) {
	b := newFakeBackend(nil)
	cfg, _ := tlsConfig(t, b)
	c := greet(t, cfg)
	c.SendRaw("a STARTTLS\r\nb LOGIN alice secret\r\n")
	c.Expect("a BAD STARTTLS must be the last command")
	c.Expect("b NO [PRIVACYREQUIRED]")
	c.Send("c CAPABILITY")
	if l := c.Expect("* CAPABILITY"); !strings.Contains(l, "STARTTLS") {
		t.Fatalf("STARTTLS still expected to be available: %q", l)
	}
	c.Expect("c OK")
	if len(b.logins) != 0 {
		t.Fatal("injected LOGIN reached the backend")
	}
}

func TestImplicitTLS(t *testing.T) {
	cfg, pool := tlsConfig(t, newFakeBackend(nil))
	cfg.ImplicitTLS = true
	c := startPipe(t, cfg) // a plain conn: Serve wraps it with TLSConfig
	c.StartTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})
	tlsc := c
	g := tlsc.Expect("* OK [CAPABILITY")
	if strings.Contains(g, "STARTTLS") || !strings.Contains(g, "AUTH=PLAIN") {
		t.Fatalf("greeting %q", g)
	}
	tlsc.Command("a LOGOUT", "* BYE")
	tlsc.Expect("a OK")
}

// Invariant 5: credentials never reach the logs, whatever happens.
func TestCredentialsNeverLogged(t *testing.T) {
	for _, berr := range []error{nil, fmt.Errorf("%w: NO", ErrAuthFailed), ErrUnavailable} {
		core, logs := observer.New(zap.DebugLevel)
		b := newFakeBackend(berr)
		cfg := testConfig(t, b)
		cfg.Logger = zap.New(core)
		c := greet(t, cfg)
		c.Send("x1 LOGIN alice Sup3rSecr3t")
		if berr == nil {
			<-b.peers
			c.Expect("x1 OK")
			c.NetConn().Close()
		} else {
			c.Expect("x1 NO")
			c.SendRaw("x2 AUTHENTICATE PLAIN " + b64("\x00alice\x00Sup3rSecr3t") + "\r\n")
			c.Expect("x2 NO")
			c.Command("x3 LOGOUT", "* BYE")
			c.Expect("x3 OK")
		}
		c.ExpectClosed()
		time.Sleep(20 * time.Millisecond)
		for _, e := range logs.All() {
			line := fmt.Sprint(e.Message, e.ContextMap())
			if strings.Contains(line, "Sup3rSecr3t") || strings.Contains(line, b64("\x00alice\x00Sup3rSecr3t")) {
				t.Fatalf("log entry contains the password: %s", line)
			}
		}
		if logs.Len() == 0 {
			t.Fatal("nothing logged: the check proves nothing")
		}
	}
}

// A PROXY protocol header reaching the IMAP front comes from a peer the
// listener does not trust: it is refused and the connection closed.
func TestProxyHeaderFromUntrustedPeerRefused(t *testing.T) {
	c := greet(t, testConfig(t, newFakeBackend(nil)))
	c.Command("PROXY TCP4 203.0.113.9 127.0.0.1 4000 143", "* BYE PROXY protocol not accepted")
	c.ExpectClosed()
}

// Every way a session ends logs one "session end" line whose result is one
// of connlog's values, the same vocabulary as POP3's.
func TestSessionEndResults(t *testing.T) {
	_, cert := testCert(t)
	tests := []struct {
		name   string
		mod    func(*Config)
		run    func(t *testing.T, c *transcript.Conn, b *fakeBackend)
		result connlog.Result
	}{
		{"logout", nil, func(t *testing.T, c *transcript.Conn, _ *fakeBackend) {
			c.Command("a LOGOUT", "* BYE")
			c.Expect("a OK")
			c.ExpectClosed()
		}, connlog.Logout},
		{"dropped", nil, func(t *testing.T, c *transcript.Conn, _ *fakeBackend) { c.NetConn().Close() }, connlog.Dropped},
		{"preauth timeout", func(cfg *Config) { cfg.PreauthTimeout = 150 * time.Millisecond },
			func(t *testing.T, c *transcript.Conn, _ *fakeBackend) {
				c.Expect("* BYE Autologout")
				c.ExpectClosed()
			}, connlog.PreauthTimeout},
		{"too many bad commands", func(cfg *Config) { cfg.BadCommandLimit = 1 },
			func(t *testing.T, c *transcript.Conn, _ *fakeBackend) {
				c.Command("a FETCH 1 BODY[]", "a BAD")
				c.Expect("* BYE Too many invalid commands")
				c.ExpectClosed()
			}, connlog.TooManyBadCommands},
		{"command too long", nil, func(t *testing.T, c *transcript.Conn, _ *fakeBackend) {
			go c.NetConn().Write([]byte(strings.Repeat("A", 100<<10)))
			c.Expect("* BYE Command too long")
			c.ExpectClosed()
		}, connlog.CommandTooLong},
		{"proxy refused", nil, func(t *testing.T, c *transcript.Conn, _ *fakeBackend) {
			c.Command("PROXY TCP4 203.0.113.9 127.0.0.1 4000 143", "* BYE")
			c.ExpectClosed()
		}, connlog.ProxyRefused},
		{"STARTTLS handshake failed", func(cfg *Config) { cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}} },
			func(t *testing.T, c *transcript.Conn, _ *fakeBackend) {
				c.Command("a STARTTLS", "a OK")
				c.Send("not a TLS ClientHello")
				c.ExpectClosed()
			}, connlog.TLSFailed},
		{"backend closed", nil, func(t *testing.T, c *transcript.Conn, b *fakeBackend) {
			peer := b.handoff(c.Send, "a LOGIN alice secret")
			c.Expect("a OK")
			peer.Close()
			c.ExpectClosed()
		}, connlog.BackendClosed},
		{"client closed after login", nil, func(t *testing.T, c *transcript.Conn, b *fakeBackend) {
			peer := b.handoff(c.Send, "a LOGIN alice secret")
			t.Cleanup(func() { peer.Close() }) // after the check: the client must close first
			c.Expect("a OK")
			c.NetConn().Close() // net.Pipe cannot pass a half-close on
		}, connlog.ClientClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			b := newFakeBackend(nil)
			cfg := testConfig(t, b)
			cfg.Logger = zap.New(core)
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			c := greet(t, cfg)
			tt.run(t, c, b)
			deadline := time.Now().Add(5 * time.Second)
			for logs.FilterMessage("session end").Len() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			ends := logs.FilterMessage("session end")
			if ends.Len() != 1 || ends.FilterField(tt.result.Field()).Len() != 1 {
				t.Fatalf("session end lines %v, want one with result %s", ends.All(), tt.result)
			}
		})
	}
}

// Connection ids come from one process-wide counter: two servers (two
// listeners) never hand out the same one.
func TestConnectionIDsAreProcessWide(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	for range 2 {
		cfg := testConfig(t, newFakeBackend(nil))
		cfg.Logger = zap.New(core)
		c := startPipe(t, cfg) // a new Server each time
		c.Expect("* OK")
		c.Command("a LOGOUT", "* BYE")
		c.Expect("a OK")
		c.ExpectClosed()
	}
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessage("session end").Len() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ends := logs.FilterMessage("session end").All()
	if len(ends) != 2 {
		t.Fatalf("%d session end lines, want 2", len(ends))
	}
	if a, b := ends[0].ContextMap()["conn"], ends[1].ContextMap()["conn"]; a == b {
		t.Fatalf("both servers logged conn %v", a)
	}
}

// TestLoginLiteralRefusedWithoutContinuation: finding 6 of the hostile
// internet issue. Under LOGINDISABLED a LOGIN whose user name or password
// comes as a synchronizing literal is answered NO [PRIVACYREQUIRED] at
// once, never "+ Ready for literal data" (RFC 9051 §7.5: the client then
// must not send the literal). With TLS (or allow_plaintext_auth) the same
// command gets its continuation.
func TestLoginLiteralRefusedWithoutContinuation(t *testing.T) {
	b := newFakeBackend(nil)
	cfg, _ := tlsConfig(t, b)
	c := startPipe(t, cfg)
	c.Expect("* OK [CAPABILITY ")
	c.Send("a LOGIN {5}")
	if l := c.Line(); l != "a NO [PRIVACYREQUIRED] Use STARTTLS (or port 993) before logging in" {
		t.Fatalf("LOGIN with a literal under LOGINDISABLED: %q, want NO [PRIVACYREQUIRED] without a continuation", l)
	}
	c.Send(`b LOGIN alice {6}`)
	if l := c.Line(); !strings.HasPrefix(l, "b NO [PRIVACYREQUIRED]") {
		t.Fatalf("LOGIN with a password literal under LOGINDISABLED: %q", l)
	}
	c.Command("c NOOP", "c OK")
	c.Command("d LOGOUT", "* BYE")
	c.Expect("d OK")
	if len(b.logins) != 0 {
		t.Fatal("credentials reached the backend over cleartext")
	}

	cfg = testConfig(t, newFakeBackend(nil)) // plaintext allowed
	c = greet(t, cfg)
	c.Command("a LOGIN {5}", "+ ")
	c.Command(`alice "secret"`, "a OK")
}

// TestEmptyPasswordNeverReachesTheBackend: finding 7. LOGIN with "" and
// AUTHENTICATE PLAIN with an empty password are refused locally, as a wrong
// password: an LDAP-bind backend could take them as an anonymous bind.
func TestEmptyPasswordNeverReachesTheBackend(t *testing.T) {
	for _, tc := range []struct{ name, cmd string }{
		{"LOGIN quoted", `a LOGIN alice ""`},
		{"LOGIN literal+", "a LOGIN alice {0+}\r\n"},
		{"LOGIN empty user", `a LOGIN "" secret`},
		{"AUTHENTICATE PLAIN", "a AUTHENTICATE PLAIN " + b64("\x00alice\x00")},
		{"AUTHENTICATE PLAIN authzid only", "a AUTHENTICATE PLAIN " + b64("alice\x00alice\x00")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBackend(nil)
			c := greet(t, testConfig(t, b))
			c.SendRaw(tc.cmd + "\r\n")
			c.Expect("a NO [AUTHENTICATIONFAILED]")
			c.Command("z LOGOUT", "* BYE")
			c.Expect("z OK")
			if len(b.logins) != 0 {
				t.Errorf("%s: an empty password reached the backend", tc.name)
			}
		})
	}
}

// A login refused for lack of TLS is logged once per session, with the user
// and the reason.
func TestPlaintextRefusalLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	cfg := testConfig(t, newFakeBackend(nil))
	cfg.AllowPlaintextAuth = false
	cfg.Logger = zap.New(core)
	c := greet(t, cfg)
	c.Command(`a LOGIN "alice" "secret"`, "a NO [PRIVACYREQUIRED]")
	c.Command(`b LOGIN "alice" "secret"`, "b NO [PRIVACYREQUIRED]")
	c.Command("c LOGOUT", "* BYE")
	c.Expect("c OK")
	refusals := logs.FilterMessage("login refused: no TLS")
	if refusals.Len() != 1 {
		t.Fatalf("%d refusal lines, want 1", refusals.Len())
	}
	if m := refusals.All()[0].ContextMap(); m["user"] != "alice" || m["reason"] != "LOGIN before TLS" {
		t.Fatalf("refusal line %v", m)
	}
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), "secret") {
			t.Fatalf("a log line carries the password: %v", e.ContextMap())
		}
	}
}

// TestMaximalIDAccepted: RFC 2971's largest ID (30 pairs, 30-octet keys,
// 1024-octet values), as one line of quoted strings with every octet
// escaped, as LITERAL+ and as synchronizing literals, is answered OK, and
// the session goes on (finding 8 of issue 11: it was "* BYE Command too
// long").
func TestMaximalIDAccepted(t *testing.T) {
	b := newFakeBackend(nil)
	c := greet(t, testConfig(t, b))

	var q strings.Builder
	q.WriteString("q ID (")
	for i := range maxIDPairs {
		if i > 0 {
			q.WriteByte(' ')
		}
		q.WriteString(transcript.QuoteIMAP(transcript.MaximalIDKey(i)) + " " + transcript.QuoteIMAP(transcript.MaximalIDValue()))
	}
	q.WriteString(")")
	if n := len(q.String()); n <= 16<<10 || n > maxLine {
		t.Fatalf("quoted ID of %d octets: want over the old 16 KiB cap and within maxLine %d", n, maxLine)
	}
	c.Command(q.String(), `* ID ("name" "mailgate")`)
	c.Expect("q OK ID completed")

	// LITERAL+: the whole command at once.
	var l strings.Builder
	l.WriteString("l ID (")
	for i := range maxIDPairs {
		if i > 0 {
			l.WriteByte(' ')
		}
		k, v := transcript.MaximalIDKey(i), transcript.MaximalIDValue()
		l.WriteString("{" + strconv.Itoa(len(k)) + "+}\r\n" + k + " {" + strconv.Itoa(len(v)) + "+}\r\n" + v)
	}
	l.WriteString(")\r\n")
	c.SendRaw(l.String())
	c.Expect(`* ID ("name" "mailgate")`)
	c.Expect("l OK ID completed")

	// Synchronizing literals: one continuation request per literal.
	c.SendRaw("s ID (")
	for i := range maxIDPairs {
		sep := " "
		if i == 0 {
			sep = ""
		}
		k, v := transcript.MaximalIDKey(i), transcript.MaximalIDValue()
		c.SendRaw(sep + "{" + strconv.Itoa(len(k)) + "}\r\n")
		c.Expect("+ ")
		c.SendRaw(k + " {" + strconv.Itoa(len(v)) + "}\r\n")
		c.Expect("+ ")
		c.SendRaw(v)
	}
	c.SendRaw(")\r\n")
	c.Expect(`* ID ("name" "mailgate")`)
	c.Expect("s OK ID completed")

	c.Command("a LOGIN alice secret", "a OK")
	if len(b.logins) != 1 {
		t.Fatalf("backend saw %d logins, want 1", len(b.logins))
	}
}

// TestOverlongIDStillBounded: one line past maxLine still ends the session.
func TestOverlongIDStillBounded(t *testing.T) {
	c := greet(t, testConfig(t, newFakeBackend(nil)))
	go c.NetConn().Write([]byte("a ID (\"k\" \"" + strings.Repeat("v", maxLine) + "\")\r\n"))
	c.Expect("* BYE Command too long")
	c.ExpectClosed()
}

// TestLongUserNameRefusedLocally: a user name over 255 octets (LOGIN quoted
// and as a literal, AUTHENTICATE PLAIN and LOGIN) is answered as a wrong
// password without reaching the Backend, and counts as a failure of the
// connection (issue 11, finding 5).
func TestLongUserNameRefusedLocally(t *testing.T) {
	b := newFakeBackend(nil)
	cfg := testConfig(t, b)
	cfg.BadCommandLimit = 4
	c := greet(t, cfg)
	long := strings.Repeat("u", 256)
	c.Command("a LOGIN "+long+" secret", "a NO [AUTHENTICATIONFAILED]")
	c.SendRaw("b LOGIN {8000+}\r\n" + strings.Repeat("x", 8000) + " secret\r\n")
	c.Expect("b NO [AUTHENTICATIONFAILED]")
	c.Command("c AUTHENTICATE PLAIN "+b64("\x00"+long+"\x00secret"), "c NO [AUTHENTICATIONFAILED]")
	c.Command("d AUTHENTICATE LOGIN", "+ ")
	c.Command(b64(long), "+ ")
	c.Command(b64("secret"), "d NO [AUTHENTICATIONFAILED]")
	c.Expect("* BYE Too many invalid commands")
	c.ExpectClosed()
	select {
	case l := <-b.logins:
		t.Fatalf("a %d-octet user name reached the backend", len(l.User))
	default:
	}

	// 255 octets is still a user name.
	c = greet(t, testConfig(t, b))
	c.Command("a LOGIN "+strings.Repeat("u", 255)+" secret", "a OK")
	if l := <-b.logins; len(l.User) != 255 {
		t.Fatalf("backend got a %d-octet name", len(l.User))
	}
}

// TestHTTPRequestEndsConnection: an HTTP request line as a pre-auth command
// closes the connection at once, unanswered, logged with result
// protocol_mismatch (issue 11, finding 10: ALPACA).
func TestHTTPRequestEndsConnection(t *testing.T) {
	for _, line := range []string{"GET / HTTP/1.1", "POST /login HTTP/1.1", "HEAD ", "CONNECT mail.example.org:443 HTTP/1.1", "OPTIONS * HTTP/1.1", "PUT /x HTTP/1.1"} {
		t.Run(line, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			cfg := testConfig(t, newFakeBackend(nil))
			cfg.Logger = zap.New(core)
			c := greet(t, cfg)
			c.Command("a NOOP", "a OK")
			go c.NetConn().Write([]byte(line + "\r\nHost: mail.example.org\r\n\r\n"))
			c.ExpectClosed()
			deadline := time.Now().Add(5 * time.Second)
			for logs.FilterMessage("session end").Len() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if ends := logs.FilterMessage("session end"); ends.Len() != 1 || ends.FilterField(connlog.ProtocolMismatch.Field()).Len() != 1 {
				t.Fatalf("session end lines %v, want one with result %s", ends.All(), connlog.ProtocolMismatch)
			}
		})
	}
	// An IMAP tag that only starts like a method is IMAP.
	c := greet(t, testConfig(t, newFakeBackend(nil)))
	c.Command("GETX NOOP", "GETX OK")
}
