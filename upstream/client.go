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
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"
)

// Defaults for zero Timeouts (DESIGN.md: backend_dial 10s, backend_command 60s).
const (
	timeoutDialDefault    = 10 * time.Second
	timeoutCommandDefault = 60 * time.Second
	// closeTimeout bounds the goodbye of Maildrop.Close (\Seen flush and
	// LOGOUT); the session is over, nobody waits for more than this.
	closeTimeout = 5 * time.Second
)

func (t Timeouts) withDefaults() Timeouts {
	if t.Dial <= 0 {
		t.Dial = timeoutDialDefault
	}
	if t.Command <= 0 {
		t.Command = timeoutCommandDefault
	}
	return t
}

// DialIMAP connects to the backend server t and returns an imapclient.Client
// that has received the server's greeting and, for tls: starttls, completed
// STARTTLS (RFC 3501 §6.2.1) with certificate verification against
// t.Config's roots and server name. Everything, from the TCP connect to the
// greeting, happens within to.Dial and ctx.
//
// go-imap's client has no timeouts of its own between responses: callers must
// bound every later command themselves (Login does; so does Maildrop). Errors
// wrap ErrUnavailable.
func DialIMAP(ctx context.Context, t Target, to Timeouts, log *zap.Logger) (*imapclient.Client, error) {
	c, _, err := dialIMAP(ctx, t, to, log, nil)
	return c, err
}

// dialIMAP is DialIMAP with a handler for unsolicited responses (EXISTS,
// EXPUNGE, FETCH from other clients' changes), which the maildrop records.
// It also returns the TCP connection under the client: closing it is the
// watchdogs' way to abort whatever the client is doing. (Client.Close waits
// for the client's reader goroutine, which may itself be waiting for the
// consumer of a FETCH literal; closing the socket never blocks.)
func dialIMAP(ctx context.Context, t Target, to Timeouts, log *zap.Logger, unilateral *imapclient.UnilateralDataHandler) (*imapclient.Client, net.Conn, error) {
	to = to.withDefaults()
	if log == nil {
		log = zap.NewNop()
	}
	start := time.Now()
	conn, err := dialConn(ctx, t, to.Dial)
	if err != nil {
		return nil, nil, err
	}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	// The greeting and STARTTLS get what is left of the dial budget. Closing
	// the conn is the only way to interrupt imapclient: it has no context.
	wd := watch(to.Dial-time.Since(start), func() { raw.Close() })
	stopCtx := context.AfterFunc(ctx, func() { raw.Close() })
	defer stopCtx()

	// Never set DebugWriter: it copies the raw wire, passwords included.
	opts := &imapclient.Options{UnilateralDataHandler: unilateral}
	var c *imapclient.Client
	if t.Config.TLS == TLSStartTLS {
		// NewStartTLS uses the configuration as is; TLSConfig fills
		// ServerName so that the certificate is verified for the right name.
		opts.TLSConfig = t.Config.TLSConfig(t.Address)
		c, err = imapclient.NewStartTLS(conn, opts)
	} else {
		c = imapclient.New(conn, opts)
		if err = c.WaitGreeting(); err != nil {
			c.Close()
		}
	}
	fired := wd.stop()
	if err != nil {
		conn.Close()
		switch {
		case fired:
			return nil, nil, fmt.Errorf("%w: no greeting from %s within %v", ErrUnavailable, t.Address, to.Dial)
		case ctx.Err() != nil:
			return nil, nil, fmt.Errorf("%w: dial %s: %w", ErrUnavailable, t.Address, ctx.Err())
		}
		return nil, nil, fmt.Errorf("%w: greeting from %s: %w", ErrUnavailable, t.Address, err)
	}
	if c.State() != imap.ConnStateNotAuthenticated {
		// PREAUTH would log us in as somebody without checking the user's
		// password; BYE is a refusal.
		c.Close()
		return nil, nil, fmt.Errorf("%w: %s greeted in state %v, want not authenticated", ErrUnavailable, t.Address, c.State())
	}
	log.Debug("backend connected", zap.String("address", t.Address), zap.String("tls", t.Config.TLS),
		zap.Duration("elapsed", time.Since(start)))
	return c, raw, nil
}

// Login authenticates with the user's own credentials: AUTHENTICATE PLAIN
// (RFC 4616) when the backend offers AUTH=PLAIN, else LOGIN, within
// to.Dial. A NO from the backend wraps ErrAuthFailed (the backend's text stays
// in the error, for logs only; never show it to clients); a broken or silent
// connection wraps ErrUnavailable and leaves c closed.
func Login(ctx context.Context, c *imapclient.Client, user, password string, to Timeouts) error {
	return login(ctx, c, func() { c.Close() }, user, password, to)
}

// login is Login with the function that aborts the connection.
func login(ctx context.Context, c *imapclient.Client, kill func(), user, password string, to Timeouts) error {
	if strings.ContainsRune(user, 0) || strings.ContainsRune(password, 0) {
		// Neither PLAIN (RFC 4616 §2) nor an IMAP string can carry NUL.
		return fmt.Errorf("%w: credentials contain NUL", ErrAuthFailed)
	}
	to = to.withDefaults()
	wd := watch(to.Dial, kill)
	stopCtx := context.AfterFunc(ctx, kill)
	defer stopCtx()

	caps := c.Caps() // may send CAPABILITY
	var err error
	switch {
	case caps == nil:
		err = errors.New("no capabilities")
	case caps.Has(imap.AuthCap(sasl.Plain)):
		err = c.Authenticate(sasl.NewPlainClient("", user, password))
	case caps.Has(imap.CapLoginDisabled):
		// RFC 3501 §6.2.3: LOGIN is refused on this (cleartext) connection.
		wd.stop()
		return fmt.Errorf("%w: backend advertises LOGINDISABLED and no AUTH=PLAIN: configure tls: starttls or implicit", ErrUnavailable)
	default:
		err = c.Login(user, password).Wait()
	}
	if wd.stop() {
		return fmt.Errorf("%w: login timed out after %v", ErrUnavailable, to.Dial)
	}
	if err != nil {
		return loginError(err)
	}
	return nil
}

// loginError maps a failed LOGIN/AUTHENTICATE to our sentinels (RFC 5530
// response codes).
func loginError(err error) error {
	var ierr *imap.Error
	if !errors.As(err, &ierr) {
		return fmt.Errorf("%w: login: %w", ErrUnavailable, err)
	}
	switch ierr.Code {
	case imap.ResponseCodeUnavailable, imap.ResponseCodeServerBug, imap.ResponseCodeLimit,
		imap.ResponseCodeContactAdmin, imap.ResponseCodePrivacyRequired:
		return fmt.Errorf("%w: login: %w", ErrUnavailable, err)
	case imap.ResponseCodeInUse:
		return fmt.Errorf("%w: login: %w", ErrInUse, err)
	}
	if ierr.Type == imap.StatusResponseTypeNo {
		// AUTHENTICATIONFAILED, AUTHORIZATIONFAILED, EXPIRED, or no code
		// at all: every server answers a wrong password with NO.
		return fmt.Errorf("%w: %w", ErrAuthFailed, err)
	}
	// BAD: the backend did not understand us; not the user's fault.
	return fmt.Errorf("%w: login: %w", ErrUnavailable, err)
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
