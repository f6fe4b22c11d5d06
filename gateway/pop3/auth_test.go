package pop3

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/test/transcript"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestPlaintextRefusedWithoutTLS(t *testing.T) {
	for _, withSTLS := range []bool{true, false} {
		t.Run(map[bool]string{true: "STLS offered", false: "no TLS"}[withSTLS], func(t *testing.T) {
			ts := newTestServer(t, nil, func(c *Config) {
				c.AllowPlaintextAuth = false
				c.PreauthBadCommandLimit = 10 // each refusal counts; this test makes four
				if withSTLS {
					c.TLSConfig = testTLSConfig(t)
				}
			})
			c := ts.dial()
			hint := map[bool]string{true: "use STLS first", false: "use a TLS connection"}[withSTLS]
			for _, cmd := range []string{"USER " + testUser, "PASS " + testPass, "AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), "AUTH LOGIN"} {
				if l := c.Command(cmd, "-ERR [AUTH] "); !strings.HasSuffix(l, hint) {
					t.Fatalf("%s: got %q, want hint %q", cmd, l, hint)
				}
			}
			c.Command("AUTH", "+OK")
			if got := c.Lines(); len(got) != 0 {
				t.Fatalf("AUTH lists %q on cleartext, want nothing", got)
			}
			if logins, _, _ := ts.b.calls(); len(logins) != 0 {
				t.Fatal("credentials reached the backend over cleartext")
			}
		})
	}
}

func TestAUTHPLAIN(t *testing.T) {
	good := b64("\x00" + testUser + "\x00" + testPass)
	tests := []struct {
		name   string
		script []string // client line, expected reply prefix, ...
	}{
		{"initial response", []string{"AUTH PLAIN " + good, "+OK maildrop has 3"}},
		{"mechanism case-insensitive", []string{"auth plain " + good, "+OK"}},
		{"no initial response", []string{"AUTH PLAIN", "+ ", good, "+OK"}},
		{"unpadded base64", []string{"AUTH PLAIN " + strings.TrimRight(good, "="), "+OK"}},
		{"authzid equal to authcid", []string{"AUTH PLAIN " + b64(testUser+"\x00"+testUser+"\x00"+testPass), "+OK"}},
		{"authzid differs", []string{"AUTH PLAIN " + b64("root\x00"+testUser+"\x00"+testPass), "-ERR [AUTH] authentication failed"}},
		{"empty initial response", []string{"AUTH PLAIN =", "-ERR [AUTH] authentication failed"}},
		{"empty response line", []string{"AUTH PLAIN", "+ ", "", "-ERR [AUTH] authentication failed"}},
		{"wrong password", []string{"AUTH PLAIN " + b64("\x00"+testUser+"\x00wrong"), "-ERR [AUTH] authentication failed"}},
		{"bad base64", []string{"AUTH PLAIN !!!!", "-ERR [AUTH] authentication failed"}},
		{"cancel", []string{"AUTH PLAIN", "+ ", "*", "-ERR authentication cancelled"}},
		{"unknown mechanism", []string{"AUTH CRAM-MD5", "-ERR unsupported authentication mechanism"}},
		{"too many arguments", []string{"AUTH PLAIN a b", "-ERR wrong number of arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, nil, nil)
			c := ts.dial()
			runScript(t, c, tt.script)
			// Still usable afterwards, in the state the script left.
			c.Command("CAPA", "+OK")
			c.Lines()
		})
	}
}

func runScript(t *testing.T, c *transcript.Conn, script []string) {
	t.Helper()
	for i := 0; i < len(script); i += 2 {
		c.Send(script[i])
		if got := c.Line(); !strings.HasPrefix(got, script[i+1]) || (script[i+1] == "+ " && got != "+ ") {
			t.Fatalf("after %q: got %q, want %q", script[i], got, script[i+1])
		}
	}
}

func TestAUTHLOGIN(t *testing.T) {
	user, pass := b64(testUser), b64(testPass)
	usernameCh, passwordCh := "+ "+b64("Username:"), "+ "+b64("Password:")
	tests := []struct {
		name   string
		script []string
	}{
		{"challenges", []string{"AUTH LOGIN", usernameCh, user, passwordCh, pass, "+OK maildrop has 3"}},
		{"initial response", []string{"AUTH LOGIN " + user, passwordCh, pass, "+OK"}},
		{"wrong password", []string{"AUTH LOGIN", usernameCh, user, passwordCh, b64("nope"), "-ERR [AUTH] authentication failed"}},
		{"cancel at password", []string{"AUTH LOGIN", usernameCh, user, passwordCh, "*", "-ERR authentication cancelled"}},
		{"empty user", []string{"AUTH LOGIN =", passwordCh, pass, "-ERR [AUTH]"}},
		{"bad base64", []string{"AUTH LOGIN", usernameCh, "@@@", "-ERR [AUTH]"}},
		// RFC 5034 §4: SASL lines are not bound by the 255-octet command limit.
		{"long response line", []string{"AUTH LOGIN", usernameCh, b64(strings.Repeat("u", 3000)), passwordCh, pass, "-ERR [AUTH] authentication failed"}},
		{"response line over the SASL cap", []string{"AUTH LOGIN", usernameCh, strings.Repeat("A", maxSASLLine), "-ERR [AUTH] authentication failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, nil, nil)
			c := ts.dial()
			runScript(t, c, tt.script)
			c.Command("CAPA", "+OK")
			c.Lines()
		})
	}
}

func TestAUTHList(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("AUTH", "+OK")
	if got, want := c.Lines(), []string{"PLAIN", "LOGIN"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("AUTH = %q, want %q", got, want)
	}
}

func TestAUTHFailuresCountTowardsLimit(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("AUTH PLAIN "+b64("\x00"+testUser+"\x00x"), "-ERR [AUTH]")
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS y", "-ERR [AUTH]")
	c.Command("AUTH LOGIN "+b64(testUser), "+ ")
	c.Command(b64("z"), "-ERR [AUTH] authentication failed; too many failures")
	c.ExpectClosed()
}

func TestSTLS(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) {
		c.AllowPlaintextAuth = false
		c.TLSConfig = testTLSConfig(t)
	})
	c := ts.dial()
	c.Command("USER "+testUser, "-ERR [AUTH]")
	c.Command("STLS", "+OK")
	c.StartTLS(clientTLS(t))
	// RFC 2595 §4: the client asks again; STLS is gone, USER and SASL appear.
	c.Command("CAPA", "+OK")
	got := c.Lines()
	if strings.Contains(strings.Join(got, "\n"), "STLS") || !contains(got, "USER") || !contains(got, "SASL PLAIN LOGIN") {
		t.Fatalf("CAPA after STLS = %q", got)
	}
	c.Command("STLS", "-ERR TLS already active")
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	c.Command("QUIT", "+OK")
}

func TestSTLSForgetsUSER(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) { c.TLSConfig = testTLSConfig(t) })
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("STLS", "+OK")
	c.StartTLS(clientTLS(t))
	c.Command("PASS "+testPass, "-ERR USER first")
}

func TestSTLSRefusedWhenPipelined(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) {
		c.AllowPlaintextAuth = false
		c.TLSConfig = testTLSConfig(t)
	})
	c := ts.dial()
	// The injection: a command sent in cleartext right behind STLS must not be
	// executed as if it came over TLS.
	c.SendRaw("STLS\r\nUSER " + testUser + "\r\n")
	c.Expect("-ERR STLS must be the last command")
	c.Expect("-ERR [AUTH] plaintext authentication disallowed") // still cleartext
	c.Command("CAPA", "+OK")
	if got := c.Lines(); !contains(got, "STLS") {
		t.Fatalf("CAPA after refused STLS = %q, want STLS still offered", got)
	}
	// A plain STLS afterwards works.
	c.Command("STLS", "+OK")
	c.StartTLS(clientTLS(t))
	c.Command("NOOP", "-ERR command not valid")
}

func TestSTLSNotOffered(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("STLS", "-ERR STLS not available")
	c.Command("USER "+testUser, "+OK")
}

func TestSTLSHandshakeFailureCloses(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) {
		c.TLSConfig = testTLSConfig(t)
		c.TLSHandshakeTimeout = 200 * time.Millisecond
	})
	c := ts.dial()
	c.Command("STLS", "+OK")
	c.SendRaw("this is not a TLS client hello\r\n")
	c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	readAll(c) // a TLS alert, then the close
	ts.wait()
}

func TestImplicitTLS(t *testing.T) {
	cfg := testTLSConfig(t)
	ts := newTestServer(t, nil, func(c *Config) {
		c.TLSConfig = cfg
		c.ImplicitTLS = true
		c.AllowPlaintextAuth = false
		c.TLSHandshakeTimeout = 300 * time.Millisecond
	})
	conn, err := tls.Dial("tcp", ts.ln.Addr().String(), clientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	c := transcript.New(t, conn)
	c.Expect("+OK mailgate ready")
	c.Command("CAPA", "+OK")
	if got := c.Lines(); contains(got, "STLS") || !contains(got, "USER") {
		t.Fatalf("CAPA over implicit TLS = %q", got)
	}
	c.Command("STLS", "-ERR TLS already active")
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")

	// A client that never starts the handshake is cut after the timeout.
	silent := ts.dialRaw()
	silent.ExpectClosed()
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// TestLogsNeverContainCredentials runs every way of presenting a password,
// right and wrong, and searches all log output (messages and fields) for the
// secrets and their base64 forms.
func TestLogsNeverContainCredentials(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	ts := newTestServer(t, nil, func(c *Config) { c.Logger = zap.New(core) })
	const wrong = "Wr0ng-Secret-xyzzy"
	secrets := []string{testPass, wrong}
	var blobs []string
	for _, pw := range secrets {
		blobs = append(blobs, b64("\x00"+testUser+"\x00"+pw), b64(pw))
	}

	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+wrong, "-ERR [AUTH]")
	c.Command("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+wrong), "-ERR [AUTH]")
	c.Command("QUIT", "+OK")

	c = ts.dial()
	c.Command("AUTH LOGIN", "+ ")
	c.Command(b64(testUser), "+ ")
	c.Command(b64(wrong), "-ERR [AUTH]")
	c.Command("AUTH PLAIN", "+ ")
	c.Command(b64("\x00"+testUser+"\x00"+testPass), "+OK")
	c.Command("QUIT", "+OK")

	c = ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	c.Command("QUIT", "+OK")
	ts.wait()

	if logs.Len() == 0 {
		t.Fatal("no logs observed")
	}
	var ends int
	for _, e := range logs.All() {
		b, err := json.Marshal(map[string]any{"msg": e.Message, "fields": e.ContextMap()})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range append(secrets, blobs...) {
			if strings.Contains(string(b), s) {
				t.Fatalf("log entry contains a credential: %s", b)
			}
		}
		if e.Message == "session end" {
			ends++
			m := e.ContextMap()
			for _, k := range []string{"conn", "listener", "remote", "duration", "commands", "bytes_out", "result"} {
				if _, ok := m[k]; !ok {
					t.Fatalf("session end lacks %q: %v", k, m)
				}
			}
		}
	}
	if ends != 3 {
		t.Fatalf("%d session end lines, want 3", ends)
	}
	quits := logs.FilterMessage("session end").FilterField(zap.String("result", "quit")).FilterField(zap.String("user", testUser))
	if quits.Len() != 2 {
		t.Fatalf("%d session end lines with user and result quit, want 2", quits.Len())
	}
}

// TestLongUserNameRefusedLocally: a user name over 255 octets (AUTH PLAIN
// and AUTH LOGIN; USER cannot carry one within the 255-octet command line)
// is answered as a wrong password without reaching the Backend, and counts
// as a failure of the connection (issue 11, finding 5).
func TestLongUserNameRefusedLocally(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	long := strings.Repeat("u", 256) + "@example.org"
	c := ts.dial()
	c.Command("AUTH PLAIN", "+ ")
	c.Command(b64("\x00"+long+"\x00"+testPass), "-ERR [AUTH] authentication failed")
	c.Command("AUTH LOGIN", "+ ")
	c.Command(b64(long), "+ ")
	c.Command(b64(testPass), "-ERR [AUTH] authentication failed")
	c.Command("AUTH PLAIN", "+ ")
	c.Command(b64("\x00"+strings.Repeat("x", 8000)+"\x00"+testPass), "-ERR [AUTH] authentication failed; too many failures")
	c.ExpectClosed()
	if logins, _, _ := ts.b.calls(); len(logins) != 0 {
		t.Fatalf("a long user name reached the backend: %d logins", len(logins))
	}

	// 255 octets is still a user name: it reaches the Backend.
	c = ts.dial()
	c.Command("AUTH PLAIN", "+ ")
	c.Command(b64("\x00"+strings.Repeat("u", 255)+"\x00"+testPass), "-ERR [AUTH]")
	c.Command("QUIT", "+OK")
	ts.wait()
	if logins, _, _ := ts.b.calls(); len(logins) != 1 || len(logins[0].User) != 255 {
		t.Fatalf("a 255-octet name: backend logins %d, want 1", len(logins))
	}
}
