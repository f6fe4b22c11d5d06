package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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

// openClient logs in with Login and hands the authenticated connection to
// go-imap's client behind a synthesized greeting
// "* PREAUTH [CAPABILITY ...]" (RFC 9051 §7.1.4), which the client takes as
// "authenticated, with these capabilities". Both fronts thus log in through
// the same code; the POP3 maildrop then drives the connection with
// imapclient. It also returns the TCP connection under the client: closing
// it is the watchdogs' way to abort whatever the client is doing
// (Client.Close waits for the client's reader goroutine, which may itself be
// waiting for the consumer of a FETCH literal; closing the socket never
// blocks).
func openClient(ctx context.Context, t Target, to Timeouts, user, password string, unilateral *imapclient.UnilateralDataHandler) (*imapclient.Client, net.Conn, error) {
	s, err := Login(ctx, t, to, user, password)
	if err != nil {
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
		greeting = "* PREAUTH [CAPABILITY " + strings.Join(s.Caps, " ") + "] logged in by mailgate\r\n"
	}
	conn := &readAheadConn{Conn: s.Conn, ahead: []byte(greeting)}
	// Never set DebugWriter: it copies the raw wire, passwords included.
	c := imapclient.New(conn, &imapclient.Options{UnilateralDataHandler: unilateral})
	// The greeting is read from memory (conn's first bytes): no network,
	// so no watchdog.
	err = c.WaitGreeting()
	if err == nil && c.State() != imap.ConnStateAuthenticated {
		err = fmt.Errorf("state %v after the synthesized greeting", c.State())
	}
	if err != nil {
		raw.Close()
		c.Close()
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, t.Address, err)
	}
	return c, raw, nil
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
