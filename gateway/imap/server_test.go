package imap

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/gateway/internal/connlog"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// A cleartext listener without allow_plaintext_auth advertises STARTTLS and
// LOGINDISABLED, offers no AUTH= mechanism, and refuses every login with
// PRIVACYREQUIRED (RFC 9051 §6.2.3 and §7.2.2, RFC 8314).
func TestCleartextRefusesLoginWithPrivacyRequired(t *testing.T) {
	_, cert, _ := testCert(t)
	b := newFakeBackend(nil)
	cfg := testConfig(t, b)
	cfg.AllowPlaintextAuth = false
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	c := startPipe(t, cfg)
	g := c.expect("* OK [CAPABILITY ")
	for _, want := range []string{"STARTTLS", "LOGINDISABLED"} {
		if !strings.Contains(g, want) {
			t.Errorf("greeting %q lacks %s", g, want)
		}
	}
	if strings.Contains(g, "AUTH=") {
		t.Errorf("greeting %q offers AUTH= before TLS", g)
	}
	c.send("a LOGIN alice secret\r\n")
	c.expect("a NO [PRIVACYREQUIRED]")
	c.send("b AUTHENTICATE PLAIN " + b64("\x00alice\x00secret") + "\r\n")
	c.expect("b NO [PRIVACYREQUIRED]")
	c.send("c AUTHENTICATE LOGIN\r\n")
	c.expect("c NO [PRIVACYREQUIRED]")
	c.send("d CAPABILITY\r\n")
	capLine := c.expect("* CAPABILITY IMAP4rev1 ")
	if !strings.Contains(capLine, "LOGINDISABLED") || strings.Contains(capLine, "AUTH=") {
		t.Errorf("capability %q", capLine)
	}
	c.expect("d OK")
	c.send("e LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("e OK")
	c.expectClosed()
	if len(b.logins) != 0 {
		t.Fatal("credentials reached the backend over cleartext")
	}
}

func TestNotAuthenticatedCommands(t *testing.T) {
	c := startPipe(t, testConfig(t, newFakeBackend(nil)))
	c.expect("* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN] mailgate ready")
	c.send("a NOOP\r\n")
	c.expect("a OK")
	c.send("b SELECT INBOX\r\n")
	c.expect("b BAD Log in first")
	c.send("c ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n")
	c.expect(`* ID ("name" "mailgate")`)
	c.expect("c OK")
	c.send("d ID NIL\r\n")
	c.expect("* ID")
	c.expect("d OK")
	c.send("e STARTTLS\r\n")
	c.expect("e BAD STARTTLS not available")
	c.send("f NOOP extra\r\n")
	c.expect("f BAD")
	c.send("g LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("g OK")
	c.expectClosed()
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
			c := startPipe(t, testConfig(t, newFakeBackend(nil)))
			c.expect("* OK")
			c.send("a ID " + tt.args + "\r\n")
			c.expect("a BAD")
		})
	}
}

// Every way to present credentials reaches the backend with the same user
// and password, and the client gets the backend's capabilities.
func TestLoginVariantsReachBackend(t *testing.T) {
	tests := []struct {
		name   string
		dialog func(c *testClient)
		user   string
		pass   string
	}{
		{"LOGIN atoms", func(c *testClient) { c.send("a LOGIN alice secret\r\n") }, "alice", "secret"},
		{"LOGIN quoted", func(c *testClient) { c.send(`a LOGIN "alice@example.org" "p a\"s\\s"` + "\r\n") }, "alice@example.org", `p a"s\s`},
		{"LOGIN sync literals", func(c *testClient) {
			c.send("a LOGIN {5}\r\n")
			c.expect("+ ")
			c.send("alice {6}\r\n")
			c.expect("+ ")
			c.send("pässw\r\n")
		}, "alice", "pässw"},
		{"LOGIN LITERAL+", func(c *testClient) { c.send("a LOGIN {5+}\r\nalice {2+}\r\n\"\\\r\n") }, "alice", `"\`},
		{"PLAIN SASL-IR", func(c *testClient) { c.send("a AUTHENTICATE PLAIN " + b64("\x00alice\x00secret") + "\r\n") }, "alice", "secret"},
		{"PLAIN authzid equal", func(c *testClient) { c.send("a AUTHENTICATE PLAIN " + b64("alice\x00alice\x00secret") + "\r\n") }, "alice", "secret"},
		{"PLAIN continuation", func(c *testClient) {
			c.send("a authenticate plain\r\n")
			if l := c.line(); l != "+ " {
				t.Fatalf("challenge %q, want empty", l)
			}
			c.send(b64("\x00alice\x00secret") + "\r\n")
		}, "alice", "secret"},
		{"LOGIN mechanism", func(c *testClient) {
			c.send("a AUTHENTICATE LOGIN\r\n")
			c.expect("+ " + b64("Username:"))
			c.send(b64("alice") + "\r\n")
			c.expect("+ " + b64("Password:"))
			c.send(b64("secret") + "\r\n")
		}, "alice", "secret"},
		{"LOGIN mechanism with initial response", func(c *testClient) {
			c.send("a AUTHENTICATE LOGIN " + b64("alice") + "\r\n")
			c.expect("+ " + b64("Password:"))
			c.send(b64("secret") + "\r\n")
		}, "alice", "secret"},
		{"PLAIN empty password", func(c *testClient) { c.send("a AUTHENTICATE PLAIN " + b64("\x00alice\x00") + "\r\n") }, "alice", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend(nil)
			c := startPipe(t, testConfig(t, b))
			c.expect("* OK")
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
			c.expect("a OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in")

			// Bytes pass both ways untouched.
			c.send("b SELECT INBOX\r\n")
			pc := newTestClient(t, peer)
			pc.expect("b SELECT INBOX")
			pc.send("* 3 EXISTS\r\nb OK [READ-WRITE] SELECT completed\r\n")
			c.expect("* 3 EXISTS")
			c.expect("b OK [READ-WRITE]")
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
			c := startPipe(t, testConfig(t, b))
			c.expect("* OK")
			c.send(tt.dialog)
			l := c.expect(tt.want)
			if strings.Contains(l, "10.9.9.9") || strings.Contains(l, "routing") {
				t.Errorf("reply %q names the backend", l)
			}
			// The session goes on.
			c.send("z NOOP\r\n")
			c.expect("z OK")
		})
	}
}

func TestAuthenticateCancel(t *testing.T) {
	b := newFakeBackend(nil)
	c := startPipe(t, testConfig(t, b))
	c.expect("* OK")
	c.send("a AUTHENTICATE PLAIN\r\n")
	c.expect("+ ")
	c.send("*\r\n")
	c.expect("a BAD AUTHENTICATE cancelled")
	c.send("b AUTHENTICATE LOGIN\r\n")
	c.expect("+ ")
	c.send("not base64!\r\n")
	c.expect("b BAD")
	c.send("c NOOP\r\n")
	c.expect("c OK")
	if len(b.logins) != 0 {
		t.Fatal("cancelled exchange reached the backend")
	}
}

func TestBadCommandLimitDisconnects(t *testing.T) {
	cfg := testConfig(t, newFakeBackend(fmt.Errorf("%w: no", ErrAuthFailed)))
	cfg.BadCommandLimit = 4
	c := startPipe(t, cfg)
	c.expect("* OK")
	c.send("a FETCH 1 BODY[]\r\n")
	c.expect("a BAD")
	c.send("\x01\x02\r\n")
	c.expect("* BAD")
	c.send("b LOGIN alice wrong\r\n")
	c.expect("b NO [AUTHENTICATIONFAILED]")
	c.send("c LIST \"\" *\r\n")
	c.expect("c BAD")
	c.expect("* BYE Too many invalid commands")
	c.expectClosed()
}

func TestLongLineDisconnects(t *testing.T) {
	c := startPipe(t, testConfig(t, newFakeBackend(nil)))
	c.expect("* OK")
	go c.conn.Write([]byte(strings.Repeat("A", 100<<10))) // 100 KB of garbage, no LF
	c.expect("* BYE Command too long")
	c.expectClosed()
}

func TestPreauthTimeout(t *testing.T) {
	cfg := testConfig(t, newFakeBackend(nil))
	cfg.PreauthTimeout = 150 * time.Millisecond
	c := startPipe(t, cfg)
	c.expect("* OK")
	start := time.Now()
	c.expect("* BYE Autologout")
	c.expectClosed()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

// Commands pipelined after LOGIN are the backend's (LITERAL+ clients send
// LOGIN and SELECT in one packet).
func TestPipelinedAfterLoginGoesToBackend(t *testing.T) {
	b := newFakeBackend(nil)
	c := startPipe(t, testConfig(t, b))
	c.expect("* OK")
	c.send("a LOGIN alice secret\r\nb SELECT INBOX\r\n")
	<-b.logins
	peer := <-b.peers
	defer peer.Close()
	c.expect("a OK")
	newTestClient(t, peer).expect("b SELECT INBOX")
}

// STARTTLS: fresh capabilities over TLS; nothing of the cleartext phase
// survives; LOGIN works afterwards.
func TestStartTLS(t *testing.T) {
	pool, cert, _ := testCert(t)
	b := newFakeBackend(nil)
	cfg := testConfig(t, b)
	cfg.AllowPlaintextAuth = false
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	c := startPipe(t, cfg)
	c.expect("* OK")
	c.send("a STARTTLS\r\n")
	c.expect("a OK Begin TLS")
	tc := tls.Client(c.conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tlsc := newTestClient(t, tc)
	tlsc.send("b CAPABILITY\r\n")
	caps := tlsc.expect("* CAPABILITY ")
	if strings.Contains(caps, "STARTTLS") || strings.Contains(caps, "LOGINDISABLED") || !strings.Contains(caps, "AUTH=PLAIN") {
		t.Fatalf("capabilities after TLS: %q", caps)
	}
	tlsc.expect("b OK")
	tlsc.send("c STARTTLS\r\n")
	tlsc.expect("c BAD")
	tlsc.send("d LOGIN alice secret\r\n")
	<-b.logins
	peer := <-b.peers
	tlsc.expect("d OK [CAPABILITY")
	peer.Close()
	tlsc.expectClosed()
}

// Bytes pipelined after STARTTLS are refused, never carried into TLS (the
// STARTTLS command injection; RFC 9051 §6.2.1 lets nothing of the cleartext
// phase survive): STARTTLS fails and they are answered as cleartext.
func TestStartTLSRefusesPipelinedCommands(t *testing.T) {
	_, cert, _ := testCert(t)
	b := newFakeBackend(nil)
	cfg := testConfig(t, b)
	cfg.AllowPlaintextAuth = false
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	c := startPipe(t, cfg)
	c.expect("* OK")
	c.send("a STARTTLS\r\nb LOGIN alice secret\r\n")
	c.expect("a BAD STARTTLS must be the last command")
	c.expect("b NO [PRIVACYREQUIRED]")
	c.send("c CAPABILITY\r\n")
	if l := c.expect("* CAPABILITY"); !strings.Contains(l, "STARTTLS") {
		t.Fatalf("STARTTLS still expected to be available: %q", l)
	}
	c.expect("c OK")
	if len(b.logins) != 0 {
		t.Fatal("injected LOGIN reached the backend")
	}
}

func TestImplicitTLS(t *testing.T) {
	pool, cert, _ := testCert(t)
	b := newFakeBackend(nil)
	cfg := testConfig(t, b)
	cfg.AllowPlaintextAuth = false
	cfg.ImplicitTLS = true
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	c := startPipe(t, cfg) // a plain conn: Serve wraps it with TLSConfig
	tc := tls.Client(c.conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	tlsc := newTestClient(t, tc)
	g := tlsc.expect("* OK [CAPABILITY")
	if strings.Contains(g, "STARTTLS") || !strings.Contains(g, "AUTH=PLAIN") {
		t.Fatalf("greeting %q", g)
	}
	tlsc.send("a LOGOUT\r\n")
	tlsc.expect("* BYE")
	tlsc.expect("a OK")
}

// Invariant 5: credentials never reach the logs, whatever happens.
func TestCredentialsNeverLogged(t *testing.T) {
	for _, berr := range []error{nil, fmt.Errorf("%w: NO", ErrAuthFailed), ErrUnavailable} {
		core, logs := observer.New(zap.DebugLevel)
		b := newFakeBackend(berr)
		cfg := testConfig(t, b)
		cfg.Logger = zap.New(core)
		c := startPipe(t, cfg)
		c.expect("* OK")
		c.send("x1 LOGIN alice Sup3rSecr3t\r\n")
		if berr == nil {
			<-b.peers
			c.expect("x1 OK")
			c.conn.Close()
		} else {
			c.expect("x1 NO")
			c.send("x2 AUTHENTICATE PLAIN " + b64("\x00alice\x00Sup3rSecr3t") + "\r\n")
			c.expect("x2 NO")
			c.send("x3 LOGOUT\r\n")
			c.expect("* BYE")
			c.expect("x3 OK")
		}
		c.expectClosed()
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
	c := startPipe(t, testConfig(t, newFakeBackend(nil)))
	c.expect("* OK")
	c.send("PROXY TCP4 203.0.113.9 127.0.0.1 4000 143\r\n")
	c.expect("* BYE PROXY protocol not accepted")
	c.expectClosed()
}

// Every way a session ends logs one "session end" line whose result is one
// of connlog's values, the same vocabulary as POP3's.
func TestSessionEndResults(t *testing.T) {
	_, cert, _ := testCert(t)
	tests := []struct {
		name   string
		mod    func(*Config)
		run    func(t *testing.T, c *testClient, b *fakeBackend)
		result connlog.Result
	}{
		{"logout", nil, func(t *testing.T, c *testClient, _ *fakeBackend) {
			c.send("a LOGOUT\r\n")
			c.expect("* BYE")
			c.expect("a OK")
			c.expectClosed()
		}, connlog.Logout},
		{"dropped", nil, func(t *testing.T, c *testClient, _ *fakeBackend) { c.conn.Close() }, connlog.Dropped},
		{"preauth timeout", func(cfg *Config) { cfg.PreauthTimeout = 150 * time.Millisecond },
			func(t *testing.T, c *testClient, _ *fakeBackend) {
				c.expect("* BYE Autologout")
				c.expectClosed()
			}, connlog.PreauthTimeout},
		{"too many bad commands", func(cfg *Config) { cfg.BadCommandLimit = 1 },
			func(t *testing.T, c *testClient, _ *fakeBackend) {
				c.send("a FETCH 1 BODY[]\r\n")
				c.expect("a BAD")
				c.expect("* BYE Too many invalid commands")
				c.expectClosed()
			}, connlog.TooManyBadCommands},
		{"command too long", nil, func(t *testing.T, c *testClient, _ *fakeBackend) {
			go c.conn.Write([]byte(strings.Repeat("A", 100<<10)))
			c.expect("* BYE Command too long")
			c.expectClosed()
		}, connlog.CommandTooLong},
		{"proxy refused", nil, func(t *testing.T, c *testClient, _ *fakeBackend) {
			c.send("PROXY TCP4 203.0.113.9 127.0.0.1 4000 143\r\n")
			c.expect("* BYE")
			c.expectClosed()
		}, connlog.ProxyRefused},
		{"STARTTLS handshake failed", func(cfg *Config) { cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}} },
			func(t *testing.T, c *testClient, _ *fakeBackend) {
				c.send("a STARTTLS\r\n")
				c.expect("a OK")
				c.send("not a TLS ClientHello\r\n")
				c.expectClosed()
			}, connlog.TLSFailed},
		{"backend closed", nil, func(t *testing.T, c *testClient, b *fakeBackend) {
			c.send("a LOGIN alice secret\r\n")
			<-b.logins
			peer := <-b.peers
			c.expect("a OK")
			peer.Close()
			c.expectClosed()
		}, connlog.BackendClosed},
		{"client closed after login", nil, func(t *testing.T, c *testClient, b *fakeBackend) {
			c.send("a LOGIN alice secret\r\n")
			<-b.logins
			peer := <-b.peers
			t.Cleanup(func() { peer.Close() }) // after the check: the client must close first
			c.expect("a OK")
			c.conn.Close() // net.Pipe cannot pass a half-close on
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
			c := startPipe(t, cfg)
			c.expect("* OK")
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
		c.expect("* OK")
		c.send("a LOGOUT\r\n")
		c.expect("* BYE")
		c.expect("a OK")
		c.expectClosed()
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
