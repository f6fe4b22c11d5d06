package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
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

func (m *fakeMaildrop) Top(ctx context.Context, n int) (io.ReadCloser, error) {
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

// client is a raw POP3 transcript client.
type client struct {
	t        *testing.T
	conn     net.Conn
	r        *bufio.Reader
	greeting string
}

// dial connects and reads the greeting.
func (ts *testServer) dial() *client {
	ts.t.Helper()
	conn, err := net.Dial("tcp", ts.ln.Addr().String())
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { conn.Close() })
	c := &client{t: ts.t, conn: conn, r: bufio.NewReader(conn)}
	c.greeting = c.expect("+OK mailgate ready <")
	return c
}

// login dials and logs in with USER/PASS.
func (ts *testServer) login() *client {
	ts.t.Helper()
	c := ts.dial()
	c.cmd("USER "+testUser, "+OK")
	c.cmd("PASS "+testPass, "+OK")
	return c
}

func (c *client) send(line string) {
	c.t.Helper()
	c.sendRaw(line + "\r\n")
}

func (c *client) sendRaw(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// line reads one line and returns it without CRLF.
func (c *client) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// expect reads a line and checks its prefix.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

func (c *client) cmd(line, prefix string) string {
	c.t.Helper()
	c.send(line)
	return c.expect(prefix)
}

// lines reads the lines of a multi-line response up to the terminator,
// unstuffed.
func (c *client) lines() []string {
	c.t.Helper()
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		if strings.HasPrefix(l, ".") {
			l = l[1:]
		}
		out = append(out, l)
	}
}

// body reads a multi-line response body raw, terminator included.
func (c *client) body() []byte {
	c.t.Helper()
	var raw bytes.Buffer
	for {
		l := c.line()
		raw.WriteString(l + "\r\n")
		if l == "." {
			return raw.Bytes()
		}
	}
}

// expectClosed checks that the server closes the connection without sending
// anything more.
func (c *client) expectClosed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
		c.t.Fatalf("waiting for close: %v", err)
	}
	if len(rest) > 0 {
		c.t.Fatalf("got %q before close, want nothing", rest)
	}
}

func isConnReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// testTLSConfig is a server config with a fresh self-signed certificate.
func testTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mail.example.org"},
		DNSNames:     []string{"mail.example.org"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// startTLS turns the client's connection into a TLS client connection.
func (c *client) startTLS() {
	c.t.Helper()
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true, ServerName: "mail.example.org"})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.conn = tc
	c.r = bufio.NewReader(tc)
}

func newBufReader(conn net.Conn) *bufio.Reader { return bufio.NewReader(conn) }

// dialRaw connects without reading the greeting.
func (ts *testServer) dialRaw() *client {
	ts.t.Helper()
	conn, err := net.Dial("tcp", ts.ln.Addr().String())
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { conn.Close() })
	return &client{t: ts.t, conn: conn, r: bufio.NewReader(conn)}
}
