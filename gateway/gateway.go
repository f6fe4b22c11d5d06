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
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway/cluster"
	"mailgate/gateway/config"
	"mailgate/gateway/imap"
	"mailgate/gateway/pop3"
	"mailgate/routing"
	mgtls "mailgate/tls"
	"mailgate/upstream"
)

// Server is a running gateway.
type Server struct {
	log        *zap.Logger
	certs      *mgtls.Manager
	maildrops  *upstream.Maildrops
	uidlStore  *upstream.UIDLBolt    // pop3.uidl_map's embedded store; nil without it or with store: redis (the cluster client's)
	state      atomic.Pointer[state] // routing and backends: replaced on Reload
	limits     *connLimits
	auth       *authLimiter
	health     *routing.Health // pool servers' health: kept across reloads
	metrics    *metrics
	readyCache readyCache      // the last backend probe of /readyz
	cluster    *cluster.Client // cluster mode; nil alone

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
	// ipv6Prefix groups IPv6 clients into networks for the limits.
	ipv6Prefix int
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
		limits:      newConnLimits(cfg.Limits.Connections, cfg.Limits.PerIP, cfg.Limits.IPv6Prefix),
		auth:        newAuthLimiter(authLimits(cfg)),
		health:      routing.NewHealth(cfg.Routing.PoolCooldown),
		sessionsCtx: ctx,
		cutSessions: cancel,
	}
	var mdOpts []upstream.MaildropsOption
	var cm *clusterMetrics
	if cfg.Cluster != nil {
		// Cluster mode: maildrop locks and failure counts in Redis, on top
		// of this instance's own (degraded mode: README, Cluster mode).
		s.cluster = cluster.New(cfg.Cluster, log, func(up bool, rtt time.Duration) { cm.observe(up, rtt) })
		mdOpts = append(mdOpts, upstream.WithLocker(s.cluster.Locker(upstream.NewLocalLocker())))
		s.auth.useShared(s.cluster.Failures())
	}
	s.maildrops = upstream.NewMaildrops(cfg.POP3, log.Named("upstream"), mdOpts...)
	s.metrics = newMetrics(s.maildrops.Cache().Stats)
	if s.cluster != nil {
		cm = s.metrics.addCluster()
	}
	s.state.Store(st)
	s.warnInsecure(cfg)
	return s, nil
}

// authLimits is the failed-login limiter's part of cfg: the limit, its
// window, and an account's first wait past it.
func authLimits(cfg *config.Config) (int, time.Duration, time.Duration) {
	n, per := cfg.Limits.AuthFailureRate()
	return n, per, cfg.Limits.AuthFailureDelay
}

// ipv6Prefix is the prefix length that groups IPv6 clients into networks.
func (s *Server) ipv6Prefix() int { return s.state.Load().ipv6Prefix }

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
		router:     r,
		backends:   cfg.Backends,
		timeouts:   upstream.Timeouts{Dial: cfg.Timeouts.BackendDial, Command: cfg.Timeouts.BackendCommand},
		ipv6Prefix: cfg.Limits.IPv6Prefix,
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
	var tlsOpts []mgtls.Option
	if s.cluster != nil {
		s.cluster.Start(ctx)
		// tls.acme.storage: redis. The same client as the locks and
		// limits: one health state, one set of connections.
		tlsOpts = append(tlsOpts, mgtls.WithStorage(
			cluster.NewStorage(s.cluster.Redis(), s.cluster.KeyPrefix(), s.log.Named("acme-storage"))))
	}
	certs, err := mgtls.New(ctx, s.cfg.TLS, s.log.Named("tls"), tlsOpts...)
	if err != nil {
		if s.cluster != nil {
			s.cluster.Close()
		}
		return err
	}
	s.certs = certs
	undo := func(err error) error {
		for _, l := range s.listeners {
			l.ln.Close()
		}
		s.listeners = nil
		certs.Close()
		if s.uidlStore != nil {
			s.uidlStore.Close()
			s.uidlStore = nil
		}
		if s.cluster != nil {
			s.cluster.Close()
		}
		return err
	}
	switch m := s.cfg.POP3.UIDLMap; {
	case m == nil:
	case m.Store == upstream.UIDLMapRedis:
		// Validation refused store: redis without a cluster: section.
		// The cluster's client, as for the locks: the maps are shared by
		// every instance; with Redis away a session fails rather than
		// show other UIDLs (no degraded mode for the map).
		s.maildrops.UseUIDLMap(cluster.NewUIDLStore(s.cluster.Redis(), s.cluster.KeyPrefix(), int64(m.MaxBytes)))
	default:
		st, err := upstream.OpenUIDLBolt(m.Store, int64(m.MaxBytes))
		if err != nil {
			return undo(fmt.Errorf("pop3.uidl_map.store: %w", err))
		}
		s.uidlStore = st
		s.maildrops.UseUIDLMap(st)
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
	if !cluster.SameSettings(s.cfg.Cluster, cfg.Cluster) {
		s.log.Warn("cluster settings changed; they need a restart and keep their running values until then")
	}
	s.cfg = cfg
	s.mu.Unlock()
	if certs != nil {
		if err := certs.Reload(); err != nil {
			s.log.Warn("certificate reload failed; keeping the old certificates", zap.Error(err))
		}
	}
	s.health.SetCooldown(cfg.Routing.PoolCooldown)
	s.limits.set(cfg.Limits.Connections, cfg.Limits.PerIP, cfg.Limits.IPv6Prefix)
	s.auth.set(authLimits(cfg))
	// Sessions in flight hold what they were routed to; the old router only
	// loses its idle lookup connections.
	s.state.Swap(st).router.Close()
	s.reconfigureListeners(cfg)
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
		if s.uidlStore != nil {
			s.uidlStore.Close()
		}
		if s.httpSrv != nil {
			s.httpSrv.Close()
		}
		if s.certs != nil {
			s.certs.Close()
		}
		// After the sessions: each released its cluster lock as it ended.
		if s.cluster != nil {
			s.cluster.Close()
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
	address  string // as configured
	// proxyPrefixes are the proxy_protocol networks the listener was bound
	// with (the PROXY-reading wrapper is built once, at bind).
	proxyPrefixes []netip.Prefix
	ln            net.Listener
	tls           *tls.Config // nil for tls: none
	// serve runs a connection's session; it calls done once, when the
	// connection has ended (the IMAP front may return before that, while
	// its relay waits with no goroutine).
	serve func(ctx context.Context, conn net.Conn, done func())
	// reconfigure gives the listener's front the settings of a reloaded
	// configuration, for the sessions that start after it.
	reconfigure func(lc config.Listener, cfg *config.Config)
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
	l := &listener{s: s, name: lc.Name, protocol: lc.Protocol, tlsMode: lc.TLS, address: lc.Address,
		proxyPrefixes: lc.ProxyPrefixes(), ln: ln, tls: tlsCfg}
	switch lc.Protocol {
	case config.ProtocolPOP3:
		srv := pop3.NewServer(s.pop3Config(lc, s.cfg, tlsCfg))
		l.serve = func(ctx context.Context, conn net.Conn, done func()) { srv.Serve(ctx, conn); done() }
		l.reconfigure = func(lc config.Listener, cfg *config.Config) { srv.Reconfigure(s.pop3Config(lc, cfg, tlsCfg)) }
	case config.ProtocolIMAP:
		srv := imap.NewServer(s.imapConfig(lc, s.cfg, tlsCfg))
		l.serve = srv.Handle
		l.reconfigure = func(lc config.Listener, cfg *config.Config) { srv.Reconfigure(s.imapConfig(lc, cfg, tlsCfg)) }
	default:
		ln.Close()
		return nil, fmt.Errorf("listener %s: unknown protocol %q", lc.Name, lc.Protocol)
	}
	return l, nil
}

// pop3Config is the POP3 front's configuration for listener lc under cfg:
// at start, and again at each reload for the sessions that begin after it.
func (s *Server) pop3Config(lc config.Listener, cfg *config.Config, tlsCfg *tls.Config) pop3.Config {
	return pop3.Config{
		Listener:               lc.Name,
		Backend:                pop3Backend{s},
		TLSConfig:              tlsCfg,
		ImplicitTLS:            lc.TLS == upstream.TLSImplicit,
		AllowPlaintextAuth:     lc.AllowPlaintextAuth,
		IdleTimeout:            cfg.Timeouts.POP3Idle,
		PreauthTimeout:         cfg.Timeouts.POP3Preauth,
		TLSHandshakeTimeout:    cfg.Timeouts.TLSHandshake,
		AuthFailureDelay:       cfg.Limits.AuthFailureDelay,
		BadCommandLimit:        cfg.Limits.BadCommands,
		PreauthBadCommandLimit: cfg.Limits.PreauthBadCommands,
		Logger:                 s.log,
		Observer:               pop3Observer{s.metrics, lc.Name},
	}
}

// imapConfig is pop3Config for the IMAP front.
func (s *Server) imapConfig(lc config.Listener, cfg *config.Config, tlsCfg *tls.Config) imap.Config {
	return imap.Config{
		Listener:            lc.Name,
		Backend:             imapBackend{s},
		TLSConfig:           tlsCfg,
		ImplicitTLS:         lc.TLS == upstream.TLSImplicit,
		AllowPlaintextAuth:  lc.AllowPlaintextAuth,
		PreauthTimeout:      cfg.Timeouts.IMAPPreauth,
		IdleTimeout:         cfg.Timeouts.IMAPIdle,
		TLSHandshakeTimeout: cfg.Timeouts.TLSHandshake,
		AuthFailureDelay:    cfg.Limits.AuthFailureDelay,
		BadCommandLimit:     cfg.Limits.PreauthBadCommands,
		Logger:              s.log,
		Observer:            tlsObserver{s.metrics, lc.Name},
	}
}

// reconfigureListeners hands each running listener its settings from cfg.
// A listener's address, protocol, TLS mode and proxy_protocol networks are
// fixed while it runs: a change there, or a listener added or removed, needs
// a restart and is logged at warn level, naming what changed. The listener's
// other settings still apply now.
func (s *Server) reconfigureListeners(cfg *config.Config) {
	s.mu.Lock()
	listeners := s.listeners
	s.mu.Unlock()
	byName := map[string]config.Listener{}
	for _, lc := range cfg.Listeners {
		byName[lc.Name] = lc
	}
	for _, l := range listeners {
		lc, ok := byName[l.name]
		delete(byName, l.name)
		if !ok {
			s.log.Warn("listener removed from the configuration; it keeps serving until the next restart",
				zap.String("listener", l.name), zap.String("address", l.address))
			continue
		}
		if changed := l.fixedChanges(lc); len(changed) > 0 {
			s.log.Warn("listener settings changed that need a restart; they keep their running values until then",
				zap.String("listener", l.name), zap.Strings("restart_needed", changed))
			if lc.Protocol != l.protocol {
				continue // the other settings are for another front
			}
			lc.Address, lc.TLS = l.address, l.tlsMode
		}
		l.reconfigure(lc, cfg)
	}
	for _, lc := range cfg.Listeners {
		if _, added := byName[lc.Name]; added {
			s.log.Warn("new listener in the configuration; it starts at the next restart",
				zap.String("listener", lc.Name), zap.String("address", lc.Address))
		}
	}
}

// fixedChanges names the settings of lc that differ from what l runs with
// and cannot change without a restart, as `key: "running" -> "configured"`.
func (l *listener) fixedChanges(lc config.Listener) []string {
	var changed []string
	for _, f := range []struct{ key, running, configured string }{
		{"address", l.address, lc.Address},
		{"protocol", l.protocol, lc.Protocol},
		{"tls", l.tlsMode, lc.TLS},
		{"proxy_protocol", fmt.Sprint(l.proxyPrefixes), fmt.Sprint(lc.ProxyPrefixes())},
	} {
		if f.running != f.configured {
			changed = append(changed, fmt.Sprintf("%s: %q -> %q", f.key, f.running, f.configured))
		}
	}
	return changed
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
		go l.handle(conn)
	}
}

// handle runs one client connection: PROXY header, limits, implicit TLS,
// then the protocol front. The connection's limits, its place in the active
// gauge and in the sessions Shutdown waits for are released when the front
// says the connection has ended, which may be after handle has returned
// (an IMAP relay waits without a goroutine).
func (l *listener) handle(conn net.Conn) {
	s := l.s
	if err := readProxyHeader(conn); err != nil {
		s.log.Warn("connection refused: PROXY protocol", zap.String("listener", l.name),
			zap.Stringer("peer", conn.RemoteAddr()), zap.Error(err))
		s.metrics.refused.WithLabelValues(l.name, "proxy_protocol").Inc()
		conn.Close()
		s.sessions.Done()
		return
	}
	release, ok := s.limits.acquire(conn.RemoteAddr())
	if !ok {
		s.log.Warn("connection refused: limit reached", zap.String("listener", l.name), zap.Stringer("remote", conn.RemoteAddr()))
		s.metrics.refused.WithLabelValues(l.name, "limit").Inc()
		refuse(conn, l.protocol)
		s.sessions.Done()
		return
	}
	s.metrics.connections.WithLabelValues(l.name, l.protocol).Inc()
	active := s.metrics.activeConnections.WithLabelValues(l.name, l.protocol)
	active.Inc()
	ended := func() {
		active.Dec()
		release()
		s.sessions.Done()
	}
	if l.protocol == config.ProtocolPOP3 {
		// Counted below TLS: bytes on the wire. (IMAP is not wrapped, so the
		// splice after login keeps its fast path.)
		conn = &countingConn{Conn: conn, n: s.metrics.bytesToClients.WithLabelValues(l.name, l.protocol)}
	}
	if l.tls != nil && l.tlsMode == upstream.TLSImplicit {
		conn = tls.Server(conn, l.tls) // the front runs the handshake under its timeout
	}
	l.serve(s.sessionsCtx, conn, ended)
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
