package pop3

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/gateway/internal/connlog"
	"mailgate/test/transcript"
)

func TestGreetingBannerUnique(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	seen := map[string]bool{}
	for range 3 {
		g := ts.dialRaw().Expect("+OK mailgate ready, session ")
		// RFC 1939 §7: "<...@...>" in the greeting is an APOP timestamp,
		// and APOP is not offered: a client that sees one tries it.
		if regexp.MustCompile(`<[^>]*@[^>]*>`).MatchString(g) {
			t.Fatalf("greeting %q carries an APOP timestamp", g)
		}
		if seen[g] {
			t.Fatalf("greeting %q repeated", g)
		}
		seen[g] = true
		if len(g)+2 > 512 {
			t.Fatalf("greeting over 512 octets")
		}
	}
}

func TestCAPA(t *testing.T) {
	base := []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"}
	tests := []struct {
		name      string
		plaintext bool
		tls       bool
		want      []string
	}{
		{"cleartext, no TLS config, plaintext allowed", true, false,
			append(base[:len(base):len(base)], "USER", "SASL PLAIN LOGIN", "IMPLEMENTATION mailgate")},
		{"cleartext with STLS, plaintext refused", false, true,
			append(base[:len(base):len(base)], "STLS", "IMPLEMENTATION mailgate")},
		{"cleartext with STLS, plaintext allowed", true, true,
			append(base[:len(base):len(base)], "USER", "SASL PLAIN LOGIN", "STLS", "IMPLEMENTATION mailgate")},
		{"cleartext, nothing allowed", false, false,
			append(base[:len(base):len(base)], "IMPLEMENTATION mailgate")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, nil, func(c *Config) {
				c.AllowPlaintextAuth = tt.plaintext
				if tt.tls {
					c.TLSConfig = testTLSConfig(t)
				}
			})
			c := ts.dial()
			c.Command("capa", "+OK")
			if got := c.Lines(); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("CAPA = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("transaction state", func(t *testing.T) {
		ts := newTestServer(t, nil, func(c *Config) { c.TLSConfig = testTLSConfig(t) })
		c := ts.login()
		c.Command("CAPA", "+OK")
		want := append(base[:len(base):len(base)], "IMPLEMENTATION mailgate")
		if got := c.Lines(); !reflect.DeepEqual(got, want) {
			t.Fatalf("CAPA = %q, want %q", got, want)
		}
	})
}

func TestCommandsRejectedInWrongState(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) { c.BadCommandLimit, c.PreauthBadCommandLimit = 100, 100 })
	c := ts.dial()
	for _, cmd := range []string{"STAT", "LIST", "LIST 1", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP"} {
		c.Command(cmd, "-ERR command not valid in AUTHORIZATION state")
	}
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	for _, cmd := range []string{"USER x", "PASS y", "AUTH PLAIN", "AUTH", "STLS"} {
		c.Command(cmd, "-ERR command not valid in TRANSACTION state")
	}
	c.Command("NOOP", "+OK")
	for _, cmd := range []string{"LAST", "APOP a b", "XTND", "RETR", "RETR 1 2", "TOP 1", "DELE", "STAT 1", "NOOP x"} {
		c.Command(cmd, "-ERR")
	}
	c.Command("STAT", "+OK 3 ")
}

// The default allowance before login is three mistakes (issue 11, finding
// 10), as in Dovecot's login processes; a logged-in client keeps the larger
// limits.bad_commands, so probing LAST or XTND a few times is no offence.
func TestDefaultBadCommandAllowanceByState(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("EHLO attacker.example", "-ERR unknown command")
	c.Command("NOOP", "-ERR command not valid in AUTHORIZATION state")
	c.Command("CAPA", "+OK")
	c.Lines()
	c.Command("MAIL FROM:<a@example.org>", "-ERR unknown command; too many invalid commands")
	c.ExpectClosed()

	c = ts.dial()
	c.Command("BOGUS", "-ERR")
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	for _, cmd := range []string{"LAST", "XTND XMIT", "APOP a b", "BOGUS"} {
		c.Command(cmd, "-ERR")
	}
	c.Command("STAT", "+OK 3 ")
}

func TestUSERPASSAndQuit(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("PASS "+testPass, "-ERR USER first")
	c.Command("user "+testUser, "+OK")
	c.Command("pass "+testPass, "+OK maildrop has 3 messages (")
	c.Command("QUIT", "+OK mailgate signing off (0 messages deleted)")
	c.ExpectClosed()
	ts.wantCommits([][]int{{}}, 1)
	if logins, _, _ := ts.b.calls(); len(logins) != 1 {
		t.Fatalf("%d logins", len(logins))
	} else if got := logins[0]; got.User != testUser || got.Password != testPass || got.Remote == nil {
		t.Fatalf("login %+v", got)
	}
}

// TestQuitReleasesMaildropBeforeAnswering: the maildrop (and with it the
// user's lock) is closed before QUIT's +OK, so a client that reconnects as
// soon as it reads the answer is not refused [IN-USE].
func TestQuitReleasesMaildropBeforeAnswering(t *testing.T) {
	b := newFakeBackend()
	b.closeDelay = 200 * time.Millisecond
	ts := newTestServer(t, b, nil)
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	c.Command("QUIT", "+OK mailgate signing off")
	if _, closes := ts.b.counts(); closes != 1 {
		t.Fatalf("QUIT was answered before the maildrop was closed (%d closes)", closes)
	}
}

func TestPASSKeepsSpaces(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("USER bob", "+OK")
	c.Command("PASS pass word with spaces", "+OK")
}

func TestWrongPasswordThreeStrikes(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS wrong", "-ERR [AUTH] authentication failed")
	c.Command("PASS "+testPass, "-ERR USER first") // a failed PASS forgets the USER
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS wrong", "-ERR [AUTH] authentication failed")
	c.Command("USER nobody", "+OK")
	c.Command("PASS wrong", "-ERR [AUTH] authentication failed; too many failures")
	c.ExpectClosed()
}

func TestAuthFailureDelay(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) { c.AuthFailureDelay = 300 * time.Millisecond })
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	start := time.Now()
	c.Command("PASS wrong", "-ERR [AUTH]")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("failure answered after %v, want the delay", d)
	}
	c.Command("USER "+testUser, "+OK")
	start = time.Now()
	c.Command("PASS "+testPass, "+OK")
	if d := time.Since(start); d >= 300*time.Millisecond {
		t.Fatalf("success answered after %v, want no delay", d)
	}
}

func TestOpenErrorsMapToCodes(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("lock held by session 7: %w", ErrInUse), "-ERR [IN-USE] maildrop is locked by another session"},
		{fmt.Errorf("dial 10.1.2.3:143: %w", ErrUnavailable), "-ERR [SYS/TEMP] temporary server failure, try again later"},
		{fmt.Errorf("something odd at 10.1.2.3"), "-ERR [SYS/TEMP] temporary server failure, try again later"},
		{&Error{Code: CodeSysPerm, Text: "account disabled"}, "-ERR [SYS/PERM] account disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			b := newFakeBackend()
			b.openErr = tt.err
			ts := newTestServer(t, b, nil)
			c := ts.dial()
			for range 4 { // not counted as authentication failures
				c.Command("USER "+testUser, "+OK")
				if got := c.Command("PASS "+testPass, "-ERR"); got != tt.want {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			}
			c.Command("CAPA", "+OK")
			c.Lines()
			c.Command("QUIT", "+OK")
		})
	}
}

func TestStatListUidlDeleRset(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.login()
	md := &fakeMaildrop{b: ts.b}
	s1, s2, s3 := md.Size(1), md.Size(2), md.Size(3)
	c.Command("STAT", fmt.Sprintf("+OK 3 %d", s1+s2+s3))
	c.Command("LIST", fmt.Sprintf("+OK 3 messages (%d octets)", s1+s2+s3))
	if got, want := c.Lines(), []string{fmt.Sprint("1 ", s1), fmt.Sprint("2 ", s2), fmt.Sprint("3 ", s3)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("LIST = %q, want %q", got, want)
	}
	c.Command("LIST 2", fmt.Sprintf("+OK 2 %d", s2))
	c.Command("UIDL", "+OK")
	if got, want := c.Lines(), []string{"1 UID-one", "2 UID-two", "3 UID-three"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("UIDL = %q, want %q", got, want)
	}
	c.Command("UIDL 3", "+OK 3 UID-three")
	c.Command("LIST 0", "-ERR no such message")
	c.Command("LIST 4", "-ERR no such message")
	c.Command("LIST 99999999999999999999999", "-ERR no such message")
	c.Command("LIST -1", "-ERR invalid message number")
	c.Command("LIST +1", "-ERR invalid message number")
	c.Command("LIST x", "-ERR invalid message number")

	c.Command("DELE 2", "+OK message 2 deleted")
	c.Command("STAT", fmt.Sprintf("+OK 2 %d", s1+s3))
	c.Command("LIST", "+OK 2 messages")
	if got, want := c.Lines(), []string{fmt.Sprint("1 ", s1), fmt.Sprint("3 ", s3)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("LIST after DELE = %q, want %q", got, want)
	}
	c.Command("UIDL", "+OK")
	if got, want := c.Lines(), []string{"1 UID-one", "3 UID-three"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("UIDL after DELE = %q, want %q", got, want)
	}
	for _, cmd := range []string{"LIST 2", "UIDL 2", "RETR 2", "TOP 2 0", "DELE 2"} {
		c.Command(cmd, "-ERR message 2 already deleted")
	}
	c.Command("RSET", fmt.Sprintf("+OK maildrop has 3 messages (%d octets)", s1+s2+s3))
	c.Command("LIST 2", "+OK 2 ")
	c.Command("DELE 3", "+OK")
	c.Command("DELE 1", "+OK")
	c.Command("STAT", fmt.Sprintf("+OK 1 %d", s2))
	c.Command("QUIT", "+OK mailgate signing off (2 messages deleted)")
	c.ExpectClosed()
	ts.wantCommits([][]int{{1, 3}}, 1)
}

func TestQuitInAuthorizationCommitsNothing(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("QUIT", "+OK")
	c.ExpectClosed()
	ts.wait()
	logins, _, _ := ts.b.calls()
	if commits, closes := ts.b.counts(); len(commits) != 0 || closes != 0 || len(logins) != 0 {
		t.Fatalf("commits %v closes %d logins %d, want nothing", commits, closes, len(logins))
	}
}

func TestEndWithoutQuitCommitsNothing(t *testing.T) {
	tests := []struct {
		name   string
		end    func(ts *testServer, c *transcript.Conn)
		result connlog.Result
	}{
		{"drop", func(ts *testServer, c *transcript.Conn) { c.NetConn().Close() }, connlog.Dropped},
		{"drop mid-command", func(ts *testServer, c *transcript.Conn) { c.SendRaw("QU"); c.NetConn().Close() }, connlog.Dropped},
		{"idle timeout", func(ts *testServer, c *transcript.Conn) { c.ExpectClosed() }, connlog.IdleTimeout},
		{"shutdown", func(ts *testServer, c *transcript.Conn) {
			ts.cancel()
			c.Expect("-ERR [SYS/TEMP] server shutting down")
			c.ExpectClosed()
		}, connlog.Shutdown},
		{"too many bad commands", func(ts *testServer, c *transcript.Conn) {
			for range 9 {
				c.Command("BOGUS", "-ERR unknown command")
			}
			c.Command("BOGUS", "-ERR unknown command; too many invalid commands")
			c.ExpectClosed()
		}, connlog.TooManyBadCommands},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			ts := newTestServer(t, nil, func(c *Config) {
				c.IdleTimeout = 300 * time.Millisecond
				c.Logger = zap.New(core)
			})
			c := ts.login()
			c.Command("DELE 1", "+OK")
			c.Command("DELE 3", "+OK")
			tt.end(ts, c)
			ts.wantCommits(nil, 1)
			ends := logs.FilterMessage("session end")
			if ends.Len() != 1 || ends.FilterField(tt.result.Field()).Len() != 1 {
				t.Fatalf("session end lines %v, want one with result %s", ends.All(), tt.result)
			}
		})
	}
}

func TestShutdownAtCommandBoundary(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.login()
	ts.cancel()
	// Pipelined: the session must not go on to the QUIT.
	c.SendRaw("DELE 1\r\nQUIT\r\n")
	l := c.Line()
	if l != "-ERR [SYS/TEMP] server shutting down, try again later" && l != "+OK message 1 deleted" {
		t.Fatalf("got %q", l)
	}
	ts.wait()
	if commits, _ := ts.b.counts(); len(commits) != 0 {
		t.Fatalf("commits %v after shutdown, want none", commits)
	}
}

func TestCommitFailure(t *testing.T) {
	b := newFakeBackend()
	b.commitErr = fmt.Errorf("UID EXPUNGE: %w", ErrPartialCommit)
	ts := newTestServer(t, b, nil)
	c := ts.login()
	c.Command("DELE 1", "+OK")
	c.Command("QUIT", "-ERR [SYS/TEMP] some deleted messages not removed")
	c.ExpectClosed()
	ts.wantCommits([][]int{{1}}, 1)
}

// notExpungedErr is what upstream's Commit returns without UIDPLUS.
type notExpungedErr struct{}

func (notExpungedErr) Error() string     { return "flagged \\Deleted, not expunged" }
func (notExpungedErr) NotExpunged() bool { return true }

// Without UIDPLUS the deleted messages stay flagged \Deleted on the server:
// QUIT answers +OK (no POP3 session lists them again) and says what happened
// instead of "deleted".
func TestCommitNotExpungedSaysSo(t *testing.T) {
	b := newFakeBackend()
	b.commitErr = fmt.Errorf("remove: %w", notExpungedErr{})
	ts := newTestServer(t, b, nil)
	c := ts.login()
	c.Command("DELE 1", "+OK")
	c.Command("DELE 2", "+OK")
	c.Command("QUIT", "+OK mailgate signing off (2 messages marked deleted; the server keeps them flagged \\Deleted until it expunges them)")
	c.ExpectClosed()
	ts.wantCommits([][]int{{1, 2}}, 1)
}

func TestRETRExactBytes(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.login()
	for n, m := range ts.b.msgs {
		want := wireForm(m.body)
		c.Command("RETR "+strconv.Itoa(n+1), "+OK "+strconv.Itoa(len(want))+" octets")
		got, err := unstuff(c.Body())
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Fatalf("RETR %d = %q, want %q", n+1, got, want)
		}
	}
	c.Command("RETR 2", "+OK")
	if raw := string(c.Body()); !strings.Contains(raw, "\r\n..leading dot\r\n...two dots\r\n") {
		t.Fatalf("RETR 2 not dot-stuffed: %q", raw)
	}
}

func TestRETREmptyMessage(t *testing.T) {
	b := newFakeBackend()
	b.msgs = []fakeMsg{{"U1", ""}}
	ts := newTestServer(t, b, nil)
	c := ts.login()
	c.Command("RETR 1", "+OK 0 octets")
	c.Expect(".")
	c.Command("NOOP", "+OK")
}

func TestRETRMessageGone(t *testing.T) {
	b := newFakeBackend()
	b.gone = map[int]bool{2: true}
	ts := newTestServer(t, b, nil)
	c := ts.login()
	c.Command("RETR 2", "-ERR message was deleted by another client")
	c.Command("TOP 2 1", "-ERR message was deleted by another client")
	c.Command("RETR 1", "+OK")
	c.Body()
	c.Command("NOOP", "+OK")
}

func TestRETRBackendUnavailable(t *testing.T) {
	b := newFakeBackend()
	b.retrErr = fmt.Errorf("fetch from 10.9.9.9: %w", ErrUnavailable)
	ts := newTestServer(t, b, nil)
	c := ts.login()
	if l := c.Command("RETR 1", "-ERR [SYS/TEMP]"); strings.Contains(l, "10.9.9.9") {
		t.Fatalf("reply leaks the backend: %q", l)
	}
	c.Command("NOOP", "+OK")
}

func TestBodyFailureMidTransferClosesWithoutTerminator(t *testing.T) {
	for _, cmd := range []string{"RETR 2", "TOP 2 10"} {
		t.Run(cmd, func(t *testing.T) {
			b := newFakeBackend()
			b.failAfter = 20 // inside message 2
			ts := newTestServer(t, b, nil)
			c := ts.login()
			c.Command("DELE 1", "+OK")
			c.Command(cmd, "+OK")
			c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
			rest, _ := readAll(c)
			if strings.Contains("\r\n"+rest, "\r\n.\r\n") {
				t.Fatalf("truncated body was terminated: %q", rest)
			}
			if !strings.HasPrefix(rest, "Subject: two\r\n") {
				t.Fatalf("got %q", rest)
			}
			ts.wantCommits(nil, 1)
		})
	}
}

func TestTOP(t *testing.T) {
	const msg = "Subject: t\r\nX: y\r\n\r\nb1\r\n.b2\r\nb3\r\n"
	tests := []struct {
		body string
		n    string
		want string
	}{
		{msg, "0", "Subject: t\r\nX: y\r\n\r\n"},
		{msg, "1", "Subject: t\r\nX: y\r\n\r\nb1\r\n"},
		{msg, "2", "Subject: t\r\nX: y\r\n\r\nb1\r\n.b2\r\n"},
		{msg, "3", msg},
		{msg, "100", msg},
		{msg, "99999999999999999999999999", msg},
		{"Subject: no body\r\n", "0", "Subject: no body\r\n"},
		{"Subject: lf\n\nx\ny\n", "1", "Subject: lf\r\n\r\nx\r\n"},
		{"Subject: unterminated\r\n\r\nlast", "5", "Subject: unterminated\r\n\r\nlast\r\n"},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.body)+"/"+tt.n, func(t *testing.T) {
			b := newFakeBackend()
			b.msgs = []fakeMsg{{"U1", tt.body}}
			ts := newTestServer(t, b, nil)
			c := ts.login()
			c.Command("TOP 1 "+tt.n, "+OK")
			got, err := unstuff(c.Body())
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("TOP 1 %s = %q, want %q", tt.n, got, tt.want)
			}
			if _, retrs, tops := ts.b.calls(); len(retrs) != 0 || len(tops) != 1 {
				t.Fatalf("retrs %v tops %v: TOP must use Maildrop.Top", retrs, tops)
			}
		})
	}
	t.Run("bad line count", func(t *testing.T) {
		ts := newTestServer(t, nil, nil)
		c := ts.login()
		c.Command("TOP 1 -1", "-ERR invalid number of lines")
		c.Command("TOP 1 x", "-ERR invalid number of lines")
		c.Command("TOP 9 1", "-ERR no such message")
	})
}

func TestPipelinedCommandsAnsweredInOrderWithOneFlush(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.login()
	c.Command("NOOP", "+OK") // settle
	before := ts.writes.Load()
	c.SendRaw("STAT\r\nLIST 1\r\nUIDL 2\r\nDELE 3\r\nSTAT\r\nRETR 1\r\nNOOP\r\n")
	c.Expect("+OK 3 ")
	c.Expect("+OK 1 ")
	c.Expect("+OK 2 UID-two")
	c.Expect("+OK message 3 deleted")
	c.Expect("+OK 2 ")
	c.Expect("+OK")
	c.Body()
	c.Expect("+OK")
	if n := ts.writes.Load() - before; n != 1 {
		t.Fatalf("pipelined batch took %d writes, want 1", n)
	}
}

func TestCommandLineLimit(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) { c.PreauthBadCommandLimit = 10 })
	c := ts.dial()
	// 255 octets including CRLF is allowed (RFC 2449 §4).
	user := strings.Repeat("u", 255-len("USER \r\n"))
	c.Command("USER "+user, "+OK")
	c.Command("USER "+user+"u", "-ERR line too long")
	c.Command("USER "+strings.Repeat("x", 1<<20), "-ERR line too long") // a megabyte, skipped whole
	c.Command("NOOP", "-ERR command not valid")                         // still in sync
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
}

func TestGarbageDisconnects(t *testing.T) {
	ts := newTestServer(t, nil, func(c *Config) { c.PreauthBadCommandLimit = 5 })
	c := ts.dial()
	c.SendRaw("\x00\xff\xfe garbage\r\n\r\n" + strings.Repeat("z", 300) + "\nHELO x\r\n")
	for range 3 {
		c.Expect("-ERR ")
	}
	c.Expect("-ERR unknown command")
	c.Command("EHLO", "-ERR unknown command; too many invalid commands")
	c.ExpectClosed()
}

func TestBareLFCommands(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.SendRaw("USER " + testUser + "\nPASS " + testPass + "\nSTAT\n")
	c.Expect("+OK")
	c.Expect("+OK")
	c.Expect("+OK 3 ")
}

func readAll(c *transcript.Conn) (string, error) {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := c.Reader().Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String(), err
		}
	}
}

func TestPanicEndsOnlyTheSession(t *testing.T) {
	b := newFakeBackend()
	b.panicOnRetr = true
	ts := newTestServer(t, b, nil)
	other := ts.login()
	c := ts.login()
	c.Command("DELE 1", "+OK")
	c.Send("RETR 2")
	c.ExpectClosed()
	other.Command("STAT", "+OK 3 ")
	other.Command("QUIT", "+OK")
	ts.wantCommits([][]int{{}}, 2) // only the other session's empty commit
}

// A PROXY protocol header reaching the POP3 front comes from a peer the
// listener does not trust: it is refused and the connection closed.
func TestProxyHeaderFromUntrustedPeerRefused(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	c := ts.dial()
	c.Command("PROXY TCP4 203.0.113.9 127.0.0.1 4000 110", "-ERR PROXY protocol not accepted")
	c.ExpectClosed()
}

// TestPreauthTimeoutCountsFromConnect: finding 4 of the hostile internet
// issue. Commands before login (CAPA, NOOP-like chatter) do not renew the
// pre-auth deadline: a client that never logs in is cut PreauthTimeout
// after connecting, although the idle timeout is far away. A client that
// logs in is bound by the idle timeout only from then on.
func TestPreauthTimeoutCountsFromConnect(t *testing.T) {
	const preauth = 600 * time.Millisecond
	ts := newTestServer(t, nil, func(c *Config) { c.PreauthTimeout = preauth; c.IdleTimeout = time.Minute })
	c := ts.dial()
	begin := time.Now()
	var closedAfter time.Duration
	for time.Since(begin) < 5*time.Second {
		c.NetConn().SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.NetConn().Write([]byte("CAPA\r\n")); err != nil {
			closedAfter = time.Since(begin)
			break
		}
		c.NetConn().SetReadDeadline(time.Now().Add(time.Second))
		var err error
		for {
			var line string
			line, err = c.Reader().ReadString('\n')
			if err != nil || line == ".\r\n" {
				break
			}
		}
		if err != nil {
			closedAfter = time.Since(begin)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if closedAfter == 0 {
		t.Fatalf("a client sending CAPA every 100ms was never cut (pre-auth timeout %v)", preauth)
	}
	if closedAfter > preauth+time.Second {
		t.Errorf("cut after %v, want about %v from the connect", closedAfter, preauth)
	}

	// Logged in: the pre-auth deadline no longer applies.
	c = ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	time.Sleep(preauth + 200*time.Millisecond)
	c.Command("STAT", "+OK")
	c.Command("QUIT", "+OK")
}

// A login refused for lack of TLS is logged once per session, with the user
// and the reason; the session end alone would not say why nobody logged in.
func TestPlaintextRefusalLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	ts := newTestServer(t, nil, func(c *Config) {
		c.AllowPlaintextAuth = false
		c.Logger = zap.New(core)
	})
	c := ts.dial()
	c.Command("USER alice@example.org", "-ERR [AUTH]")
	c.Command("USER alice@example.org", "-ERR [AUTH]")
	c.Command("QUIT", "+OK")
	refusals := logs.FilterMessage("login refused: no TLS")
	if refusals.Len() != 1 {
		t.Fatalf("%d refusal lines, want 1: %v", refusals.Len(), logs.All())
	}
	m := refusals.All()[0].ContextMap()
	if m["user"] != "alice@example.org" || m["reason"] != "USER before TLS" || m["listener"] == nil {
		t.Fatalf("refusal line %v", m)
	}
}

// TestHTTPRequestEndsConnection: an HTTP request line as a pre-auth command
// closes the connection at once, unanswered, logged with result
// protocol_mismatch (issue 11, finding 10: ALPACA).
func TestHTTPRequestEndsConnection(t *testing.T) {
	for _, line := range []string{"GET / HTTP/1.1", "POST /login HTTP/1.1", "HEAD ", "CONNECT mail.example.org:443 HTTP/1.1", "OPTIONS * HTTP/1.1", "PUT /x HTTP/1.1"} {
		t.Run(line, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			ts := newTestServer(t, nil, func(c *Config) { c.Logger = zap.New(core) })
			c := ts.dial()
			c.Command("NOOP", "-ERR")
			c.SendRaw(line + "\r\nHost: mail.example.org\r\n\r\n")
			c.ExpectClosed()
			ts.wait()
			if logins, _, _ := ts.b.calls(); len(logins) != 0 {
				t.Fatal("backend called")
			}
			if ends := logs.FilterMessage("session end"); ends.Len() != 1 || ends.FilterField(connlog.ProtocolMismatch.Field()).Len() != 1 {
				t.Fatalf("session end lines %v, want one with result %s", ends.All(), connlog.ProtocolMismatch)
			}
		})
	}
}

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
	runScripts(t, []script{
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
	})
}

// script is a session's client lines, each followed by the start of the
// reply expected to it.
type script struct {
	name  string
	lines []string // client line, expected reply prefix, ...
}

// runScripts runs each script in a session of its own, which must still
// answer CAPA afterwards, in the state the script left.
func runScripts(t *testing.T, scripts []script) {
	t.Helper()
	for _, sc := range scripts {
		t.Run(sc.name, func(t *testing.T) {
			ts := newTestServer(t, nil, nil)
			c := ts.dial()
			runScript(t, c, sc.lines)
			c.Command("CAPA", "+OK")
			c.Lines()
		})
	}
}

// runScript sends each client line of lines and checks the reply that
// follows it; a "+ " continuation must be exactly that.
func runScript(t *testing.T, c *transcript.Conn, lines []string) {
	t.Helper()
	for i := 0; i < len(lines); i += 2 {
		c.Send(lines[i])
		if got := c.Line(); !strings.HasPrefix(got, lines[i+1]) || (lines[i+1] == "+ " && got != "+ ") {
			t.Fatalf("after %q: got %q, want %q", lines[i], got, lines[i+1])
		}
	}
}

func TestAUTHLOGIN(t *testing.T) {
	user, pass := b64(testUser), b64(testPass)
	usernameCh, passwordCh := "+ "+b64("Username:"), "+ "+b64("Password:")
	runScripts(t, []script{
		{"challenges", []string{"AUTH LOGIN", usernameCh, user, passwordCh, pass, "+OK maildrop has 3"}},
		{"initial response", []string{"AUTH LOGIN " + user, passwordCh, pass, "+OK"}},
		{"wrong password", []string{"AUTH LOGIN", usernameCh, user, passwordCh, b64("nope"), "-ERR [AUTH] authentication failed"}},
		{"cancel at password", []string{"AUTH LOGIN", usernameCh, user, passwordCh, "*", "-ERR authentication cancelled"}},
		{"empty user", []string{"AUTH LOGIN =", passwordCh, pass, "-ERR [AUTH]"}},
		{"bad base64", []string{"AUTH LOGIN", usernameCh, "@@@", "-ERR [AUTH]"}},
		// RFC 5034 §4: SASL lines are not bound by the 255-octet command limit.
		{"long response line", []string{"AUTH LOGIN", usernameCh, b64(strings.Repeat("u", 3000)), passwordCh, pass, "-ERR [AUTH] authentication failed"}},
		{"response line over the SASL cap", []string{"AUTH LOGIN", usernameCh, strings.Repeat("A", maxSASLLine), "-ERR [AUTH] authentication failed"}},
	})
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

// takenAtUpdate is a maildrop that a newer session takes over at the moment
// this session's QUIT reaches UPDATE, before its takeover watcher could end
// it: the race test/faults TestLockTakeover met under load.
type takenAtUpdate struct {
	*fakeMaildrop
	taken chan struct{}
}

func (m takenAtUpdate) Waiting(bool)               {}
func (m takenAtUpdate) TakenOver() <-chan struct{} { return m.taken }
func (m takenAtUpdate) Commit(context.Context, []int) error {
	close(m.taken)
	return fmt.Errorf("%w: the maildrop was taken over by a newer session", ErrPartialCommit)
}

type takenAtUpdateBackend struct{ *fakeBackend }

func (b takenAtUpdateBackend) Open(ctx context.Context, l Login) (Maildrop, error) {
	md, err := b.fakeBackend.Open(ctx, l)
	if err != nil {
		return nil, err
	}
	return takenAtUpdate{md.(*fakeMaildrop), make(chan struct{})}, nil
}

// A QUIT whose UPDATE finds the maildrop taken over commits nothing, answers
// -ERR [SYS/TEMP] (RFC 1939 §6) and ends the session as taken_over, as a
// takeover seen while waiting for a command does: not as commit_failed.
func TestQuitRacingATakeoverEndsTakenOver(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	b := newFakeBackend()
	ts := newTestServer(t, b, func(c *Config) {
		c.Backend = takenAtUpdateBackend{b}
		c.Logger = zap.New(core)
	})
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	c.Command("DELE 1", "+OK")
	c.Command("QUIT", "-ERR [SYS/TEMP]")
	c.ExpectClosed()
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessage("session end").Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ends := logs.FilterMessage("session end").All()
	if len(ends) != 1 || ends[0].ContextMap()["result"] != "taken_over" {
		t.Fatalf("session end lines %v, want one with result taken_over", ends)
	}
}
