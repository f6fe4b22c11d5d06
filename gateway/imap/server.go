// Package imap is mailgate's IMAP front. It answers the not-authenticated
// state itself (RFC 9051 §6.1-6.2: CAPABILITY, NOOP, LOGOUT, ID, STARTTLS,
// LOGIN, AUTHENTICATE PLAIN/LOGIN with SASL-IR), hands the client's
// credentials to a Backend that logs in to the user's IMAP server, and then
// copies bytes both ways untouched, so every extension the backend has
// (IDLE, COMPRESS, CONDSTORE, MOVE...) works.
//
//	srv := imap.NewServer(imap.Config{Backend: b, TLSConfig: tlsCfg, Logger: log})
//	for {
//		conn, err := ln.Accept()
//		...
//		go srv.Serve(ctx, conn) // returns when the session ends; cancel ctx to shut down
//		// or: go srv.Handle(ctx, conn, wg.Done) // returns once the relay waits; wg.Done at the end
//	}
package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"go.uber.org/zap"

	"mailgate/gateway/internal/connlog"
	"mailgate/gateway/internal/preauth"
	"mailgate/gateway/internal/saslserver"
)

// Backend logs a user in to the user's IMAP server. The gateway implements it
// with routing and the backend login of package upstream.
type Backend interface {
	// Connect returns the backend connection in the authenticated state.
	// Errors should wrap ErrAuthFailed (answered NO [AUTHENTICATIONFAILED],
	// or the backend's own code, see reply) or ErrInUse (NO [INUSE]);
	// anything else is answered NO [UNAVAILABLE] and only logged.
	Connect(ctx context.Context, login Login) (Upstream, error)
}

// Upstream is a backend connection after a successful login.
type Upstream struct {
	// Conn is authenticated. Bytes the backend sent after its login reply
	// must be the first its Read returns.
	Conn net.Conn
	Caps []string // the backend's capabilities after login
	Name string   // the backend's name, for logs
}

// Login is what the client presented.
type Login struct {
	User     string
	Password string
	Remote   net.Addr // the client (after PROXY protocol)
	Local    net.Addr // the address the client connected to
	Attempt  int      // 1 for the connection's first login attempt, then 2, 3...
}

// Config configures a Server. Zero durations and limits take the defaults
// named next to them.
type Config struct {
	// Listener is the listener's name, for logs.
	Listener string
	// Backend logs users in; required.
	Backend Backend
	// TLSConfig serves STARTTLS (and implicit TLS when the conn passed to
	// Serve is not yet a *tls.Conn). nil: STARTTLS is not offered.
	TLSConfig *tls.Config
	// ImplicitTLS: the conn given to Serve is TLS from the first byte; a
	// *tls.Conn not yet handshaken (or a plain conn wrapped with TLSConfig).
	ImplicitTLS bool
	// AllowPlaintextAuth permits LOGIN and AUTHENTICATE before TLS. Default
	// false: LOGINDISABLED and NO [PRIVACYREQUIRED] (RFC 9051 §6.2.3, RFC 8314).
	AllowPlaintextAuth bool
	// PreauthTimeout bounds the whole not-authenticated phase. Default 60s.
	PreauthTimeout time.Duration
	// IdleTimeout closes a logged-in connection on which no byte moved in
	// either direction for this long (it may take up to twice as long to
	// notice). Default 30m, the autologout minimum of RFC 9051 §5.4.
	IdleTimeout time.Duration
	// TLSHandshakeTimeout bounds a TLS handshake. Default 30s.
	TLSHandshakeTimeout time.Duration
	// AuthFailureDelay is waited before answering a failed login, to slow
	// down password guessing. Default 1s; negative: no delay (tests).
	AuthFailureDelay time.Duration
	// BadCommandLimit is how many invalid commands and failed logins a
	// client may send before login until it is disconnected (the front has
	// no other state: after login the backend judges commands). Default 3,
	// as Dovecot's login processes (CLIENT_MAX_BAD_COMMANDS): a mail client
	// gets a command wrong once or twice, another protocol's client (an
	// HTTP or SMTP client sent to a mail port, the ALPACA class of attacks)
	// gets every line wrong.
	BadCommandLimit int
	// Logger receives per-connection logs; nil: none.
	Logger *zap.Logger
	// Observer is told of every TLS handshake, for metrics. nil: none.
	Observer Observer
}

// Observer counts what sessions do. It is called from session goroutines
// and must be safe for concurrent use and quick.
type Observer interface {
	// TLSHandshake is called after each TLS handshake (implicit or
	// STARTTLS) with its outcome.
	TLSHandshake(err error)
}

type nopObserver struct{}

func (nopObserver) TLSHandshake(error) {}

// Server is the IMAP front for one listener.
type Server struct {
	cfg atomic.Pointer[Config] // each session takes the current one at its start
}

// Defaults for the zero values of Config; gateway/config uses them for the
// configuration file's defaults.
const (
	DefaultPreauthTimeout      = 60 * time.Second
	DefaultIdleTimeout         = 30 * time.Minute // RFC 9051 §5.4: autologout at least 30 minutes
	DefaultTLSHandshakeTimeout = 30 * time.Second
	DefaultAuthFailureDelay    = time.Second
	DefaultBadCommandLimit     = 3
)

// NewServer returns a server with cfg's defaults applied.
func NewServer(cfg Config) *Server {
	s := &Server{}
	s.Reconfigure(cfg)
	return s
}

// Reconfigure replaces the configuration (SIGHUP): sessions that start from
// now on use cfg, with defaults applied; sessions under way keep theirs.
func (s *Server) Reconfigure(cfg Config) {
	if cfg.PreauthTimeout <= 0 {
		cfg.PreauthTimeout = DefaultPreauthTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.TLSHandshakeTimeout <= 0 {
		cfg.TLSHandshakeTimeout = DefaultTLSHandshakeTimeout
	}
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = DefaultAuthFailureDelay
	}
	if cfg.BadCommandLimit <= 0 {
		cfg.BadCommandLimit = DefaultBadCommandLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s.cfg.Store(&cfg)
}

// Serve runs one client connection to its end and closes it. Cancelling ctx
// closes the connection (shutdown).
func (s *Server) Serve(ctx context.Context, conn net.Conn) {
	ended := make(chan struct{})
	s.Handle(ctx, conn, func() { close(ended) })
	<-ended
}

// Handle is Serve without holding the calling goroutine for the relay: it
// returns when the session has ended, or when its relay after a login has
// nothing to move and waits without a goroutine (a days-long idle session
// then costs no stack). done is called once, when the connection has ended
// and both its sockets are closed; it may run on any goroutine and must not
// block. Cancelling ctx closes the connection (shutdown) and then done is
// called.
func (s *Server) Handle(ctx context.Context, conn net.Conn, done func()) {
	cfg := s.cfg.Load()
	id := connlog.NextID()
	log := cfg.Logger.With(zap.String("proto", "imap"), zap.String("listener", cfg.Listener),
		zap.Uint64("conn", id), zap.Stringer("remote", conn.RemoteAddr()))
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	ss := &session{
		cfg:      cfg,
		log:      log,
		connID:   id,
		conn:     conn,
		preauthT: time.Now().Add(cfg.PreauthTimeout),
	}
	result := ss.run(ctx)
	if ctx.Err() != nil {
		result = connlog.Shutdown
	}
	if h := ss.handoff; h != nil {
		// The relay starts here, not under the login's frames, and keeps
		// only the handoff: not the session, its loggers or its wire.
		stop()
		relaySession(ctx, cfg, h, done)
		return
	}
	if !ss.spliced {
		conn.Close()
		ss.conn.Close()
		log.Info("session end", result.Field(), zap.Bool("logged_in", false))
	}
	done()
}

// session is one connection in the not-authenticated state.
type session struct {
	cfg      *Config
	log      *zap.Logger
	connID   uint64   // the connection's, in log
	conn     net.Conn // the client; a *tls.Conn after STARTTLS
	w        *wire
	tls      bool
	preauthT time.Time // end of the not-authenticated phase
	bad      int       // invalid commands and failed logins so far
	attempts int       // login attempts so far
	spliced  bool      // the relay owns (and closed) the connections
	handoff  *handoff  // after a login: what the relay needs

	loggedPlaintextRefusal bool // the first login refused for lack of TLS was logged
}

// handoff is what a logged-in session keeps for its relay: nothing of the
// not-authenticated state.
type handoff struct {
	client, backend         net.Conn
	id                      uint64 // for the log of the session's end
	user, mech, backendName string
	start                   time.Time
}

// relaySession starts the relay of h's connections; at the session's end it
// logs the end and calls done.
func relaySession(ctx context.Context, cfg *Config, h *handoff, done func()) {
	relay(ctx, h.client, h.backend, cfg.IdleTimeout, func(st relayStats) {
		logEnd(cfg, h, st)
		done()
	})
}

// logEnd logs a relayed session's end.
func logEnd(cfg *Config, h *handoff, st relayStats) {
	fields := []zap.Field{
		zap.String("proto", "imap"), zap.String("listener", cfg.Listener),
		zap.Uint64("conn", h.id), zap.Stringer("remote", h.client.RemoteAddr()),
		zap.String("user", h.user), zap.String("mech", h.mech), zap.String("backend", h.backendName),
		st.result.Field(),
		zap.Int64("bytes_from_client", st.up),
		zap.Int64("bytes_to_client", st.down),
		zap.Duration("duration", time.Since(h.start)),
	}
	if st.err != nil {
		fields = append(fields, zap.Error(st.err))
	}
	cfg.Logger.Info("session end", fields...)
}

// errLogout and errLoggedIn end the command loop normally.
var (
	errLogout = errors.New("logout")
	// errProxyRefused ends a session that began with a PROXY header it may
	// not send.
	errProxyRefused = errors.New("PROXY header from an untrusted peer")
	errLoggedIn     = errors.New("logged in")
	// errTLSFailed wraps a failed STARTTLS handshake.
	errTLSFailed = errors.New("TLS handshake failed")
)

// run drives the not-authenticated state and, after a login, the relay. It
// returns how the session ended, for the log; after a login the relay has
// logged the session's end itself.
func (ss *session) run(ctx context.Context) connlog.Result {
	if ss.cfg.ImplicitTLS {
		if err := ss.handshake(ctx, ss.conn); err != nil {
			ss.log.Debug("imap TLS handshake failed", zap.Error(err))
			return connlog.TLSFailed
		}
	}
	if err := ss.conn.SetDeadline(ss.preauthT); err != nil {
		return connlog.Dropped // only a closed connection refuses a deadline
	}
	ss.w = newWire(ss.conn)
	ss.w.status("", "OK", "CAPABILITY "+ss.capabilities(), "mailgate ready")
	if err := ss.w.flush(); err != nil {
		return connlog.Dropped
	}
	for {
		err := ss.step(ctx)
		if err == nil {
			if ss.bad >= ss.cfg.BadCommandLimit {
				ss.bye("Too many invalid commands")
				ss.log.Info("imap client disconnected after too many invalid commands")
				return connlog.TooManyBadCommands
			}
			continue
		}
		switch {
		case errors.Is(err, errLoggedIn):
			return ""
		case errors.Is(err, errLogout):
			return connlog.Logout
		case errors.Is(err, errProxyRefused):
			ss.log.Warn("PROXY header from an untrusted peer refused")
			return connlog.ProxyRefused
		case errors.Is(err, errTLSFailed):
			return connlog.TLSFailed
		case errors.Is(err, errHTTPRequest):
			// Not answered: another protocol's client gets not one byte it
			// could take for its own (ALPACA).
			ss.log.Info("imap client spoke HTTP: connection closed")
			return connlog.ProtocolMismatch
		case errors.Is(err, errLineTooLong), errors.Is(err, errLiteralTooLong):
			ss.bye("Command too long")
			ss.log.Info("imap client disconnected", zap.Error(err))
			return connlog.CommandTooLong
		case isTimeout(err):
			ss.bye("Autologout; idle for too long")
			return connlog.PreauthTimeout
		default:
			return connlog.Dropped
		}
	}
}

// byeTimeout bounds the goodbye to a client that may not be reading.
const byeTimeout = 2 * time.Second

// bye sends an untagged BYE (RFC 9051 §7.1.5) before the session closes,
// with its own short deadline: the pre-auth one may have passed.
func (ss *session) bye(text string) {
	ss.conn.SetWriteDeadline(time.Now().Add(byeTimeout))
	ss.w.untagged("BYE " + text)
	ss.w.flush()
}

// step reads and answers one command. A nil error means: go on.
func (ss *session) step(ctx context.Context) error {
	ss.w.noCredentials = !ss.authAllowed()
	cmd, err := ss.w.readCommand()
	var se *syntaxError
	if errors.As(err, &se) {
		ss.bad++
		ss.w.status(se.tag, "BAD", "", "Syntax error: "+se.msg)
		return ss.w.flush()
	}
	var cl *credentialLiteral
	if errors.As(err, &cl) {
		ss.bad++
		ss.refusedPlaintext("", "LOGIN literal before TLS")
		ss.w.status(cl.tag, errPrivacy.status, errPrivacy.code, errPrivacy.text)
		return ss.w.flush()
	}
	if err != nil {
		return err
	}
	if err = ss.dispatch(ctx, cmd); err != nil {
		re := reply(err)
		if re == nil {
			return err // the session ends
		}
		if re.status == "BAD" || re == errPrivacy || errors.Is(err, ErrAuthFailed) {
			ss.bad++
		}
		ss.w.status(cmd.tag, re.status, re.code, re.text)
	}
	return ss.w.flush()
}

// dispatch runs one command of the not-authenticated state (RFC 9051 §6.1,
// §6.2). It writes untagged data and the tagged OK itself; a *respError is
// the tagged failure reply; other errors end the session.
func (ss *session) dispatch(ctx context.Context, cmd *command) error {
	if isProxyHeader(cmd.tag, cmd.name) {
		// A PROXY protocol v1 header from a peer the listener does not
		// trust (listeners[].proxy_protocol): refused, never honoured.
		ss.bye("PROXY protocol not accepted from this address")
		return errProxyRefused
	}
	switch cmd.name {
	case "CAPABILITY":
		if len(cmd.args) != 0 {
			return errArgs
		}
		ss.w.untagged("CAPABILITY " + ss.capabilities())
		ss.w.status(cmd.tag, "OK", "", "CAPABILITY completed")
	case "NOOP":
		if len(cmd.args) != 0 {
			return errArgs
		}
		ss.w.status(cmd.tag, "OK", "", "NOOP completed")
	case "LOGOUT":
		if len(cmd.args) != 0 {
			return errArgs
		}
		ss.w.untagged("BYE mailgate logging out")
		ss.w.status(cmd.tag, "OK", "", "LOGOUT completed")
		ss.w.flush()
		return errLogout
	case "ID":
		return ss.id(cmd)
	case "STARTTLS":
		return ss.startTLS(ctx, cmd)
	case "LOGIN":
		return ss.login(ctx, cmd)
	case "AUTHENTICATE":
		return ss.authenticate(ctx, cmd)
	default:
		return errNotAuth
	}
	return nil
}

// capabilities lists what the not-authenticated state offers (RFC 9051
// §7.2.2). After login the client sees the backend's list instead.
func (ss *session) capabilities() string {
	caps := "IMAP4rev1 SASL-IR LITERAL+ ID"
	if ss.canStartTLS() {
		caps += " STARTTLS"
	}
	if ss.authAllowed() {
		caps += " AUTH=PLAIN AUTH=LOGIN"
	} else {
		// RFC 9051 §6.2.3: LOGIN refused until TLS; no AUTH= either, as a
		// SASL PLAIN password would travel in clear just the same.
		caps += " LOGINDISABLED"
	}
	return caps
}

func (ss *session) canStartTLS() bool { return ss.cfg.TLSConfig != nil && !ss.tls }

func (ss *session) authAllowed() bool { return ss.tls || ss.cfg.AllowPlaintextAuth }

// ID limits (RFC 2971 §3.3).
const (
	maxIDPairs    = 30
	maxIDKeyLen   = 30
	maxIDValueLen = 1024
)

// id answers RFC 2971 ID. The client's fields are checked against the RFC's
// bounds and its name and version logged; nothing in them is trusted (an
// x-originating-ip from a client is not believed).
func (ss *session) id(cmd *command) error {
	args := cmd.args
	var fields []zap.Field
	switch {
	case len(args) == 1 && args[0].kind == tokAtom && strings.EqualFold(args[0].val, "NIL"):
	case len(args) >= 2 && args[0].kind == tokOpen && args[len(args)-1].kind == tokClose:
		inner := args[1 : len(args)-1]
		if len(inner)%2 != 0 || len(inner)/2 > maxIDPairs {
			return errArgs
		}
		for i := 0; i < len(inner); i += 2 {
			k, v := inner[i], inner[i+1]
			if k.kind != tokString || len(k.val) > maxIDKeyLen {
				return errArgs
			}
			isNil := v.kind == tokAtom && strings.EqualFold(v.val, "NIL")
			if !isNil && v.kind != tokString || len(v.val) > maxIDValueLen {
				return errArgs
			}
			if key := strings.ToLower(k.val); !isNil && (key == "name" || key == "version") {
				fields = append(fields, zap.String("client_"+key, v.val))
			}
		}
	default:
		return errArgs
	}
	if len(fields) > 0 {
		ss.log.Debug("imap client identified", fields...)
	}
	ss.w.untagged(`ID ("name" "mailgate")`)
	ss.w.status(cmd.tag, "OK", "", "ID completed")
	return nil
}

// startTLS implements RFC 9051 §6.2.1.
func (ss *session) startTLS(ctx context.Context, cmd *command) error {
	if len(cmd.args) != 0 {
		return errArgs
	}
	if !ss.canStartTLS() {
		return &respError{"BAD", "", "STARTTLS not available"}
	}
	if ss.w.buffered() > 0 {
		// Anything pipelined after STARTTLS would be taken as sent over TLS:
		// the STARTTLS command injection (CVE-2011-0411 family). Refuse; the
		// pipelined commands are then answered as the cleartext they are.
		ss.log.Info("imap STARTTLS refused: data pipelined after it")
		return &respError{"BAD", "", "STARTTLS must be the last command before the TLS handshake"}
	}
	ss.w.status(cmd.tag, "OK", "", "Begin TLS negotiation now")
	if err := ss.w.flush(); err != nil {
		return err
	}
	tc := tls.Server(ss.conn, ss.cfg.TLSConfig)
	if err := ss.handshake(ctx, tc); err != nil {
		ss.log.Debug("imap STARTTLS handshake failed", zap.Error(err))
		return fmt.Errorf("%w: %w", errTLSFailed, err)
	}
	if err := tc.SetDeadline(ss.preauthT); err != nil {
		return err
	}
	ss.conn = tc
	ss.w.reset(tc) // nothing of the cleartext phase survives
	return nil
}

// handshake completes a server TLS handshake on conn under the handshake
// timeout (and never past the pre-auth deadline).
func (ss *session) handshake(ctx context.Context, conn net.Conn) error {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		if ss.cfg.TLSConfig == nil {
			return errors.New("imap: implicit TLS without a TLS configuration")
		}
		tc = tls.Server(conn, ss.cfg.TLSConfig)
	}
	deadline := time.Now().Add(ss.cfg.TLSHandshakeTimeout)
	if deadline.After(ss.preauthT) {
		deadline = ss.preauthT
	}
	if err := tc.SetDeadline(deadline); err != nil {
		return err
	}
	err := tc.HandshakeContext(ctx)
	ss.cfg.Observer.TLSHandshake(err)
	if err != nil {
		return err
	}
	ss.conn = tc
	ss.tls = true
	return nil
}

// refusedPlaintext logs, once per session, a login refused because the
// connection is not encrypted (RFC 9051 §6.2.3 LOGINDISABLED, RFC 8314):
// otherwise an operator sees only a session that ended without a login.
func (ss *session) refusedPlaintext(user, reason string) {
	if ss.loggedPlaintextRefusal {
		return
	}
	ss.loggedPlaintextRefusal = true
	hint := "connect to the implicit-TLS port"
	if ss.canStartTLS() {
		hint = "use STARTTLS first"
	}
	ss.log.Warn("login refused: no TLS", zap.String("user", user), zap.String("reason", reason), zap.String("hint", hint))
}

// login implements LOGIN (RFC 9051 §6.2.3).
func (ss *session) login(ctx context.Context, cmd *command) error {
	if len(cmd.args) != 2 {
		return errArgs
	}
	user, ok1 := cmd.args[0].str()
	pass, ok2 := cmd.args[1].str()
	if !ok1 || !ok2 {
		return errArgs
	}
	if !ss.authAllowed() {
		ss.refusedPlaintext(preauth.LogUser(user), "LOGIN before TLS")
		return errPrivacy
	}
	return ss.connect(ctx, cmd.tag, "LOGIN", user, pass)
}

// authenticate implements AUTHENTICATE (RFC 9051 §6.2.2) with SASL-IR
// (RFC 4959) for PLAIN (RFC 4616) and LOGIN.
func (ss *session) authenticate(ctx context.Context, cmd *command) error {
	if len(cmd.args) < 1 || len(cmd.args) > 2 || cmd.args[0].kind != tokAtom {
		return errArgs
	}
	mech := strings.ToUpper(cmd.args[0].val)
	var ir []byte
	if len(cmd.args) == 2 {
		if cmd.args[1].kind != tokAtom {
			return errArgs
		}
		var err error
		if ir, err = saslserver.Decode(cmd.args[1].val, true); err != nil {
			return &respError{"BAD", "", "Invalid base64 in initial response"}
		}
	}
	if !ss.authAllowed() {
		ss.refusedPlaintext("", "AUTHENTICATE before TLS")
		return errPrivacy
	}
	creds, srv := saslserver.New(mech)
	if srv == nil {
		return &respError{"NO", "", "Unsupported authentication mechanism"}
	}
	if err := ss.saslExchange(srv, ir); err != nil {
		return err
	}
	return ss.connect(ctx, cmd.tag, mech, creds.User, creds.Pass)
}

// saslExchange runs the challenge-response loop until the mechanism is done.
func (ss *session) saslExchange(srv sasl.Server, resp []byte) error {
	for {
		challenge, done, err := srv.Next(resp)
		if errors.Is(err, saslserver.ErrAuthzid) {
			return errAuthzid
		}
		if err != nil {
			return &respError{"BAD", "", "Invalid SASL response"}
		}
		if done {
			return nil
		}
		ss.w.continuation(saslserver.Encode(challenge))
		if err := ss.w.flush(); err != nil {
			return err
		}
		line, err := ss.w.readSASL()
		if err != nil {
			return err
		}
		if line == "*" {
			return &respError{"BAD", "", "AUTHENTICATE cancelled"}
		}
		if resp, err = saslserver.Decode(line, false); err != nil {
			return &respError{"BAD", "", "Invalid base64 in SASL response"}
		}
	}
}

// connect logs the user in at the backend and, on success, relays the
// connection until it ends (errLoggedIn). A refused login is returned for
// reply to answer.
func (ss *session) connect(ctx context.Context, tag, mech, user, pass string) error {
	log := ss.log.With(zap.String("user", preauth.LogUser(user)), zap.String("mech", mech))
	var up Upstream
	var err error
	if preauth.UserTooLong(user) {
		// Refused before routing and the limiters see it: a hostile name
		// costs no memory in their tables (issue 11, finding 5).
		err = ss.failed(ctx, log, fmt.Errorf("%w: user name over %d octets", ErrAuthFailed, preauth.MaxUserLen))
	} else if user == "" || pass == "" || strings.ContainsAny(user, "\x00\r\n") || strings.ContainsAny(pass, "\x00\r\n") {
		// Never forwarded: an LDAP-bind backend may take an empty password
		// as an anonymous bind (RFC 4513 §5.1.2). Answered as a wrong
		// password, after the same delay.
		err = ss.failed(ctx, log, fmt.Errorf("%w: empty or malformed credentials", ErrAuthFailed))
	} else {
		up, err = ss.backendLogin(ctx, log, user, pass)
	}
	if err != nil {
		return err
	}
	return ss.splice(log, user, mech, tag, up)
}

// backendLogin asks the Backend to log the user in. A wrong password is
// answered only after AuthFailureDelay; an error that is none of the
// Backend's sentinels is made ErrUnavailable (the client must not see
// internal errors).
func (ss *session) backendLogin(ctx context.Context, log *zap.Logger, user, pass string) (Upstream, error) {
	ss.attempts++
	up, err := ss.cfg.Backend.Connect(ctx, Login{User: user, Password: pass,
		Remote: ss.conn.RemoteAddr(), Local: ss.conn.LocalAddr(), Attempt: ss.attempts})
	switch {
	case err == nil:
		return up, nil
	case ctx.Err() != nil:
		return Upstream{}, ctx.Err()
	case errors.Is(err, ErrAuthFailed):
		return Upstream{}, ss.failed(ctx, log, err)
	case errors.Is(err, ErrInUse):
		log.Info("imap login refused: mailbox in use", zap.Error(err))
		return Upstream{}, err
	case errors.Is(err, ErrUnavailable):
		log.Warn("imap backend unavailable", zap.Error(err))
		return Upstream{}, err
	default:
		log.Warn("imap backend unavailable", zap.Error(err))
		return Upstream{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
}

// failed logs a failed login and returns err after AuthFailureDelay (or
// the context's error if it ends first).
func (ss *session) failed(ctx context.Context, log *zap.Logger, err error) error {
	log.Info("imap login failed", zap.Error(err))
	if d := ss.cfg.AuthFailureDelay; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

// splice answers the login's OK with the backend's capabilities, hands over
// what the client pipelined, and leaves the relay both ways to Serve
// (ss.handoff). From its start the relay owns both connections and closes
// them.
func (ss *session) splice(log *zap.Logger, user, mech, tag string, up Upstream) error {
	backend, caps := up.Conn, up.Caps
	ss.spliced = true
	now := time.Now()
	if err := ss.conn.SetDeadline(now.Add(ss.cfg.IdleTimeout)); err != nil {
		closeQuietly(backend, ss.conn)
		log.Info("session end", connlog.Dropped.Field(), zap.Error(err))
		return errLoggedIn
	}
	code := ""
	if len(caps) > 0 {
		code = "CAPABILITY " + strings.Join(caps, " ")
	}
	ss.w.status(tag, "OK", code, "Logged in")
	err := ss.w.flush()
	if pending := ss.w.takeBuffered(); err == nil && len(pending) > 0 {
		// Commands the client pipelined after its login belong to the backend.
		if err = backend.SetWriteDeadline(now.Add(ss.cfg.IdleTimeout)); err == nil {
			_, err = backend.Write(pending)
		}
	}
	if err != nil {
		closeQuietly(backend, ss.conn)
		log.Info("session end", connlog.Dropped.Field(), zap.Error(err))
		return errLoggedIn
	}
	log.Info("logged in, relaying", zap.String("backend", up.Name), zap.Int("backend_caps", len(caps)))
	// The pre-login reader and writer are done with (takeBuffered handed
	// over what the client had pipelined): let their buffers go for the
	// rest of what may be a days-long session.
	ss.w = nil
	ss.handoff = &handoff{client: ss.conn, backend: backend, id: ss.connID, user: user, mech: mech,
		backendName: up.Name, start: now}
	return errLoggedIn
}

func closeQuietly(conns ...net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isProxyHeader reports whether a command line is a PROXY protocol v1 header
// ("PROXY TCP4 ...", "PROXY TCP6 ...", "PROXY UNKNOWN"), as its tag and name.
func isProxyHeader(tag, name string) bool {
	return tag == "PROXY" && (name == "TCP4" || name == "TCP6" || name == "UNKNOWN")
}
