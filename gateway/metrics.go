package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"mailgate/gateway/config"
	"mailgate/upstream"
)

// metrics are mailgate's Prometheus metrics, in a registry of their own (not
// the process-global default, so several gateways in one test binary never
// collide). Names are documented in README.md, section Operations.
type metrics struct {
	reg *prometheus.Registry

	connections       *prometheus.CounterVec   // listener, protocol
	activeConnections *prometheus.GaugeVec     // listener, protocol
	refused           *prometheus.CounterVec   // listener, reason
	tlsHandshakes     *prometheus.CounterVec   // listener, result
	logins            *prometheus.CounterVec   // protocol, result
	backendLogin      *prometheus.HistogramVec // protocol, backend, result
	pop3Commands      *prometheus.CounterVec   // command
	bytesToClients    *prometheus.CounterVec   // listener, protocol
	deletions         prometheus.Counter
	errors            *prometheus.CounterVec // protocol, code
}

// clusterMetrics are registered in cluster mode only: whether Redis
// answered the last health check, and the PINGs' round-trip times.
type clusterMetrics struct {
	up  prometheus.Gauge
	rtt prometheus.Histogram
}

func (m *metrics) addCluster() *clusterMetrics {
	cm := &clusterMetrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailgate_cluster_up",
			Help: "1 while the cluster's Redis answers, 0 in degraded mode (per-instance locks and limits).",
		}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailgate_cluster_redis_rtt_seconds",
			Help:    "Round-trip time of the health check PING to the cluster's Redis (answered ones).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
	}
	m.reg.MustRegister(cm.up, cm.rtt)
	return cm
}

// observe is the cluster client's Observer.
func (cm *clusterMetrics) observe(up bool, rtt time.Duration) {
	if up {
		cm.up.Set(1)
		cm.rtt.Observe(rtt.Seconds())
	} else {
		cm.up.Set(0)
	}
}

func newMetrics(cache func() upstream.CacheStats) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_connections_total", Help: "Client connections accepted.",
		}, []string{"listener", "protocol"}),
		activeConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailgate_connections_active", Help: "Client connections open now.",
		}, []string{"listener", "protocol"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_connections_refused_total", Help: "Client connections refused by a limit.",
		}, []string{"listener", "reason"}),
		tlsHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_tls_handshakes_total", Help: "TLS handshakes with clients (implicit, STLS, STARTTLS), by result.",
		}, []string{"listener", "result"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_logins_total", Help: "Client logins, by result (ok, auth_failed, in_use, unavailable).",
		}, []string{"protocol", "result"}),
		backendLogin: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailgate_backend_login_seconds",
			Help:    "Time to route, dial and log in to the backend (for POP3 also to open the maildrop).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"protocol", "backend", "result"}),
		pop3Commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_pop3_commands_total", Help: "POP3 commands, by command.",
		}, []string{"command"}),
		bytesToClients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_bytes_to_clients_total", Help: "Bytes written to POP3 clients.",
		}, []string{"listener", "protocol"}),
		deletions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailgate_pop3_deletions_committed_total", Help: "Messages removed at POP3 QUIT.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_errors_total", Help: "Errors answered to clients, by response code.",
		}, []string{"protocol", "code"}),
	}
	reg.MustRegister(m.connections, m.activeConnections, m.refused, m.tlsHandshakes, m.logins,
		m.backendLogin, m.pop3Commands, m.bytesToClients, m.deletions, m.errors,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	cacheCounter := func(name, help string, f func(upstream.CacheStats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(cache()) })
	}
	reg.MustRegister(
		cacheCounter("mailgate_body_cache_hits_total", "POP3 body cache hits.", func(s upstream.CacheStats) float64 { return float64(s.Hits) }),
		cacheCounter("mailgate_body_cache_misses_total", "POP3 body cache misses.", func(s upstream.CacheStats) float64 { return float64(s.Misses) }),
		cacheCounter("mailgate_body_cache_evictions_total", "POP3 body cache evictions.", func(s upstream.CacheStats) float64 { return float64(s.Evictions) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailgate_body_cache_bytes", Help: "Bytes held by the POP3 body cache."},
			func() float64 { return float64(cache().Bytes) }),
	)
	return m
}

// loginResult names an authentication outcome for metrics and logs.
func loginResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, upstream.ErrAuthFailed):
		return "auth_failed"
	case errors.Is(err, upstream.ErrInUse):
		return "in_use"
	default:
		return "unavailable"
	}
}

// serveMetrics runs the metrics and health listener: /metrics (Prometheus),
// /healthz (the process is alive) and /readyz (listeners up, certificates
// present, the default backend and each pool accept a login's connection).
func (s *Server) serveMetrics(addr string) (*http.Server, net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := s.ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
		ErrorLog: zap.NewStdLog(s.log.Named("metrics"))}
	go hs.Serve(ln)
	return hs, ln.Addr(), nil
}

// ready reports why the gateway cannot serve, or nil.
func (s *Server) ready(ctx context.Context) error {
	s.mu.Lock()
	started, stopping, cfg, certs := s.started, s.stopping, s.cfg, s.certs
	s.mu.Unlock()
	if !started || stopping {
		return errors.New("listeners not up")
	}
	for _, l := range cfg.Listeners {
		if l.TLS != upstream.TLSNone && (certs == nil || certs.ServerConfig() == nil) {
			return errors.New("no certificate")
		}
	}
	return s.backendsReady(ctx, cfg)
}

// readyCacheFor is how long a backend probe's answer is kept: probes every
// few seconds from a load balancer and Kubernetes should not each open a
// connection to every backend.
const readyCacheFor = 5 * time.Second

// readyCache keeps the last backend probe; mu also makes concurrent /readyz
// requests wait for one probe instead of each starting their own.
type readyCache struct {
	mu  sync.Mutex
	st  *state // the configuration probed
	at  time.Time
	err error
}

// backendsReady probes what a login needs (connect, TLS with verification,
// greeting) on the default backend and on each pool: each must have at
// least one server that answers. The answer is cached for readyCacheFor.
func (s *Server) backendsReady(ctx context.Context, cfg *config.Config) error {
	st := s.state.Load()
	c := &s.readyCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st == st && time.Since(c.at) < readyCacheFor {
		return c.err
	}
	var names []string
	for _, name := range cfg.BackendNames() {
		if b := st.backends[name]; b != nil && (name == cfg.Routing.Default || len(b.Addresses) > 0) {
			names = append(names, name)
		}
	}
	if def := cfg.Routing.Default; def != "" && st.backends[def] == nil {
		return errors.New("default backend unknown")
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { errs[i] = probeBackend(ctx, name, st.backends[name], st.timeouts.Dial) })
	}
	wg.Wait()
	c.st, c.at, c.err = st, time.Now(), errors.Join(errs...)
	return c.err
}

// probeBackend is nil when one server of backend b answers upstream.Probe,
// else the reasons, one per server.
func probeBackend(ctx context.Context, name string, b *upstream.BackendConfig, timeout time.Duration) error {
	var errs []error
	for _, addr := range b.Servers() {
		err := upstream.Probe(ctx, upstream.Target{Name: name, Address: addr, Config: b}, timeout)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("backend %s not ready: %w", name, errors.Join(errs...))
}

// tlsObserver counts a listener's TLS handshakes, implicit and STARTTLS.
type tlsObserver struct {
	m        *metrics
	listener string
}

func (o tlsObserver) TLSHandshake(err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	o.m.tlsHandshakes.WithLabelValues(o.listener, result).Inc()
}

// pop3Observer feeds the POP3 command, error and handshake counters.
type pop3Observer struct {
	m        *metrics
	listener string
}

func (o pop3Observer) TLSHandshake(err error) { tlsObserver(o).TLSHandshake(err) }

func (o pop3Observer) Command(name string) { o.m.pop3Commands.WithLabelValues(name).Inc() }

func (o pop3Observer) Error(code string) {
	if code == "" {
		code = "none"
	}
	o.m.errors.WithLabelValues("pop3", code).Inc()
}
