// Package gateway runs mailgate: it binds the configured listeners, applies
// connection limits, hands each connection to its protocol front (gateway/pop3
// or gateway/imap), and connects those fronts to routing and upstream. It owns
// the lifecycle: Start, Reload (SIGHUP) and Shutdown (SIGTERM).
//
//	cfg, _ := config.Load("mailgate.yaml")
//	srv, _ := gateway.New(cfg, log)
//	_ = srv.Start(ctx)
//	defer srv.Shutdown(context.Background())
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway/config"
	"mailgate/gateway/imap"
	"mailgate/gateway/pop3"
	"mailgate/routing"
	mgtls "mailgate/tls"
	"mailgate/upstream"
)

// Server is a running gateway.
type Server struct {
	log       *zap.Logger
	certs     *mgtls.Manager
	maildrops *upstream.Maildrops
	state     atomic.Pointer[state] // routing and backends: replaced on Reload
	limits    *connLimits
	auth      *authLimiter
	health    *routing.Health // pool servers' health: kept across reloads
	metrics   *metrics

	mu        sync.Mutex
	cfg       *config.Config
	listeners []*listener
	started   bool
	stopping  bool
	httpSrv   *http.Server // metrics and health; nil when metrics.address is empty
	httpAddr  net.Addr

	sessions     sync.WaitGroup
	sessionsCtx  context.Context // cancelled to cut sessions at the end of the shutdown grace
	cutSessions  context.CancelFunc
	shutdownOnce sync.Once
}

// state is what a session consults when it logs in; a reload swaps it whole,
// so a session in flight keeps the backend it was routed to.
type state struct {
	router   *routing.Router
	backends map[string]*upstream.BackendConfig
	timeouts upstream.Timeouts
}

// New builds a gateway from a validated configuration; nothing is bound yet.
func New(cfg *config.Config, log *zap.Logger) (*Server, error) {
	st, err := newState(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:         log,
		cfg:         cfg,
		maildrops:   upstream.NewMaildrops(cfg.POP3, log.Named("upstream")),
		limits:      newConnLimits(cfg.Limits.Connections, cfg.Limits.PerIP),
		auth:        newAuthLimiter(cfg.Limits.AuthFailureRate()),
		health:      routing.NewHealth(cfg.Routing.PoolCooldown),
		sessionsCtx: ctx,
		cutSessions: cancel,
	}
	s.metrics = newMetrics(s.maildrops.Cache().Stats)
	s.state.Store(st)
	s.warnInsecure(cfg)
	return s, nil
}

// warnInsecure says loudly, at start and on every reload, which backends are
// reached without certificate verification.
func (s *Server) warnInsecure(cfg *config.Config) {
	for _, name := range cfg.BackendNames() {
		b := cfg.Backends[name]
		if b.InsecureSkipVerify && b.TLS != upstream.TLSNone {
			s.log.Warn("INSECURE: backend certificate verification is off (insecure_skip_verify); "+
				"anyone on the path to it can read every password", zap.String("backend", name))
		}
	}
}

func newState(cfg *config.Config) (*state, error) {
	r, err := routing.New(cfg.Routing)
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	return &state{
		router:   r,
		backends: cfg.Backends,
		timeouts: upstream.Timeouts{Dial: cfg.Timeouts.BackendDial, Command: cfg.Timeouts.BackendCommand},
	}, nil
}

// Start obtains certificates and binds every listener. On error nothing stays
// bound.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("gateway: already started")
	}
	certs, err := mgtls.New(ctx, s.cfg.TLS, s.log.Named("tls"))
	if err != nil {
		return err
	}
	s.certs = certs
	undo := func(err error) error {
		for _, l := range s.listeners {
			l.ln.Close()
		}
		s.listeners = nil
		certs.Close()
		return err
	}
	serverTLS := certs.ServerConfig()
	for _, lc := range s.cfg.Listeners {
		l, err := s.listen(lc, serverTLS)
		if err != nil {
			return undo(err)
		}
		s.listeners = append(s.listeners, l)
	}
	if addr := s.cfg.Metrics.Address; addr != "" {
		hs, haddr, err := s.serveMetrics(addr)
		if err != nil {
			return undo(fmt.Errorf("metrics.address: %w", err))
		}
		s.httpSrv, s.httpAddr = hs, haddr
	}
	for _, l := range s.listeners {
		go l.acceptLoop()
		s.log.Info("listening", zap.String("listener", l.name), zap.String("protocol", l.protocol),
			zap.String("tls", l.tlsMode), zap.Stringer("address", l.ln.Addr()))
	}
	s.started = true
	return nil
}

// Addr returns the bound address of the named listener, or nil. The name
// "metrics" gives the metrics and health listener unless a client listener
// has that name.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.name == name {
			return l.ln.Addr()
		}
	}
	if name == "metrics" && s.httpAddr != nil {
		return s.httpAddr
	}
	return nil
}

// Reload applies a new configuration's routing, backends, limits and static
// certificates (SIGHUP). Sessions in flight keep their backend. Listeners,
// the fronts' timeouts and the pop3 section need a restart.
func (s *Server) Reload(cfg *config.Config) error {
	st, err := newState(cfg)
	if err != nil {
		return err
	}
	s.mu.Lock()
	certs := s.certs
	s.cfg = cfg
	s.mu.Unlock()
	if certs != nil {
		if err := certs.Reload(); err != nil {
			s.log.Warn("certificate reload failed; keeping the old certificates", zap.Error(err))
		}
	}
	s.health.SetCooldown(cfg.Routing.PoolCooldown)
	s.limits.set(cfg.Limits.Connections, cfg.Limits.PerIP)
	s.auth.set(cfg.Limits.AuthFailureRate())
	// Sessions in flight hold what they were routed to; the old router only
	// loses its idle lookup connections.
	s.state.Swap(st).router.Close()
	s.warnInsecure(cfg)
	s.log.Info("configuration reloaded")
	return nil
}

// track counts a new session unless shutdown has begun: Shutdown waits for
// the count to drop to zero, and no session may join once it waits.
func (s *Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.sessions.Add(1)
	return true
}

// Shutdown stops accepting, lets sessions finish until ctx is done, then cuts
// the rest (a POP3 session cut this way deletes nothing: it never reached
// UPDATE) and waits for them to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.mu.Lock()
		s.stopping = true
		for _, l := range s.listeners {
			l.ln.Close()
		}
		s.mu.Unlock()
		done := make(chan struct{})
		go func() { s.sessions.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			s.log.Info("shutdown grace over; closing remaining sessions")
			s.cutSessions()
			<-done
		}
		s.cutSessions()
		// The backend clean-ups of ended POP3 sessions (\Seen, LOGOUT): each
		// is bounded, and none holds a maildrop lock.
		s.maildrops.Wait()
		if s.httpSrv != nil {
			s.httpSrv.Close()
		}
		if s.certs != nil {
			s.certs.Close()
		}
		s.state.Load().router.Close()
	})
	return nil
}

type listener struct {
	s        *Server
	name     string
	protocol string
	tlsMode  string
	ln       net.Listener
	tls      *tls.Config // nil for tls: none
	serve    func(ctx context.Context, conn net.Conn)
}

func (s *Server) listen(lc config.Listener, serverTLS *tls.Config) (*listener, error) {
	var tlsCfg *tls.Config
	if lc.TLS != upstream.TLSNone {
		if serverTLS == nil {
			return nil, fmt.Errorf("listener %s: tls %s needs tls.certificates or tls.acme", lc.Name, lc.TLS)
		}
		tlsCfg = serverTLS
	}
	ln, err := keepaliveListen(lc.Address, s.cfg.Timeouts.TCPKeepalive)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
	}
	if trusted := lc.ProxyPrefixes(); len(trusted) > 0 {
		ln = proxyListener(ln, trusted, s.cfg.Timeouts.TLSHandshake)
	}
	l := &listener{s: s, name: lc.Name, protocol: lc.Protocol, tlsMode: lc.TLS, ln: ln, tls: tlsCfg}
	implicit := lc.TLS == upstream.TLSImplicit
	t := s.cfg.Timeouts
	log := s.log
	switch lc.Protocol {
	case config.ProtocolPOP3:
		srv := pop3.NewServer(pop3.Config{
			Listener:            lc.Name,
			Backend:             pop3Backend{s},
			TLSConfig:           tlsCfg,
			ImplicitTLS:         implicit,
			AllowPlaintextAuth:  lc.AllowPlaintextAuth,
			IdleTimeout:         t.POP3Idle,
			TLSHandshakeTimeout: t.TLSHandshake,
			AuthFailureDelay:    s.cfg.Limits.AuthFailureDelay,
			BadCommandLimit:     s.cfg.Limits.BadCommands,
			Logger:              log,
			Observer:            pop3Observer{s.metrics, lc.Name},
		})
		l.serve = srv.Serve
	case config.ProtocolIMAP:
		srv := imap.NewServer(imap.Config{
			Listener:            lc.Name,
			Backend:             imapBackend{s},
			TLSConfig:           tlsCfg,
			ImplicitTLS:         implicit,
			AllowPlaintextAuth:  lc.AllowPlaintextAuth,
			PreauthTimeout:      t.IMAPPreauth,
			IdleTimeout:         t.IMAPIdle,
			TLSHandshakeTimeout: t.TLSHandshake,
			AuthFailureDelay:    s.cfg.Limits.AuthFailureDelay,
			BadCommandLimit:     s.cfg.Limits.BadCommands,
			Logger:              log,
			Observer:            tlsObserver{s.metrics, lc.Name},
		})
		l.serve = srv.Serve
	default:
		ln.Close()
		return nil, fmt.Errorf("listener %s: unknown protocol %q", lc.Name, lc.Protocol)
	}
	return l, nil
}

func (l *listener) acceptLoop() {
	var delay time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			l.s.log.Warn("accept failed", zap.String("listener", l.name), zap.Error(err))
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !l.s.track() {
			conn.Close() // accepted as the listener was closing
			return
		}
		go func() {
			defer l.s.sessions.Done()
			l.handle(conn)
		}()
	}
}

// handle runs one client connection: PROXY header, limits, implicit TLS,
// then the protocol front.
func (l *listener) handle(conn net.Conn) {
	s := l.s
	if err := readProxyHeader(conn); err != nil {
		s.log.Warn("connection refused: PROXY protocol", zap.String("listener", l.name),
			zap.Stringer("peer", conn.RemoteAddr()), zap.Error(err))
		s.metrics.refused.WithLabelValues(l.name, "proxy_protocol").Inc()
		conn.Close()
		return
	}
	release, ok := s.limits.acquire(conn.RemoteAddr())
	if !ok {
		s.log.Warn("connection refused: limit reached", zap.String("listener", l.name), zap.Stringer("remote", conn.RemoteAddr()))
		s.metrics.refused.WithLabelValues(l.name, "limit").Inc()
		refuse(conn, l.protocol)
		return
	}
	defer release()
	s.metrics.connections.WithLabelValues(l.name, l.protocol).Inc()
	active := s.metrics.activeConnections.WithLabelValues(l.name, l.protocol)
	active.Inc()
	defer active.Dec()
	if l.protocol == config.ProtocolPOP3 {
		// Counted below TLS: bytes on the wire. (IMAP is not wrapped, so the
		// splice after login keeps its fast path.)
		conn = &countingConn{Conn: conn, n: s.metrics.bytesToClients.WithLabelValues(l.name, l.protocol)}
	}
	if l.tls != nil && l.tlsMode == upstream.TLSImplicit {
		conn = tls.Server(conn, l.tls) // the front runs the handshake under its timeout
	}
	l.serve(s.sessionsCtx, conn)
}

// refuse answers a connection over the limits with a protocol-correct
// refusal, under a short deadline, and closes it.
func refuse(conn net.Conn, protocol string) {
	conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if protocol == config.ProtocolPOP3 {
		conn.Write([]byte("-ERR [SYS/TEMP] too many connections, try again later\r\n"))
	} else {
		conn.Write([]byte("* BYE [UNAVAILABLE] too many connections, try again later\r\n"))
	}
	conn.Close()
}
