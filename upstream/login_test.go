package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/transcript"
)

// selectThrough runs SELECT INBOX over a handed-off connection.
func selectThrough(t *testing.T, p *Session, exists string) {
	t.Helper()
	untagged, st := transcript.New(t, p.Conn).Tagged("s1", "SELECT INBOX")
	if !strings.HasPrefix(st, "s1 OK") || !slices.Contains(untagged, "* "+exists+" EXISTS") {
		t.Fatalf("SELECT: %q (untagged %q, want * %s EXISTS)", st, untagged, exists)
	}
}

func TestLoginLoginThenSelect(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "secret", "Subject: 1\r\n\r\none\r\n", "Subject: 2\r\n\r\ntwo\r\n")
	p, err := Login(context.Background(), b.target(), fastTimeouts, "alice", "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Conn.Close()
	if !hasCap(p.Caps, "IMAP4rev1") || hasCap(p.Caps, "AUTH=PLAIN") {
		t.Errorf("post-login caps %q", p.Caps)
	}
	if _, ok := p.Conn.(*net.TCPConn); !ok {
		t.Errorf("conn is %T, want *net.TCPConn (splice path)", p.Conn)
	}
	if !b.sawCommand(regexp.MustCompile(`^\S+ AUTHENTICATE PLAIN \S+`)) {
		t.Error("AUTH=PLAIN with SASL-IR was not used")
	}
	selectThrough(t, p, "2")
}

// Without AUTH=PLAIN the login is LOGIN, with literals for 8-bit text and
// quoted strings for specials.
func TestLoginLoginCommand(t *testing.T) {
	for _, pw := range []string{`pa"ss\word`, "pässwörd", "has space"} {
		b := newBackend(t, &backendOptions{noPlain: true})
		b.addUser("alice", pw, "Subject: 1\r\n\r\none\r\n")
		p, err := Login(context.Background(), b.target(), fastTimeouts, "alice", pw)
		if err != nil {
			t.Fatalf("password %q: %v", pw, err)
		}
		if !b.sawCommand(regexp.MustCompile(`^\S+ LOGIN `)) {
			t.Error("LOGIN was not used")
		}
		selectThrough(t, p, "1")
		p.Conn.Close()
	}
}

func TestLoginWrongPassword(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "secret")
	_, err := Login(context.Background(), b.target(), fastTimeouts, "alice", "wrong")
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v, want ErrAuthFailed", err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("error %q contains the password", err)
	}
}

func TestLoginBackendDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfg := &BackendConfig{Address: addr, TLS: TLSNone}
	cfg.ApplyDefaults()
	cfg.Validate()
	start := time.Now()
	_, err := Login(context.Background(), Target{Address: addr, Config: cfg}, fastTimeouts, "alice", "secret")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
}

// A backend that accepts and never answers costs the dial timeout, no more.
func TestLoginSilentBackend(t *testing.T) {
	for _, greet := range []bool{false, true} {
		addr := silentServer(t, greet)
		cfg := &BackendConfig{Address: addr, TLS: TLSNone}
		cfg.ApplyDefaults()
		cfg.Validate()
		start := time.Now()
		_, err := Login(context.Background(), Target{Address: addr, Config: cfg}, Timeouts{Dial: 300 * time.Millisecond}, "alice", "secret")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("greet %v: err = %v", greet, err)
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
			t.Fatalf("greet %v: took %v", greet, d)
		}
	}
}

func TestLoginContextCancel(t *testing.T) {
	addr := silentServer(t, true)
	cfg := &BackendConfig{Address: addr, TLS: TLSNone}
	cfg.ApplyDefaults()
	cfg.Validate()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := Login(ctx, Target{Address: addr, Config: cfg}, Timeouts{Dial: 10 * time.Second}, "a", "b")
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
}

func TestLoginTLS(t *testing.T) {
	for _, implicit := range []bool{false, true} {
		name := map[bool]string{false: "starttls", true: "implicit"}[implicit]
		t.Run(name, func(t *testing.T) {
			srvTLS, caPath := testCert(t)
			b := newBackend(t, &backendOptions{tls: srvTLS, implicit: implicit})
			b.addUser("alice", "secret", "Subject: 1\r\n\r\none\r\n")

			trusted := b.target()
			trusted.Config.CA = caPath
			if errs := trusted.Config.Validate(); len(errs) > 0 {
				t.Fatal(errs)
			}
			p, err := Login(context.Background(), trusted, fastTimeouts, "alice", "secret")
			if err != nil {
				t.Fatal(err)
			}
			selectThrough(t, p, "1")
			p.Conn.Close()

			// System roots do not know the test CA: refused, nothing sent.
			_, err = Login(context.Background(), b.target(), fastTimeouts, "alice", "secret")
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("untrusted certificate: err = %v", err)
			}
		})
	}
}

// scripted runs a hand-written IMAP server for one connection: script gets
// the reader and the conn. It returns a Target for it.
func scripted(t *testing.T, forwardIP bool, script func(br *bufio.Reader, c net.Conn)) Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		script(bufio.NewReader(c), c)
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	// The scripts take commands pipelined behind the login, as Dovecot does.
	cfg := &BackendConfig{Address: ln.Addr().String(), TLS: TLSNone, ForwardClientIP: forwardIP, PipelineLogin: PipelineOn}
	cfg.ApplyDefaults()
	cfg.Validate()
	return Target{Address: cfg.Address, Config: cfg, ClientAddr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 50123},
		LocalAddr: &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 995}}
}

func expectLine(t *testing.T, br *bufio.Reader, re string) []string {
	l, err := br.ReadString('\n')
	if err != nil {
		t.Errorf("script read: %v", err)
		return nil
	}
	m := regexp.MustCompile(re).FindStringSubmatch(strings.TrimSuffix(l, "\r\n"))
	if m == nil {
		t.Errorf("script got %q, want %s", l, re)
	}
	return m
}

// The ID with the client's address goes before the login (pipelined), the
// untagged CAPABILITY before a bare tagged OK counts as the post-login list,
// and bytes sent right after the OK are not lost.
func TestLoginForwardIDAndReadAhead(t *testing.T) {
	tgt := scripted(t, true, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 ID LITERAL+] hi\r\n")
		id := expectLine(t, br, `^(\S+) ID \("x-originating-ip" "192\.0\.2\.7" "x-originating-port" "50123" "x-connected-ip" "198\.51\.100\.1" "x-connected-port" "995"\)$`)
		login := expectLine(t, br, `^(\S+) LOGIN "alice" \{4\+\}$`)
		if id == nil || login == nil {
			return
		}
		expectLine(t, br, `^pä"$`)
		io.WriteString(c, "* ID NIL\r\n"+id[1]+" OK ID done\r\n* CAPABILITY IMAP4rev1 IDLE MOVE\r\n"+
			login[1]+" OK Logged in\r\n* 7 EXISTS\r\n* OK [UIDNEXT 9] pushed at once\r\n")
		expectLine(t, br, `^x NOOP$`)
		io.WriteString(c, "x OK\r\n")
	})
	p, err := Login(context.Background(), tgt, fastTimeouts, "alice", "pä\"")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Conn.Close()
	if strings.Join(p.Caps, " ") != "IMAP4rev1 IDLE MOVE" {
		t.Fatalf("caps %q", p.Caps)
	}
	c := transcript.New(t, p.Conn)
	if l := c.Line(); l != "* 7 EXISTS" {
		t.Fatalf("first handed-over line %q", l)
	}
	if l := c.Line(); l != "* OK [UIDNEXT 9] pushed at once" {
		t.Fatalf("second handed-over line %q", l)
	}
	if l := c.Command("x NOOP", ""); l != "x OK" {
		t.Fatalf("%q", l)
	}
}

// A LOGIN literal without LITERAL+ waits for the continuation request.
func TestLoginSynchronizingLiteral(t *testing.T) {
	tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1] hi\r\n")
		m := expectLine(t, br, `^(\S+) LOGIN \{6\}$`)
		if m == nil {
			return
		}
		io.WriteString(c, "+ go on\r\n")
		expectLine(t, br, `^björn "x"$`)
		io.WriteString(c, m[1]+" OK [CAPABILITY IMAP4rev1 UIDPLUS] welcome\r\n")
	})
	p, err := Login(context.Background(), tgt, fastTimeouts, "björn", "x")
	if err != nil {
		t.Fatal(err)
	}
	p.Conn.Close()
	if strings.Join(p.Caps, " ") != "IMAP4rev1 UIDPLUS" {
		t.Fatalf("caps %q", p.Caps)
	}
}

func TestLoginBackendReplies(t *testing.T) {
	tests := []struct {
		name     string
		greeting string
		reply    string // to the login; %s is the tag
		want     error
	}{
		{"PREAUTH greeting", "* PREAUTH [CAPABILITY IMAP4rev1] as someone\r\n", "", ErrUnavailable},
		{"BYE greeting", "* BYE too busy\r\n", "", ErrUnavailable},
		{"NO UNAVAILABLE", "", "%s NO [UNAVAILABLE] try later\r\n", ErrUnavailable},
		{"NO INUSE", "", "%s NO [INUSE] locked\r\n", ErrInUse},
		{"plain NO", "", "%s NO bad password\r\n", ErrAuthFailed},
		{"NO AUTHENTICATIONFAILED", "", "%s NO [AUTHENTICATIONFAILED] bad\r\n", ErrAuthFailed},
		{"BAD", "", "%s BAD what\r\n", ErrUnavailable},
		{"BYE during login", "", "* BYE going down\r\n", ErrUnavailable},
		{"second challenge", "", "+ more?\r\n%s BAD cancelled\r\n", ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
				if tt.greeting != "" {
					io.WriteString(c, tt.greeting)
					return
				}
				io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
				m := expectLine(t, br, `^(\S+) AUTHENTICATE PLAIN \S+$`)
				if m == nil {
					return
				}
				io.WriteString(c, strings.ReplaceAll(tt.reply, "%s", m[1]))
				if strings.HasPrefix(tt.reply, "+") {
					expectLine(t, br, `^\*$`)
				}
			})
			_, err := Login(context.Background(), tgt, fastTimeouts, "alice", "secret")
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// Data after the backend's STARTTLS OK would be trusted as TLS: refused.
func TestLoginStartTLSInjection(t *testing.T) {
	tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
		m := expectLine(t, br, `^(\S+) STARTTLS$`)
		if m != nil {
			io.WriteString(c, m[1]+" OK go\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
		}
		io.Copy(io.Discard, br)
	})
	tgt.Config.TLS = TLSStartTLS
	_, err := Login(context.Background(), tgt, fastTimeouts, "alice", "secret")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "after the STARTTLS") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoginCommandEncoding(t *testing.T) {
	tests := []struct {
		user, pass string
		nonSync    int
		want       []string
	}{
		{"alice", "secret", 0, []string{`t LOGIN "alice" "secret"` + "\r\n"}},
		{"a\"b", `c\d`, 0, []string{`t LOGIN "a\"b" "c\\d"` + "\r\n"}},
		{"", "", 0, []string{`t LOGIN "" ""` + "\r\n"}},
		{"björn", "x", 0, []string{"t LOGIN {6}\r\n", "björn \"x\"\r\n"}},
		{"björn", "pä", -1, []string{"t LOGIN {6+}\r\nbjörn {3+}\r\npä\r\n"}},
		{"u", "line\r\nbreak", 4, []string{"t LOGIN \"u\" {11}\r\n", "line\r\nbreak\r\n"}},
	}
	for _, tt := range tests {
		var got []string
		for _, p := range loginCommand("t", tt.user, tt.pass, tt.nonSync) {
			got = append(got, string(p))
		}
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("loginCommand(%q, %q, %d) = %q, want %q", tt.user, tt.pass, tt.nonSync, got, tt.want)
		}
	}
}

// Every RFC 5530 code a backend may put on its NO to a login, and what it
// means for the session. Both fronts get the same answer: the IMAP front
// through Login, the POP3 maildrop through Maildrops.Open, which logs in
// with Login too.
func TestLoginResponseCodes(t *testing.T) {
	tests := []struct {
		code string
		want error
	}{
		{"AUTHENTICATIONFAILED", ErrAuthFailed},
		{"AUTHORIZATIONFAILED", ErrAuthFailed},
		{"EXPIRED", ErrAuthFailed},
		{"CONTACTADMIN", ErrAuthFailed},
		{"NOPERM", ErrAuthFailed},
		{"PRIVACYREQUIRED", ErrUnavailable},
		{"INUSE", ErrInUse},
		{"EXPUNGEISSUED", ErrUnavailable},
		{"CORRUPTION", ErrUnavailable},
		{"SERVERBUG", ErrUnavailable},
		{"CLIENTBUG", ErrUnavailable},
		{"CANNOT", ErrUnavailable},
		{"LIMIT", ErrUnavailable},
		{"OVERQUOTA", ErrUnavailable},
		{"UNAVAILABLE", ErrUnavailable},
		{"", ErrAuthFailed},          // servers without RFC 5530 say only NO
		{"X-UNKNOWN", ErrAuthFailed}, // an unknown code on a NO is still a NO
	}
	sentinels := []error{ErrAuthFailed, ErrInUse, ErrUnavailable}
	for _, tt := range tests {
		for _, front := range []string{"imap", "pop3"} {
			t.Run(front+"/"+tt.code, func(t *testing.T) {
				reply := "NO"
				if tt.code != "" {
					reply += " [" + tt.code + "]"
				}
				tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
					io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
					if m := expectLine(t, br, `^(\S+) AUTHENTICATE PLAIN \S+$`); m != nil {
						io.WriteString(c, m[1]+" "+reply+" refused\r\n")
					}
				})
				var err error
				if front == "imap" {
					_, err = Login(context.Background(), tgt, fastTimeouts, "alice", "secret")
				} else {
					_, err = NewMaildrops(testConfig(nil), testLogger(t)).Open(context.Background(), tgt, fastTimeouts, "alice", "secret")
				}
				for _, s := range sentinels {
					if errors.Is(err, s) != (s == tt.want) {
						t.Errorf("err = %v: errors.Is(%v) = %v", err, s, errors.Is(err, s))
					}
				}
				var le *LoginError
				if !errors.As(err, &le) || le.ResponseCode() != strings.ToUpper(tt.code) {
					t.Errorf("err = %#v, want a *LoginError with code %q", err, tt.code)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error mentions the password: %v", err)
				}
			})
		}
	}
}

// The snapshot costs one round trip: the UID FETCH goes out right behind
// the SELECT, before its answer (the scripted backend answers neither until
// it has both).
func TestSnapshotPipelinesSelectAndFetch(t *testing.T) {
	tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
		m := expectLine(t, br, `^(\S+) AUTHENTICATE PLAIN \S+$`)
		if m == nil {
			return
		}
		io.WriteString(c, m[1]+" OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n")
		sel := expectLine(t, br, `^(\S+) SELECT (?:"INBOX"|INBOX)$`)
		fetch := expectLine(t, br, `^(\S+) UID FETCH 1:\* \(`)
		if sel == nil || fetch == nil {
			return
		}
		io.WriteString(c, "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n"+sel[1]+" OK [READ-WRITE] selected\r\n"+
			"* 1 FETCH (UID 3 RFC822.SIZE 12 FLAGS ())\r\n"+fetch[1]+" OK done\r\n")
		br.ReadString('\n') // LOGOUT at Close
		io.WriteString(c, "* BYE bye\r\n")
	})
	md, err := NewMaildrops(testConfig(nil), testLogger(t)).Open(context.Background(), tgt, fastTimeouts, "alice", "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if md.Len() != 1 || md.UID(1) != 3 || md.Size(1) != 12 {
		t.Fatalf("snapshot: %d messages, UID %d, size %d; want 1, 3, 12", md.Len(), md.UID(1), md.Size(1))
	}
}

// The snapshot's SELECT and UID FETCH leave in the login's own write, behind
// the ID with the client's address and the AUTHENTICATE with its initial
// response (RFC 4959): the server sees all four before it answers anything.
// If the login is refused, the SELECT and FETCH get BAD (RFC 9051 §6: not
// valid before login); the refusal is mapped as always (RFC 5530), the
// replies are read, and nothing more reaches the server.
func TestPipelinedLoginRefusedSendsNothingAfter(t *testing.T) {
	got := make(chan []string, 1)
	tgt := scripted(t, true, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] hi\r\n")
		id := expectLine(t, br, `^(\S+) ID \(`)
		auth := expectLine(t, br, `^(\S+) AUTHENTICATE PLAIN \S+$`)
		sel := expectLine(t, br, `^(\S+) SELECT (?:"INBOX"|INBOX)$`)
		fetch := expectLine(t, br, `^(\S+) UID FETCH 1:\* \(`)
		if id == nil || auth == nil || sel == nil || fetch == nil {
			return
		}
		io.WriteString(c, id[1]+" OK ID\r\n"+auth[1]+" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"+
			sel[1]+" BAD Error in IMAP command SELECT: not logged in\r\n"+fetch[1]+" BAD Error in IMAP command UID: not logged in\r\n")
		// Whatever arrives until the client closes.
		var after []string
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				break
			}
			after = append(after, strings.TrimSuffix(l, "\r\n"))
		}
		got <- after
	})
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	_, err := mds.Open(context.Background(), tgt, fastTimeouts, "alice", "wrong")
	var le *LoginError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &le) || le.Code != "AUTHENTICATIONFAILED" {
		t.Fatalf("Open with a refused login: %v, want ErrAuthFailed with [AUTHENTICATIONFAILED]", err)
	}
	select {
	case after := <-got:
		if len(after) > 0 {
			t.Errorf("sent after the refused login: %q", after)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not closed after the refused login")
	}
}

// With LOGIN (no AUTH=PLAIN) in quoted strings the snapshot is pipelined
// behind it too; with a synchronizing literal (8-bit text, and a backend
// without LITERAL+ or LITERAL-) it is not: the server must answer "+" before
// the password goes (RFC 9051 §4.3), and the SELECT waits for the login's
// OK, as before.
func TestPipelinedBehindLoginOnlyWithoutSyncLiteral(t *testing.T) {
	b := newBackend(t, &backendOptions{noPlain: true})
	b.addUser("alice", "secret", "Subject: 1\r\n\r\none\r\n")
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	if md := openMaildrop(t, mds, b, "alice", "secret"); md.Len() != 1 {
		t.Errorf("%d messages, want 1", md.Len())
	}
	lines, reads := b.commandLog()
	if len(lines) < 3 || !strings.Contains(lines[0], " LOGIN ") || !strings.Contains(lines[1], " SELECT ") || reads[0] != reads[2] {
		t.Errorf("LOGIN in quoted strings: %q in reads %v, want LOGIN, SELECT, UID FETCH in one write", lines, reads)
	}

	tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1] hi\r\n")
		login := expectLine(t, br, `^(\S+) LOGIN "alice" \{10\}$`)
		if login == nil {
			return
		}
		io.WriteString(c, "+ go on\r\n")
		expectLine(t, br, `^pässwörd$`)
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if l, err := br.ReadString('\n'); err == nil {
			t.Errorf("sent before the login's reply: %q", l)
			return
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, login[1]+" OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n")
		sel := expectLine(t, br, `^(\S+) SELECT (?:"INBOX"|INBOX)$`)
		fetch := expectLine(t, br, `^(\S+) UID FETCH 1:\* \(`)
		if sel == nil || fetch == nil {
			return
		}
		io.WriteString(c, "* 0 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n"+sel[1]+" OK [READ-WRITE] selected\r\n"+fetch[1]+" OK done\r\n")
		br.ReadString('\n') // LOGOUT at Close
		io.WriteString(c, "* BYE bye\r\n")
	})
	md, err := mds.Open(context.Background(), tgt, fastTimeouts, "alice", "pässwörd")
	if err != nil {
		t.Fatal(err)
	}
	md.Close()
}

// Against the in-memory backend: a wrong password with the snapshot
// pipelined is ErrAuthFailed, and the backend receives the AUTHENTICATE,
// SELECT and UID FETCH in one write and nothing after them.
func TestPipelinedLoginAgainstBackend(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "secret", "Subject: 1\r\n\r\none\r\n", "Subject: 2\r\n\r\ntwo\r\n")
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	if _, err := mds.Open(context.Background(), b.target(), fastTimeouts, "alice", "wrong"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v, want ErrAuthFailed", err)
	}
	time.Sleep(50 * time.Millisecond) // anything sent late would arrive by now
	lines, reads := b.commandLog()
	want := []string{`^\S+ AUTHENTICATE PLAIN \S+$`, `^\S+ SELECT "?INBOX"?$`, `^\S+ UID FETCH 1:\* `}
	if len(lines) != len(want) {
		t.Fatalf("backend received %q, want AUTHENTICATE, SELECT, UID FETCH", lines)
	}
	for i, re := range want {
		if !regexp.MustCompile(re).MatchString(lines[i]) || reads[i] != reads[0] {
			t.Fatalf("backend received %q in reads %v, want AUTHENTICATE, SELECT, UID FETCH in one write", lines, reads)
		}
	}
	// The right password: the same three in one write, then a usable maildrop.
	md := openMaildrop(t, mds, b, "alice", "secret")
	if md.Len() != 2 {
		t.Fatalf("%d messages, want 2", md.Len())
	}
	lines, reads = b.commandLog()
	if len(lines) < 6 || reads[3] != reads[5] {
		t.Fatalf("second login: %q in reads %v, want the snapshot in the login's write", lines, reads)
	}
	if got := readAll(t)(md.Retr(context.Background(), 2)); !strings.Contains(string(got), "two") {
		t.Fatalf("RETR 2 = %q", got)
	}
}

// QUIT waits for its UPDATE and not for LOGOUT: Commit returns once the UID
// STORE and UID EXPUNGE are answered OK, Close returns at once, and the
// LOGOUT goes out afterwards, in the background, while the backend has not
// answered it yet; Maildrops.Wait sees it end when the backend does.
func TestQuitDoesNotWaitForLogout(t *testing.T) {
	logoutSeen := make(chan struct{})
	release := make(chan struct{})
	cutEarly := make(chan bool, 1)
	tgt := scripted(t, false, func(br *bufio.Reader, c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS] hi\r\n")
		auth := expectLine(t, br, `^(\S+) AUTHENTICATE PLAIN \S+$`)
		sel := expectLine(t, br, `^(\S+) SELECT (?:"INBOX"|INBOX)$`)
		fetch := expectLine(t, br, `^(\S+) UID FETCH 1:\* \(`)
		if auth == nil || sel == nil || fetch == nil {
			return
		}
		io.WriteString(c, auth[1]+" OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n* 1 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n"+
			sel[1]+" OK [READ-WRITE] selected\r\n* 1 FETCH (UID 3 RFC822.SIZE 12 FLAGS ())\r\n"+fetch[1]+" OK done\r\n")
		store := expectLine(t, br, `^(\S+) UID STORE 3 \+FLAGS\.SILENT \(\\Deleted\)$`)
		if store == nil {
			return
		}
		io.WriteString(c, store[1]+" OK stored\r\n")
		exp := expectLine(t, br, `^(\S+) UID EXPUNGE 3$`)
		if exp == nil {
			return
		}
		io.WriteString(c, "* 1 EXPUNGE\r\n"+exp[1]+" OK expunged\r\n")
		logout := expectLine(t, br, `^(\S+) LOGOUT$`)
		if logout == nil {
			return
		}
		close(logoutSeen)
		// Until the test says so, the LOGOUT stays unanswered; the
		// connection must not be cut meanwhile (a Close that waited would
		// be cut by its watchdog).
		eof := make(chan struct{})
		go func() { br.ReadByte(); close(eof) }()
		select {
		case <-release:
			cutEarly <- false
		case <-eof:
			cutEarly <- true
			return
		}
		io.WriteString(c, "* BYE bye\r\n"+logout[1]+" OK out\r\n")
		<-eof
	})
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	md, err := mds.Open(context.Background(), tgt, fastTimeouts, "alice", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := md.Commit(context.Background(), []int{1}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	md.Close() // returns before the LOGOUT is even sent, or answered
	<-logoutSeen
	close(release)
	if <-cutEarly {
		t.Fatal("the backend connection was cut before LOGOUT was answered")
	}
	mds.Wait()
}

// Commands go behind the login only where the server is known to read them
// after it: Dovecot by its greeting, or pipeline_login: on. Courier and
// Cyrus lose or misread them (pipelineSafe); the suite in test/backends runs
// them with auto.
func TestPipelineSafe(t *testing.T) {
	for _, tc := range []struct {
		setting, greeting string
		want              bool
	}{
		{PipelineAuto, "Dovecot ready.", true},
		{PipelineAuto, "Dovecot (Debian) ready.", true},
		{PipelineAuto, "cyrus.test Cyrus IMAP 3.6.1-Debian-3.6.1-4+deb12u5 server ready", false},
		{PipelineAuto, "Courier-IMAP ready. Copyright 1998-2019 Double Precision, Inc.", false},
		{PipelineAuto, "IMAP4rev1 server ready", false},
		{PipelineOn, "IMAP4rev1 server ready", true},
		{PipelineOff, "Dovecot ready.", false},
	} {
		if got := pipelineSafe(tc.setting, tc.greeting); got != tc.want {
			t.Errorf("pipelineSafe(%q, %q) = %v, want %v", tc.setting, tc.greeting, got, tc.want)
		}
	}
}
