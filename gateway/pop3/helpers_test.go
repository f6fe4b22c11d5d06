package pop3

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"mailgate/test/testca"
	"mailgate/test/transcript"
)

// Test credentials. The password is distinctive so log tests can search for it.
const (
	testUser = "alice@example.org"
	testPass = "s3cr3t-Pa55word"
)

type fakeMsg struct {
	uidl string
	body string // as the backend stores it; Size is its wire size
}

// fakeBackend is a Backend whose behaviour tests switch per case.
type fakeBackend struct {
	users map[string]string // user -> password
	msgs  []fakeMsg

	openErr     error        // returned by Open after the credentials were accepted
	retrErr     error        // returned by Retr/Top at once
	failAfter   int          // >0: body readers fail after this many octets
	gone        map[int]bool // message numbers whose Retr/Top return ErrMessageGone
	commitErr   error
	panicOnRetr bool          // Retr/Top panic: a backend bug
	closeDelay  time.Duration // Close takes this long (LOGOUT to a slow backend)

	mu      sync.Mutex
	logins  []Login
	commits [][]int
	closes  int
	retrs   []int
	tops    []int
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		users: map[string]string{testUser: testPass, "bob": "pass word with spaces"},
		msgs: []fakeMsg{
			{"UID-one", "Subject: one\r\nFrom: a@example.org\r\n\r\nHello.\r\n"},
			{"UID-two", "Subject: two\r\n\r\n.leading dot\r\n..two dots\r\nline 3\r\nline 4\r\n"},
			{"UID-three", "Subject: three\n\nbare LF line\nno final newline"},
		},
	}
}

func (b *fakeBackend) Open(ctx context.Context, l Login) (Maildrop, error) {
	b.mu.Lock()
	b.logins = append(b.logins, l)
	b.mu.Unlock()
	if pw, ok := b.users[l.User]; !ok || pw != l.Password {
		return nil, fmt.Errorf("backend said NO: %w", ErrAuthFailed)
	}
	if b.openErr != nil {
		return nil, b.openErr
	}
	return &fakeMaildrop{b: b}, nil
}

// calls returns what the sessions asked of the backend so far.
func (b *fakeBackend) calls() (logins []Login, retrs, tops []int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Login(nil), b.logins...), append([]int(nil), b.retrs...), append([]int(nil), b.tops...)
}

func (b *fakeBackend) counts() (commits [][]int, closes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]int(nil), b.commits...), b.closes
}

type fakeMaildrop struct{ b *fakeBackend }

func (m *fakeMaildrop) Len() int { return len(m.b.msgs) }

func (m *fakeMaildrop) Size(n int) int64 { return int64(len(wireForm(m.b.msgs[n-1].body))) }

func (m *fakeMaildrop) UIDL(n int) string { return m.b.msgs[n-1].uidl }

func (m *fakeMaildrop) open(n int) (io.ReadCloser, error) {
	if m.b.panicOnRetr {
		panic("fake backend bug")
	}
	if m.b.retrErr != nil {
		return nil, m.b.retrErr
	}
	if m.b.gone[n] {
		return nil, fmt.Errorf("uid fetch: %w", ErrMessageGone)
	}
	var r io.Reader = strings.NewReader(m.b.msgs[n-1].body)
	if m.b.failAfter > 0 {
		r = io.MultiReader(io.LimitReader(r, int64(m.b.failAfter)), errReader{errors.New("backend connection reset")})
	}
	return io.NopCloser(r), nil
}

func (m *fakeMaildrop) Retr(ctx context.Context, n int) (io.ReadCloser, error) {
	m.b.mu.Lock()
	m.b.retrs = append(m.b.retrs, n)
	m.b.mu.Unlock()
	return m.open(n)
}

func (m *fakeMaildrop) Top(ctx context.Context, n, lines int) (io.ReadCloser, error) {
	m.b.mu.Lock()
	m.b.tops = append(m.b.tops, n)
	m.b.mu.Unlock()
	return m.open(n)
}

func (m *fakeMaildrop) Commit(ctx context.Context, deleted []int) error {
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	m.b.commits = append(m.b.commits, append([]int{}, deleted...))
	return m.b.commitErr
}

func (m *fakeMaildrop) Close() error {
	time.Sleep(m.b.closeDelay)
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	m.b.closes++
	return nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// wireForm is what RETR must deliver before dot-stuffing: CRLF line ends and
// a final CRLF where the data lacks one (the model the fuzz test checks
// dotWriter against).
func wireForm(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' && (i == 0 || s[i-1] != '\r') {
			b.WriteByte('\r')
		}
		b.WriteByte(s[i])
	}
	out := b.String()
	if out != "" && !strings.HasSuffix(out, "\r\n") {
		out += "\r\n"
	}
	return out
}

// unstuff decodes a dot-stuffed multi-line body (terminator included) into
// the body it carries, checking the framing as a strict client would.
func unstuff(wire []byte) ([]byte, error) {
	var out bytes.Buffer
	for len(wire) > 0 {
		i := bytes.Index(wire, []byte("\r\n"))
		if i < 0 {
			return nil, errors.New("line without CRLF")
		}
		line := wire[:i]
		wire = wire[i+2:]
		if string(line) == "." {
			if len(wire) != 0 {
				return nil, errors.New("data after terminator")
			}
			return out.Bytes(), nil
		}
		if len(line) > 0 && line[0] == '.' {
			if len(line) < 2 || line[1] != '.' {
				return nil, fmt.Errorf("unstuffed line %q", line)
			}
			line = line[1:]
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	return nil, errors.New("no terminator")
}

// testServer serves POP3 on 127.0.0.1 with a fake backend.
type testServer struct {
	t      *testing.T
	srv    *Server
	b      *fakeBackend
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	writes atomic.Int64 // Write calls on server-side connections
}

// newTestServer starts a server; mod adjusts the config (defaults: plaintext
// allowed, no auth delay, a test logger).
func newTestServer(t *testing.T, b *fakeBackend, mod func(*Config)) *testServer {
	t.Helper()
	if b == nil {
		b = newFakeBackend()
	}
	cfg := Config{
		Listener:           "test",
		Backend:            b,
		AllowPlaintextAuth: true,
		AuthFailureDelay:   -1,
		IdleTimeout:        10 * time.Second,
		Logger:             zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
	}
	if mod != nil {
		mod(&cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{t: t, srv: NewServer(cfg), b: b, ln: ln, ctx: ctx, cancel: cancel}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var conn net.Conn = &countingConn{Conn: c, writes: &ts.writes}
			if cfg.ImplicitTLS {
				conn = tls.Server(conn, cfg.TLSConfig)
			}
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				ts.srv.Serve(ctx, conn)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		ts.wg.Wait()
	})
	return ts
}

// wantCommits waits for the sessions to end, then checks the commits the
// backend saw (nil: none) and how many maildrops were closed.
func (ts *testServer) wantCommits(want [][]int, closes int) {
	ts.t.Helper()
	ts.wait()
	// Sprint: a commit of no deletions may be nil or empty.
	if commits, n := ts.b.counts(); fmt.Sprint(commits) != fmt.Sprint(want) || n != closes {
		ts.t.Fatalf("commits %v closes %d, want %v and %d", commits, n, want, closes)
	}
}

// wait waits until every session has ended (the listener is closed).
func (ts *testServer) wait() {
	ts.t.Helper()
	ts.ln.Close()
	done := make(chan struct{})
	go func() { ts.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		ts.t.Fatal("sessions did not end")
	}
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// dial connects and reads the greeting.
func (ts *testServer) dial() *transcript.Conn {
	ts.t.Helper()
	c := ts.dialRaw()
	c.Expect("+OK mailgate ready")
	return c
}

// dialRaw connects without reading the greeting.
func (ts *testServer) dialRaw() *transcript.Conn {
	ts.t.Helper()
	return transcript.Dial(ts.t, ts.ln.Addr().String())
}

// login dials and logs in with USER/PASS.
func (ts *testServer) login() *transcript.Conn {
	ts.t.Helper()
	c := ts.dial()
	c.Command("USER "+testUser, "+OK")
	c.Command("PASS "+testPass, "+OK")
	return c
}

// testServerName is the name on the test certificate.
const testServerName = "mail.example.org"

// testCA issues the package's test certificates.
var testCA = sync.OnceValues(testca.New)

// testTLSConfig is a server config with a fresh certificate for
// testServerName from testCA.
func testTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate(testServerName)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// clientTLS is a client config that trusts testCA.
func clientTLS(t testing.TB) *tls.Config {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: ca.Pool(), ServerName: testServerName}
}
