package upstream

// Test backends: go-imap's imapserver over imapmemserver, on 127.0.0.1:0,
// behind a listener that counts the commands it receives and can add
// latency, stall, or rewrite what the server says.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"mailgate/test/loopback"
	"mailgate/test/testca"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// backendOptions shape a test backend.
type backendOptions struct {
	rev1Only   bool          // IMAP4rev1 without UIDPLUS/MOVE
	noPlain    bool          // offer no SASL mechanism: clients must use LOGIN
	latency    time.Duration // one-way delay of client-to-server bytes
	tls        *tls.Config   // serve STARTTLS with this
	implicit   bool          // serve implicit TLS (needs tls)
	sizeLie    int64         // added to every RFC822.SIZE the server reports
	bodyFirst  bool          // send BODY[] before UID in FETCH responses (small bodies only)
	flagsFirst bool          // send FLAGS before UID in FETCH responses, as Cyrus does
	stallBody  atomic.Bool   // stop answering once a body FETCH arrives
}

// backend is a running test IMAP server.
type backend struct {
	t     testing.TB
	addr  string
	mem   *imapmemserver.Server
	users map[string]*imapmemserver.User
	opts  *backendOptions

	sent atomic.Int64 // bytes the server wrote, to every client

	mu          sync.Mutex
	bodyFetches map[imap.UID]int // UID FETCH ... BODY.PEEK[] per UID
	commands    []string         // every command line, credentials included (tests only)
	reads       []int            // reads[i]: the read (numbered over all connections) that completed commands[i]
	readSeq     int
}

var bodyFetchRE = regexp.MustCompile(`^\S+ UID FETCH (\d+) \(.*BODY\.PEEK\[\]`)

func newBackend(t testing.TB, opts *backendOptions) *backend {
	t.Helper()
	if opts == nil {
		opts = &backendOptions{}
	}
	b := &backend{t: t, mem: imapmemserver.New(), users: map[string]*imapmemserver.User{}, opts: opts,
		bodyFetches: map[imap.UID]int{}}
	caps := imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}}
	if opts.rev1Only {
		caps = imap.CapSet{imap.CapIMAP4rev1: {}}
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			s := b.mem.NewSession()
			if opts.noPlain {
				return noSASLSession{s.(imapserver.SessionIMAP4rev2)}, nil, nil
			}
			return s, nil, nil
		},
		Caps:         caps,
		InsecureAuth: true,
		TLSConfig:    opts.tls,
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var sln net.Listener = &wrapListener{Listener: ln, b: b}
	if opts.implicit {
		sln = tls.NewListener(sln, opts.tls)
	}
	b.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(sln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return b
}

// noSASLSession hides AUTH=PLAIN so that clients fall back to LOGIN.
type noSASLSession struct{ imapserver.SessionIMAP4rev2 }

func (noSASLSession) AuthenticateMechanisms() []string { return nil }
func (noSASLSession) Authenticate(string) (sasl.Server, error) {
	return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "no SASL here"}
}

// addUser creates a user with an INBOX holding msgs.
func (b *backend) addUser(name, password string, msgs ...string) *imapmemserver.User {
	b.t.Helper()
	u := imapmemserver.NewUser(name, password)
	if err := u.Create("INBOX", nil); err != nil {
		b.t.Fatal(err)
	}
	for _, m := range msgs {
		if _, err := u.Append("INBOX", bytes.NewReader([]byte(m)), &imap.AppendOptions{}); err != nil {
			b.t.Fatal(err)
		}
	}
	b.mem.AddUser(u)
	b.users[name] = u
	return b.users[name]
}

func (b *backend) target() Target {
	// go-imap's server takes commands pipelined behind the login.
	cfg := &BackendConfig{Address: b.addr, TLS: TLSNone, PipelineLogin: PipelineOn}
	if b.opts.tls != nil {
		cfg.TLS = TLSStartTLS
		if b.opts.implicit {
			cfg.TLS = TLSImplicit
		}
	}
	cfg.ApplyDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		b.t.Fatal(errs)
	}
	return Target{Name: "test", Address: b.addr, Config: cfg}
}

func (b *backend) fetchesOf(uid imap.UID) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bodyFetches[uid]
}

func (b *backend) totalFetches() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, c := range b.bodyFetches {
		n += c
	}
	return n
}

func (b *backend) sawCommand(re *regexp.Regexp) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.commands {
		if re.MatchString(c) {
			return true
		}
	}
	return false
}

// commandLog is every command line the backend received, in order, and the
// read that completed each (lines of one client write share a read number,
// on loopback).
func (b *backend) commandLog() (lines []string, reads []int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.commands), slices.Clone(b.reads)
}

// client logs in to the backend directly, as another IMAP client would.
func (b *backend) client(user, password string) *imapclient.Client {
	b.t.Helper()
	c, err := imapclient.DialInsecure(b.addr, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { c.Close() })
	if err := c.Login(user, password).Wait(); err != nil {
		b.t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.t.Fatal(err)
	}
	return c
}

type wrapListener struct {
	net.Listener
	b *backend
}

func (l *wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	w := &serverConn{Conn: c, b: l.b}
	if d := l.b.opts.latency; d > 0 {
		w.in = newDelayReader(c, d)
	} else {
		w.in = c
	}
	return w, nil
}

// serverConn is the server's side of one connection.
type serverConn struct {
	net.Conn
	b       *backend
	in      io.Reader
	partial []byte
	stalled atomic.Bool
}

func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.in.Read(p)
	if n > 0 {
		c.record(p[:n])
	}
	if c.stalled.Load() {
		// Swallow everything from now on: the server never sees another
		// command, the client never gets an answer; the commands are still
		// counted.
		for {
			n, err := c.in.Read(p)
			if n > 0 {
				c.record(p[:n])
			}
			if err != nil {
				return 0, err
			}
		}
	}
	return n, err
}

var sizeRE = regexp.MustCompile(`RFC822\.SIZE (\d+)`)

var uidFlagsRE = regexp.MustCompile(`\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)`)

var fetchRespRE = regexp.MustCompile(`\* (\d+) FETCH \(UID (\d+) ((?:FLAGS \([^)]*\) )?)BODY\[\] \{(\d+)\}\r\n`)

func (c *serverConn) Write(p []byte) (int, error) {
	c.b.sent.Add(int64(len(p)))
	if c.b.opts.flagsFirst && uidFlagsRE.Match(p) {
		// Same length: a literal after it is unaffected.
		q := uidFlagsRE.ReplaceAll(p, []byte("* $1 FETCH (FLAGS ($3) UID $2"))
		if _, err := c.Conn.Write(q); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if c.b.opts.bodyFirst {
		if m := fetchRespRE.FindSubmatchIndex(p); m != nil {
			n, _ := strconv.Atoi(string(p[m[8]:m[9]]))
			lit := p[m[1] : m[1]+n]
			rest := p[m[1]+n:] // ")\r\n..."
			q := fmt.Appendf(nil, "%s* %s FETCH (%sBODY[] {%d}\r\n%s UID %s%s",
				p[:m[0]], p[m[2]:m[3]], p[m[6]:m[7]], n, lit, p[m[4]:m[5]], rest)
			if _, err := c.Conn.Write(q); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	if lie := c.b.opts.sizeLie; lie != 0 && bytes.Contains(p, []byte("RFC822.SIZE")) {
		q := sizeRE.ReplaceAllFunc(p, func(m []byte) []byte {
			v, _ := strconv.ParseInt(string(sizeRE.FindSubmatch(m)[1]), 10, 64)
			return []byte("RFC822.SIZE " + strconv.FormatInt(v+lie, 10))
		})
		if _, err := c.Conn.Write(q); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// record splits the client's bytes into lines and counts body FETCHes.
func (c *serverConn) record(p []byte) {
	c.b.mu.Lock()
	c.b.readSeq++
	seq := c.b.readSeq
	c.b.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.Index(c.partial, []byte("\r\n"))
		if i < 0 {
			return
		}
		line := string(c.partial[:i])
		c.partial = c.partial[i+2:]
		c.b.mu.Lock()
		c.b.commands = append(c.b.commands, line)
		c.b.reads = append(c.b.reads, seq)
		if m := bodyFetchRE.FindStringSubmatch(line); m != nil {
			uid, _ := strconv.ParseUint(m[1], 10, 32)
			c.b.bodyFetches[imap.UID(uid)]++
			if c.b.opts.stallBody.Load() {
				c.stalled.Store(true)
			}
		}
		c.b.mu.Unlock()
	}
}

// delayReader delivers each chunk read from r only d after it arrived:
// a link with latency d and unlimited bandwidth.
type delayReader struct {
	ch  chan delayed
	buf []byte
	err error
}

type delayed struct {
	at   time.Time
	data []byte
	err  error
}

func newDelayReader(r io.Reader, d time.Duration) *delayReader {
	dr := &delayReader{ch: make(chan delayed, 1024)}
	go func() {
		for {
			buf := make([]byte, 32<<10)
			n, err := r.Read(buf)
			dr.ch <- delayed{at: time.Now().Add(d), data: buf[:n], err: err}
			if err != nil {
				close(dr.ch)
				return
			}
		}
	}()
	return dr
}

func (r *delayReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		c, ok := <-r.ch
		if !ok {
			return 0, io.EOF
		}
		time.Sleep(time.Until(c.at))
		r.buf, r.err = c.data, c.err
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// silentServer greets (if greet) and then reads and ignores everything.
func silentServer(t testing.TB, greet bool) string {
	t.Helper()
	return loopback.Serve(t, func(c net.Conn) {
		if greet {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] silent\r\n")
		}
		io.Copy(io.Discard, bufio.NewReader(c))
	})
}

// testCert issues a certificate for 127.0.0.1 and localhost from a new
// test/testca root and writes the root to a file for BackendConfig.CA.
func testCert(t testing.TB) (*tls.Config, string) {
	t.Helper()
	ca := testca.NewT(t)
	cert := ca.CertificateT(t, "localhost", "127.0.0.1")
	path, err := ca.WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, path
}

// testConfig is a MaildropConfig with defaults, changed by f.
func testConfig(f func(*MaildropConfig)) MaildropConfig {
	var cfg MaildropConfig
	if f != nil {
		f(&cfg)
	}
	cfg.ApplyDefaults()
	return cfg
}

func size(s Size) *Size { return &s }

var fastTimeouts = Timeouts{Dial: 2 * time.Second, Command: 2 * time.Second}

// open opens alice's maildrop and closes it at the end of the test.
func openMaildrop(t testing.TB, mds *Maildrops, b *backend, user, password string) *Maildrop {
	t.Helper()
	md, err := mds.Open(context.Background(), b.target(), fastTimeouts, user, password)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	// Close's clean-up runs in the background: wait for it, so that it
	// neither logs after the test nor outlives the backend.
	t.Cleanup(func() { md.Close(); mds.Wait() })
	return md
}

func testLogger(t testing.TB) *zap.Logger {
	if tt, ok := t.(*testing.T); ok {
		return zaptest.NewLogger(tt, zaptest.Level(zap.InfoLevel))
	}
	return zap.NewNop()
}

// readAll returns a function that reads a Retr or Top result whole:
// readAll(t)(md.Retr(ctx, 1)).
func readAll(t testing.TB) func(io.ReadCloser, error) []byte {
	return func(rc io.ReadCloser, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
}
