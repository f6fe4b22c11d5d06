package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// Defaults for zero Timeouts, and of timeouts.backend_dial and
// timeouts.backend_command in the configuration file.
const (
	DefaultDialTimeout    = 10 * time.Second
	DefaultCommandTimeout = 60 * time.Second
)

const (
	// closeTimeout bounds the goodbye of Maildrop.Close (\Seen flush and
	// LOGOUT); the session is over, nobody waits for more than this.
	closeTimeout = 5 * time.Second
)

func (t Timeouts) withDefaults() Timeouts {
	if t.Dial <= 0 {
		t.Dial = DefaultDialTimeout
	}
	if t.Command <= 0 {
		t.Command = DefaultCommandTimeout
	}
	return t
}

// openClient logs in with login and hands the authenticated connection to
// go-imap's client behind a synthesized greeting
// "* PREAUTH [CAPABILITY ...]" (RFC 9051 §7.1.4), which the client takes as
// "authenticated, with these capabilities". Both fronts thus log in through
// the same code; the POP3 maildrop then drives the connection with
// imapclient. It also returns the TCP connection under the client: closing
// it is the watchdogs' way to abort whatever the client is doing
// (Client.Close waits for the client's reader goroutine, which may itself be
// waiting for the consumer of a FETCH literal; closing the socket never
// blocks).
//
// The client exists before the login starts, on a gateConn: when the login
// is one line, pipe issues its commands on the client (the snapshot's SELECT
// and UID FETCH) and they go out in the login's own write, so the login and
// the snapshot cost one round trip together (RFC 9051 §5.5). The client
// reads nothing until the login has succeeded: then the synthesized greeting,
// then whatever the backend sent after the login reply. If the login is
// refused, the commands' replies are read and dropped by login, the client's
// commands fail, and nothing more is sent.
func openClient(ctx context.Context, t Target, to Timeouts, user, password string, unilateral *imapclient.UnilateralDataHandler, pipe func(*imapclient.Client) int) (*imapclient.Client, net.Conn, error) {
	gate := newGateConn()
	// Never set DebugWriter: it copies the raw wire, passwords included.
	c := imapclient.New(gate, &imapclient.Options{UnilateralDataHandler: unilateral})
	var lpipe behind
	if pipe != nil {
		lpipe = func(w io.Writer) int {
			gate.hold(w)
			defer gate.hold(nil)
			return pipe(c)
		}
	}
	s, err := login(ctx, t, to, user, password, lpipe)
	if err != nil {
		gate.fail(err)
		c.Close()
		return nil, nil, err
	}
	raw := s.Conn
	if ra, ok := raw.(*readAheadConn); ok {
		raw = ra.Conn
	}
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	greeting := "* PREAUTH logged in by mailgate\r\n"
	if len(s.Caps) > 0 {
		greeting = "* PREAUTH [CAPABILITY " + strings.Join(clientCaps(s.Caps), " ") + "] logged in by mailgate\r\n"
	}
	gate.open(&readAheadConn{Conn: s.Conn, ahead: []byte(greeting)})
	// The greeting is read from memory (conn's first bytes): no network,
	// so no watchdog.
	err = c.WaitGreeting()
	if err == nil && c.State() != imap.ConnStateAuthenticated && c.State() != imap.ConnStateSelected {
		err = fmt.Errorf("state %v after the synthesized greeting", c.State())
	}
	if err != nil {
		raw.Close()
		c.Close()
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, t.Address, err)
	}
	return c, raw, nil
}

// clientCapNames are the capabilities that change what the maildrop or
// go-imap's client sends: the protocol revision (and what IMAP4rev2 implies,
// RFC 9051 §7.2.2), literals (RFC 7888), UID EXPUNGE (RFC 4315), MOVE (RFC
// 6851), ESEARCH (RFC 4731) and UTF8=ACCEPT (RFC 6855).
var clientCapNames = []string{"IMAP4rev1", "IMAP4rev2", "LITERAL+", "LITERAL-", "UIDPLUS", "MOVE", "ESEARCH", "UTF8=ACCEPT"}

// clientCaps keeps of caps only clientCapNames: the client keeps its
// capabilities in a map for the life of the session, and a backend like
// Dovecot lists some forty.
func clientCaps(caps []string) []string {
	var keep []string
	for _, c := range caps {
		for _, name := range clientCapNames {
			if strings.EqualFold(c, name) {
				keep = append(keep, c)
				break
			}
		}
	}
	if keep == nil {
		// Nothing we use: still a list, so the client does not ask for one.
		keep = []string{"IMAP4rev1"}
	}
	return keep
}

// gateConn is go-imap's client's connection while the login is under way:
// the client's writes go into the login's buffer (hold), so they leave in
// the login's write, and its reads wait until open gives it the logged-in
// connection (or fail, an error). Deadlines set before open are dropped:
// the login's own deadline rules the connection until then.
type gateConn struct {
	mu    sync.Mutex
	held  io.Writer // set: writes are buffered here
	conn  net.Conn  // set by open
	err   error     // set by fail
	ready chan struct{}
}

func newGateConn() *gateConn { return &gateConn{ready: make(chan struct{})} }

func (g *gateConn) hold(w io.Writer) {
	g.mu.Lock()
	g.held = w
	g.mu.Unlock()
}

func (g *gateConn) open(conn net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil && g.err == nil {
		g.conn = conn
		close(g.ready)
	}
}

func (g *gateConn) fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil && g.err == nil {
		g.err = err
		close(g.ready)
	}
}

// opened waits for open or fail.
func (g *gateConn) opened() (net.Conn, error) {
	<-g.ready
	return g.conn, g.err
}

func (g *gateConn) Read(p []byte) (int, error) {
	c, err := g.opened()
	if err != nil {
		return 0, err
	}
	return c.Read(p)
}

func (g *gateConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	if g.held != nil {
		defer g.mu.Unlock()
		return g.held.Write(p)
	}
	g.mu.Unlock()
	c, err := g.opened()
	if err != nil {
		return 0, err
	}
	return c.Write(p)
}

func (g *gateConn) Close() error {
	g.fail(net.ErrClosed)
	if c, _ := g.opened(); c != nil {
		return c.Close()
	}
	return nil
}

// current is the connection once open, else nil.
func (g *gateConn) current() net.Conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conn
}

func (g *gateConn) LocalAddr() net.Addr {
	if c := g.current(); c != nil {
		return c.LocalAddr()
	}
	return &net.TCPAddr{}
}

func (g *gateConn) RemoteAddr() net.Addr {
	if c := g.current(); c != nil {
		return c.RemoteAddr()
	}
	return &net.TCPAddr{}
}

func (g *gateConn) SetDeadline(t time.Time) error {
	if c := g.current(); c != nil {
		return c.SetDeadline(t)
	}
	return nil
}

func (g *gateConn) SetReadDeadline(t time.Time) error {
	if c := g.current(); c != nil {
		return c.SetReadDeadline(t)
	}
	return nil
}

func (g *gateConn) SetWriteDeadline(t time.Time) error {
	if c := g.current(); c != nil {
		return c.SetWriteDeadline(t)
	}
	return nil
}

// commandError wraps the failure of a backend command after login. A tagged
// NO/BAD keeps its *imap.Error for errors.As; everything else (connection
// closed, watchdog) is the backend being unavailable.
func commandError(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// isStatus reports whether err is a tagged NO or BAD (the command failed but
// the connection is fine), as opposed to a dead connection.
func isStatus(err error) bool {
	var ierr *imap.Error
	return errors.As(err, &ierr)
}

// watchdog calls its function once d passes, unless stopped first. It is the
// timeout of go-imap commands: closing the client fails every pending
// Wait/Next with an error.
type watchdog struct {
	mu      sync.Mutex
	timer   *time.Timer
	gen     uint64 // invalidates a timer that fired while being re-armed
	fired   bool
	stopped bool
	expire  func()
}

func watch(d time.Duration, onExpiry func()) *watchdog {
	w := &watchdog{expire: onExpiry}
	w.arm(d)
	return w
}

// arm starts a new timer; w.mu is held or w is not shared yet.
func (w *watchdog) arm(d time.Duration) {
	if d <= 0 {
		d = time.Nanosecond
	}
	w.gen++
	gen := w.gen
	w.timer = time.AfterFunc(d, func() {
		w.mu.Lock()
		if w.stopped || w.gen != gen {
			w.mu.Unlock()
			return
		}
		w.fired = true
		w.mu.Unlock()
		w.expire()
	})
}

// reset re-arms the watchdog for d from now; it reports false if the
// watchdog had fired already (then it stays fired).
func (w *watchdog) reset(d time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired {
		return false
	}
	w.timer.Stop()
	w.stopped = false
	w.arm(d)
	return true
}

// hasFired reports whether the watchdog has fired.
func (w *watchdog) hasFired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}

// stop disarms the watchdog and reports whether it had fired.
func (w *watchdog) stop() (fired bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
	return w.fired
}
