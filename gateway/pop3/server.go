// Package pop3 is mailgate's POP3 server front (RFC 1939, with CAPA and
// response codes of RFC 2449, STLS of RFC 2595, AUTH of RFC 5034 and the
// codes of RFC 3206). It owns the wire syntax and the session state machine;
// the maildrop behind a session comes from a Backend (in mailgate,
// upstream's view of an IMAP mailbox), so this package knows nothing of IMAP.
//
//	srv := pop3.NewServer(pop3.Config{Listener: "pop3", Backend: b, TLSConfig: tc, Logger: log})
//	for {
//		conn, _ := ln.Accept()
//		go srv.Serve(ctx, conn)
//	}
//
// Files: wire.go reads commands and writes responses (the only code that
// touches the connection's buffers); session.go is the state machine and the
// transaction commands; auth.go is USER/PASS, AUTH and STLS.
package pop3

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway/internal/connlog"
)

// Config configures a Server. Zero durations and limits take the defaults
// given with each field.
type Config struct {
	Listener string // the listener's name, for logs
	Backend  Backend
	// TLSConfig is used for STLS and implicit TLS. nil: STLS is not offered.
	TLSConfig *tls.Config
	// ImplicitTLS: the conn handed to Serve is a *tls.Conn whose handshake
	// has not run yet (port 995, RFC 8314); Serve runs it under
	// TLSHandshakeTimeout before the greeting.
	ImplicitTLS bool
	// AllowPlaintextAuth permits USER/PASS and AUTH on a connection without
	// TLS. Default false: they are refused with -ERR [AUTH] and a hint to use
	// STLS (RFC 2595 §2.3, RFC 8314).
	AllowPlaintextAuth bool
	// IdleTimeout is the autologout timer (RFC 1939 §3): a client silent this
	// long is disconnected without a response and without UPDATE. It also
	// bounds each write to a client that does not read. Default 10m, which
	// is the RFC's minimum.
	IdleTimeout time.Duration
	// PreauthTimeout bounds the whole AUTHORIZATION state, counted from the
	// connect and not renewed by commands (Dovecot's login timeout): a
	// client that has not logged in by then is disconnected. It is not the
	// autologout timer of RFC 1939 §3, which applies between commands and
	// stays IdleTimeout. Zero: no bound other than IdleTimeout per read.
	PreauthTimeout time.Duration
	// TLSHandshakeTimeout bounds the TLS handshake. Default 30s.
	TLSHandshakeTimeout time.Duration
	// AuthFailureDelay is slept before answering a failed authentication.
	// Default 1s; negative: no delay (tests).
	AuthFailureDelay time.Duration
	// PreauthBadCommandLimit is the number of unknown, malformed, misplaced
	// or over-long commands, or refused plaintext logins, in the
	// AUTHORIZATION state after which the client is disconnected. Default 3,
	// as Dovecot's login processes: a POP3 client gets a command wrong once
	// or twice, another protocol's client gets every line wrong.
	PreauthBadCommandLimit int
	// BadCommandLimit is the same count in the TRANSACTION state, where a
	// logged-in client's old extensions (LAST, XTND) may be probed and
	// refused a few times. Default 10.
	BadCommandLimit int
	// Logger receives the per-connection logs. nil: no logs.
	Logger *zap.Logger
	// Observer is told of every command and error, for metrics. nil: none.
	Observer Observer
}

// Observer counts what sessions do. Its methods are called from session
// goroutines and must be safe for concurrent use and quick.
type Observer interface {
	// Command is called for each recognised command, by its keyword.
	Command(name string)
	// Error is called for each -ERR answered to a command, with its
	// response code ("" for none).
	Error(code string)
	// TLSHandshake is called after each TLS handshake (implicit or STLS)
	// with its outcome.
	TLSHandshake(err error)
}

type nopObserver struct{}

func (nopObserver) Command(string)     {}
func (nopObserver) Error(string)       {}
func (nopObserver) TLSHandshake(error) {}

// Defaults for the zero values of Config; gateway/config uses them for the
// configuration file's defaults.
const (
	DefaultIdleTimeout         = 10 * time.Minute // RFC 1939 §3: at least 10 minutes
	DefaultTLSHandshakeTimeout = 30 * time.Second
	DefaultAuthFailureDelay    = time.Second
	DefaultBadCommandLimit     = 10
	DefaultPreauthBadCommands  = 3
)

// DefaultPreauthTimeout is the configuration file's default for
// timeouts.pop3_preauth (Dovecot's login timeout). A zero
// Config.PreauthTimeout means no bound of its own.
const DefaultPreauthTimeout = 3 * time.Minute

const (
	// maxAuthFailures failed logins end the connection.
	maxAuthFailures = 3
	// shutdownWriteTimeout bounds the farewell written when the server shuts
	// down under an idle client.
	shutdownWriteTimeout = 2 * time.Second
)

// Server serves POP3 client connections. It is safe for concurrent use.
type Server struct {
	cfg atomic.Pointer[Config] // each session takes the current one at its start
}

// NewServer returns a Server for cfg, with defaults applied. cfg.Backend
// must not be nil.
func NewServer(cfg Config) *Server {
	s := &Server{}
	s.Reconfigure(cfg)
	return s
}

// Reconfigure replaces the configuration (SIGHUP): sessions that start from
// now on use cfg, with defaults applied; sessions under way keep theirs.
// cfg.Backend must not be nil.
func (s *Server) Reconfigure(cfg Config) {
	if cfg.Backend == nil {
		panic("pop3: Config.Backend is nil")
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.TLSHandshakeTimeout <= 0 {
		cfg.TLSHandshakeTimeout = DefaultTLSHandshakeTimeout
	}
	switch {
	case cfg.AuthFailureDelay == 0:
		cfg.AuthFailureDelay = DefaultAuthFailureDelay
	case cfg.AuthFailureDelay < 0:
		cfg.AuthFailureDelay = 0
	}
	if cfg.BadCommandLimit <= 0 {
		cfg.BadCommandLimit = DefaultBadCommandLimit
	}
	if cfg.PreauthBadCommandLimit <= 0 {
		cfg.PreauthBadCommandLimit = DefaultPreauthBadCommands
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s.cfg.Store(&cfg)
}

// Serve runs one client connection to its end and closes it.
//
// When ctx is cancelled (shutdown), the session ends without UPDATE at the
// next command boundary, or at once if the client is idle; a RETR in progress
// either completes or the connection is closed, never a truncated body with a
// final ".". The backend calls of the session run under ctx, except the
// Commit of a QUIT already received, which completes (bounded by the
// backend's own command timeouts).
func (s *Server) Serve(ctx context.Context, conn net.Conn) {
	cfg := s.cfg.Load()
	id := connlog.NextID()
	var nonce [8]byte
	rand.Read(nonce[:])
	sess := &session{
		cfg:     cfg,
		ctx:     ctx,
		conn:    conn,
		w:       newWire(ctx, conn, cfg.IdleTimeout, cfg.IdleTimeout),
		state:   stateAuthorization,
		banner:  hex.EncodeToString(nonce[:]) + "." + itoa(int64(id)),
		started: time.Now(),
		log: cfg.Logger.With(
			zap.Uint64("conn", id),
			zap.String("proto", "pop3"),
			zap.String("listener", cfg.Listener),
			zap.Stringer("remote", conn.RemoteAddr()),
		),
	}
	if cfg.PreauthTimeout > 0 {
		sess.w.readBy = sess.started.Add(cfg.PreauthTimeout)
	}
	sess.run()
}
