package tls

// ACME through certmagic, set up deliberately:
//   - our own certmagic.Cache and Config, never the package defaults
//     (certmagic.Default, DefaultACME, NewDefault, TLS), so two Managers in
//     one process (tests) share nothing and Close stops everything;
//   - the challenges are answered on listeners we own: HTTP-01 by an
//     http.Server on tls.acme.challenges.http, TLS-ALPN-01 (RFC 8737) by a TLS
//     listener on tls.acme.challenges.tls_alpn. A public CA validates only on
//     ports 80 and 443 (RFC 8555 §8.3, RFC 8737 §3), so those addresses are
//     ":80"/":443" in production, or ports the operator forwards there;
//   - certmagic is told the same ports (AltHTTPPort, AltTLSALPNPort): when it
//     finds them busy it assumes, correctly, that our listener answers.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults for tls.acme.
const (
	acmeDefaultObtainTimeout = 2 * time.Minute
	// challengeTimeout bounds one challenge connection (handshake or HTTP
	// request): a validating CA completes it in well under a second.
	challengeTimeout = 10 * time.Second
)

// acmeSource is the ACME half of a Manager.
type acmeSource struct {
	log     *zap.Logger
	cache   *certmagic.Cache
	magic   *certmagic.Config
	issuer  *certmagic.ACMEIssuer
	domains []string            // normalized, as configured; domains[0] is the default
	managed map[string]struct{} // set of domains
	http    *httpChallengeServer
	alpn    *alpnChallengeServer
}

// startACME builds the certmagic cache and config, starts the challenge
// listeners and obtains (or loads from storage, renewing if due) a
// certificate for every domain before returning. ctx bounds only that
// start-up work; renewal runs in the cache's maintenance goroutine until
// close.
func startACME(ctx context.Context, c *ACMEConfig, shared certmagic.Storage, log *zap.Logger) (_ *acmeSource, err error) {
	if len(c.Domains) == 0 {
		return nil, errors.New("tls.acme.domains: at least one domain is required")
	}
	if c.Storage == "" {
		// certmagic would fall back to ~/.local/share/certmagic: refuse to
		// scatter account keys somewhere the operator did not choose.
		return nil, errors.New("tls.acme.storage: a directory is required")
	}
	var storage certmagic.Storage
	if c.Storage == StorageRedis {
		if shared == nil {
			return nil, errors.New("tls.acme.storage: redis needs the cluster: section (the cluster's Redis)")
		}
		storage = shared
	} else {
		if err := prepareStorage(c.Storage); err != nil {
			return nil, err
		}
		storage = &certmagic.FileStorage{Path: c.Storage}
	}
	if c.Challenges.HTTP == "" && c.Challenges.TLSALPN == "" {
		return nil, errors.New("tls.acme.challenges: set http, tls_alpn or both; without a challenge listener no certificate can be validated")
	}
	ca := c.CA
	if ca == "" {
		ca = certmagic.LetsEncryptProductionCA
	}
	var roots *x509.CertPool
	if c.CARoot != "" {
		pemBytes, err := os.ReadFile(c.CARoot)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.ca_root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("tls.acme.ca_root: %s holds no PEM certificate", c.CARoot)
		}
	}

	a := &acmeSource{log: log, managed: make(map[string]struct{})}
	for _, d := range c.Domains {
		d = normalizeServerName(d)
		if _, dup := a.managed[d]; dup {
			continue
		}
		a.domains = append(a.domains, d)
		a.managed[d] = struct{}{}
	}

	cmLog := certmagicLogger(log)
	// The cache calls GetConfigForCert from its maintenance goroutine only for
	// certificates already in it, which ManageSync adds after a.magic is set
	// (the cache's lock orders the two).
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return a.magic, nil },
		RenewCheckInterval: c.RenewCheckInterval,
		Logger:             cmLog,
	})
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	a.magic = certmagic.New(a.cache, certmagic.Config{
		Storage: storage,
		Logger:  cmLog,
		// Many mail clients send no SNI (RFC 6066 §3 makes it optional);
		// without a default, certmagic finds no certificate for them and
		// the handshake fails with an internal error.
		DefaultServerName: a.domains[0],
	})

	// The challenge listeners come first: the CA may validate as soon as the
	// order exists.
	tmpl := certmagic.ACMEIssuer{
		CA:    ca,
		Email: c.Email,
		// Configuring tls.acme is the operator's acceptance of the CA's
		// subscriber agreement; there is nobody to ask interactively.
		Agreed:                  true,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    c.Challenges.HTTP == "",
		DisableTLSALPNChallenge: c.Challenges.TLSALPN == "",
		Logger:                  cmLog,
	}
	if c.Challenges.HTTP != "" {
		ln, err := net.Listen("tcp", c.Challenges.HTTP)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.challenges.http: %w", err)
		}
		host, port := hostPort(ln.Addr())
		tmpl.ListenHost, tmpl.AltHTTPPort = host, port
		a.http = &httpChallengeServer{ln: ln}
	}
	if c.Challenges.TLSALPN != "" {
		ln, err := net.Listen("tcp", c.Challenges.TLSALPN)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.challenges.tls_alpn: %w", err)
		}
		host, port := hostPort(ln.Addr())
		if tmpl.ListenHost == "" || tmpl.ListenHost == host {
			tmpl.ListenHost = host
		} else {
			// Two hosts: certmagic has one ListenHost. Leaving it empty
			// makes it probe the wildcard address, which our listeners
			// occupy on every interface that matters.
			tmpl.ListenHost = ""
		}
		tmpl.AltTLSALPNPort = port
		a.alpn = &alpnChallengeServer{ln: ln}
	}
	a.issuer = certmagic.NewACMEIssuer(a.magic, tmpl)
	a.magic.Issuers = []certmagic.Issuer{a.issuer}

	if a.http != nil {
		a.http.start(a.issuer, log.Named("acme-http"))
	}
	if a.alpn != nil {
		tc := a.magic.TLSConfig() // answers acme-tls/1 with the challenge certificate
		tc.MinVersion = tls.VersionTLS12
		a.alpn.start(tc, log.Named("acme-tls-alpn"))
	}

	timeout := c.ObtainTimeout
	if timeout <= 0 {
		timeout = acmeDefaultObtainTimeout
	}
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, d := range a.domains {
		start := time.Now()
		// ManageSync loads the certificate from storage or obtains it, once,
		// without retries: a failure here is for the operator to read now.
		// Afterwards the certificate is "managed" in our cache, whose
		// maintenance goroutine renews it every RenewCheckInterval; that is
		// all ManageAsync would add, so it is not called.
		if err := a.magic.ManageSync(octx, []string{d}); err != nil {
			if octx.Err() != nil && ctx.Err() == nil {
				return nil, fmt.Errorf("tls.acme: no certificate for %s from %s within obtain_timeout %s: %w", d, ca, timeout, err)
			}
			return nil, fmt.Errorf("tls.acme: no certificate for %s from %s: %w", d, ca, err)
		}
		log.Info("acme certificate ready", zap.String("domain", d), zap.String("ca", ca),
			zap.Duration("took", time.Since(start)))
	}
	return a, nil
}

// handles reports whether serverName is one of the configured domains.
func (a *acmeSource) handles(serverName string) bool {
	_, ok := a.managed[normalizeServerName(serverName)]
	return ok
}

// getCertificate serves the certificate for hello from certmagic's cache;
// a name that is not ours gets the default domain's certificate.
func (a *acmeSource) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if hello.ServerName != "" && !a.handles(hello.ServerName) && !offersACMETLS(hello) {
		h := *hello
		h.ServerName = a.domains[0]
		hello = &h
	}
	return a.magic.GetCertificate(hello)
}

// close stops the challenge listeners and the cache's maintenance; it waits
// for both.
func (a *acmeSource) close() {
	if a.http != nil {
		a.http.close()
	}
	if a.alpn != nil {
		a.alpn.close()
	}
	a.cache.Stop()
}

// offersACMETLS reports a TLS-ALPN-01 validation handshake (RFC 8737 §3:
// the CA offers exactly "acme-tls/1").
func offersACMETLS(hello *tls.ClientHelloInfo) bool {
	return slices.Contains(hello.SupportedProtos, alpnACME)
}

// certmagicLogger is log for certmagic, never below Info: certmagic's debug
// output includes the ACME HTTP exchanges, headers and all.
func certmagicLogger(log *zap.Logger) *zap.Logger {
	l := log.Named("certmagic")
	if l.Core().Enabled(zapcore.DebugLevel) {
		// zap refuses (and complains) to "increase" a level the core is
		// already above, hence the check.
		l = l.WithOptions(zap.IncreaseLevel(zapcore.InfoLevel))
	}
	return l
}

func hostPort(addr net.Addr) (string, int) {
	host, port, _ := net.SplitHostPort(addr.String())
	p, _ := strconv.Atoi(port)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = ""
	}
	return host, p
}

// httpChallengeServer answers HTTP-01 (RFC 8555 §8.3) and nothing else.
type httpChallengeServer struct {
	ln     net.Listener
	srv    *http.Server
	done   chan struct{}
	served atomic.Int64 // challenge requests answered (tests)
}

func (s *httpChallengeServer) start(issuer *certmagic.ACMEIssuer, log *zap.Logger) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if issuer.HandleHTTPChallenge(w, r) {
			s.served.Add(1)
			log.Info("acme http-01 challenge answered", zap.String("host", r.Host), zap.String("remote", r.RemoteAddr))
			return
		}
		http.Error(w, "mailgate answers only ACME HTTP-01 challenges here", http.StatusNotFound)
	})
	s.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: challengeTimeout,
		ReadTimeout:       challengeTimeout,
		WriteTimeout:      challengeTimeout,
		IdleTimeout:       challengeTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(log),
	}
	s.done = make(chan struct{})
	log.Info("acme http-01 listener started", zap.Stringer("address", s.ln.Addr()))
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("acme http-01 listener stopped", zap.Error(err))
		}
	}()
}

func (s *httpChallengeServer) close() {
	if s.srv == nil { // never started: New failed before
		s.ln.Close()
		return
	}
	s.srv.Close() // closes the listener and every connection
	<-s.done
}

// alpnChallengeServer answers TLS-ALPN-01 (RFC 8737): a handshake with the
// acme-tls/1 protocol and a challenge certificate, then the connection
// closes. Plain TLS clients get the domain's certificate and a close.
type alpnChallengeServer struct {
	ln      net.Listener
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	served  atomic.Int64 // acme-tls/1 handshakes completed (tests)
	started bool
}

func (s *alpnChallengeServer) start(tc *tls.Config, log *zap.Logger) {
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.started = true
	log.Info("acme tls-alpn-01 listener started", zap.Stringer("address", s.ln.Addr()))
	s.wg.Go(func() {
		var delay time.Duration
		for {
			conn, err := s.ln.Accept()
			if err != nil {
				if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return
				}
				// EMFILE and friends: back off like net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				log.Warn("acme tls-alpn-01 accept failed", zap.Error(err), zap.Duration("retry_in", delay))
				select {
				case <-time.After(delay):
				case <-s.ctx.Done():
					return
				}
				continue
			}
			delay = 0
			s.wg.Go(func() { s.handle(conn, tc, log) })
		}
	})
}

func (s *alpnChallengeServer) handle(conn net.Conn, tc *tls.Config, log *zap.Logger) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(challengeTimeout))
	tlsConn := tls.Server(conn, tc)
	if err := tlsConn.HandshakeContext(s.ctx); err != nil {
		// certmagic itself dials the port to see that it is served, and
		// scanners knock: not worth more than debug.
		log.Debug("acme tls-alpn-01 handshake failed", zap.Stringer("remote", conn.RemoteAddr()), zap.Error(err))
		return
	}
	st := tlsConn.ConnectionState()
	if st.NegotiatedProtocol == alpnACME {
		s.served.Add(1)
		log.Info("acme tls-alpn-01 challenge answered", zap.String("server_name", st.ServerName),
			zap.Stringer("remote", conn.RemoteAddr()))
	}
}

func (s *alpnChallengeServer) close() {
	if s.started {
		s.cancel()
	}
	s.ln.Close()
	s.wg.Wait()
}
