package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway/config"
	"mailgate/gateway/imap"
	"mailgate/gateway/pop3"
	"mailgate/routing"
	"mailgate/upstream"
)

// This file is where a login meets routing and upstream, the same way for
// POP3 and IMAP: the failed-login limiter, the routing decision, the choice
// of a pool's server with failover, and the adapters that implement the
// fronts' Backend interfaces.

// errTooManyFailures refuses a login from a client network that failed too
// often recently; the fronts answer it as a temporary error.
var errTooManyFailures = fmt.Errorf("%w: too many failed logins from this network; try again later", upstream.ErrUnavailable)

// login is one authentication attempt as the fronts present it.
type login struct {
	protocol string
	user     string
	password string
	remote   net.Addr // the client
	local    net.Addr // the gateway address it connected to
	attempt  int
}

// authenticate runs one login through the failure limiter, routes it, and
// calls open with each candidate server until one answers: open logs in and
// returns the backend's verdict. It returns the backend name for metrics.
// The limiter's model (authlimit.go): the client's network may be refused,
// an account is only ever delayed, and failures are counted under the name
// as typed and under the routed identity.
func (s *Server) authenticate(ctx context.Context, l login, open func(upstream.Target, string, string, upstream.Timeouts) error) (string, error) {
	ip := addrIP(l.remote)
	network := clientNetwork(ip, s.ipv6Prefix())
	// The fields every line about this login carries, named as in the
	// fronts' session lines (README, Logs); client_ip is remote without
	// the port, for fail2ban.
	log := s.log.With(zap.String("proto", l.protocol), zap.Stringer("remote", l.remote),
		zap.String("client_ip", ip.String()), zap.String("user", l.user))
	if !s.auth.allowed(network) {
		log.Warn("login refused: too many failures", zap.Stringer("client_network", network))
		return "", errTooManyFailures
	}
	accounts := []string{nameAccount(l.user)}
	// Checked after routing, before dialling: the routed identity's
	// failures count even when the name as typed is fresh.
	routed := func(d routing.Decision) {
		accounts = append(accounts, routedAccount(d.Backend, d.User))
		if w := s.auth.accountDelay(network, accounts...); w > 0 {
			log.Info("login delayed: account has many recent failures",
				zap.String("backend", d.Backend), zap.String("backend_user", d.User), zap.Duration("delay", w))
			s.sleep(ctx, w)
		}
	}
	backend, err := s.routeAndOpen(ctx, l, routed, open)
	switch {
	case errors.Is(err, upstream.ErrAuthFailed):
		// fail2ban: failregex = "msg":"login failed".*"client_ip":"<HOST>"
		log.Warn("login failed")
		s.sleep(ctx, s.auth.failed(network, accounts...))
	case err == nil:
		s.auth.succeeded(network, accounts...)
	}
	return backend, err
}

func (s *Server) routeAndOpen(ctx context.Context, l login, routed func(routing.Decision), open func(upstream.Target, string, string, upstream.Timeouts) error) (string, error) {
	st := s.state.Load()
	d, err := st.router.Route(ctx, routing.Login{User: l.user, Password: l.password, Protocol: l.protocol,
		ClientIP: addrIP(l.remote), Attempt: l.attempt})
	var rej *routing.RejectError
	switch {
	case errors.As(err, &rej):
		s.sleep(ctx, rej.Wait) // Auth-Wait: answer only after it, as nginx does
		return "", fmt.Errorf("%w: %w", upstream.ErrAuthFailed, rej)
	case errors.Is(err, routing.ErrNoRoute):
		// An unknown user must look like a wrong password.
		return "", fmt.Errorf("%w: %v", upstream.ErrAuthFailed, err)
	case err != nil: // the lookup service is down, among others
		return "", fmt.Errorf("%w: routing: %v", upstream.ErrUnavailable, err)
	}
	b, ok := st.backends[d.Backend]
	if !ok {
		return "", fmt.Errorf("%w: routing chose unknown backend %q", upstream.ErrUnavailable, d.Backend)
	}
	routed(d)
	password := l.password
	if d.Password != "" {
		password = d.Password
	}
	servers := b.Servers()
	if d.Address != "" {
		servers = []string{d.Address}
	}
	// A pool: the user's first healthy server in rendezvous order. A server
	// that cannot be reached is skipped for the cool-down and the user goes
	// to the next choice. A POP3 session never spans two servers: it
	// connects once, here, and keeps that connection.
	for range servers {
		addr, healthy := s.health.Pick(servers, d.User)
		t := upstream.Target{Name: d.Backend, Address: addr, Config: b, ClientAddr: l.remote, LocalAddr: l.local, Login: l.user}
		err = open(t, d.User, password, st.timeouts)
		if err == nil {
			st.router.Confirm(d) // a lookup answer is cached only now
			// The one line that says who the user became at the backend.
			s.log.Info("backend login", zap.String("proto", l.protocol), zap.Stringer("remote", l.remote),
				zap.String("user", l.user), zap.String("backend", d.Backend), zap.String("backend_user", d.User),
				zap.String("server", addr), zap.String("route", d.Source))
			if s.health.Up(addr) {
				s.log.Info("backend server answers again", zap.String("backend", d.Backend), zap.String("server", addr))
			}
			return d.Backend, nil
		}
		if len(servers) == 1 || !errors.Is(err, upstream.ErrUnreachable) {
			return d.Backend, err
		}
		if s.health.Down(addr) {
			s.log.Warn("backend server unreachable; skipping it", zap.String("backend", d.Backend),
				zap.String("server", addr), zap.Duration("cooldown", s.health.Cooldown()), zap.Error(err))
		}
		if !healthy {
			break // every server was down: the first choice was tried once
		}
	}
	return d.Backend, err
}

// sleep waits d, or less if the gateway is cutting sessions or ctx ends.
func (s *Server) sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-s.sessionsCtx.Done():
	}
}

// observeLogin records a login's result and backend latency.
func (s *Server) observeLogin(protocol, backend string, start time.Time, err error) {
	result := loginResult(err)
	s.metrics.logins.WithLabelValues(protocol, result).Inc()
	if backend != "" {
		s.metrics.backendLogin.WithLabelValues(protocol, backend, result).Observe(time.Since(start).Seconds())
	}
}

// The fronts declare the errors their backends may return (pop3.ErrAuthFailed,
// imap.ErrInUse...); this is the one place where the outcomes of routing and
// upstream become them. The cause stays in the chain, for the log and for
// what the fronts may pass on (a lookup service's public text, a backend's
// RFC 5530 code).
var (
	pop3Errors = []errorMapping{
		{upstream.ErrPartialCommit, pop3.ErrPartialCommit},
		{upstream.ErrMessageGone, pop3.ErrMessageGone},
		{upstream.ErrAuthFailed, pop3.ErrAuthFailed},
		{upstream.ErrInUse, pop3.ErrInUse},
		{upstream.ErrUnavailable, pop3.ErrUnavailable},
	}
	imapErrors = []errorMapping{
		{upstream.ErrAuthFailed, imap.ErrAuthFailed},
		{upstream.ErrInUse, imap.ErrInUse},
		{upstream.ErrUnavailable, imap.ErrUnavailable},
	}
)

type errorMapping struct{ from, to error }

// frontError is an outcome translated for a front: errors.Is matches both
// the front's sentinel and everything in the cause; its text is the cause's.
type frontError struct{ kind, cause error }

func (e *frontError) Error() string   { return e.cause.Error() }
func (e *frontError) Unwrap() []error { return []error{e.kind, e.cause} }

// translate maps err with the first mapping it matches, in order. An error
// that matches none is returned as it is: the fronts answer it as a
// temporary failure.
func translate(err error, mappings []errorMapping) error {
	if err == nil {
		return nil
	}
	for _, m := range mappings {
		if errors.Is(err, m.from) {
			return &frontError{m.to, err}
		}
	}
	return err
}

// pop3Backend opens maildrops for gateway/pop3.
type pop3Backend struct{ s *Server }

var _ pop3.Backend = pop3Backend{}

func (b pop3Backend) Open(ctx context.Context, lg pop3.Login) (pop3.Maildrop, error) {
	md, backend, err := logIn(ctx, b.s, login{config.ProtocolPOP3, lg.User, lg.Password, lg.Remote, lg.Local, lg.Attempt},
		b.s.maildrops.Open)
	if err != nil {
		return nil, translate(err, pop3Errors)
	}
	return pop3Maildrop{md, b.s.metrics, backend}, nil
}

// logIn runs l through authenticate, with open (the front's way to log in
// to a candidate server) as the attempt, and counts it: what open made and
// the backend's name.
func logIn[T any](ctx context.Context, s *Server, l login,
	open func(context.Context, upstream.Target, upstream.Timeouts, string, string) (T, error)) (T, string, error) {
	start := time.Now()
	var made T
	backend, err := s.authenticate(ctx, l, func(t upstream.Target, user, password string, to upstream.Timeouts) error {
		var err error
		made, err = open(ctx, t, to, user, password)
		return err
	})
	s.observeLogin(l.protocol, backend, start, err)
	return made, backend, err
}

// pop3Maildrop is an upstream maildrop as gateway/pop3 sees it: its errors
// translated, the deletions a QUIT commits counted, its backend named for the
// session's logs.
type pop3Maildrop struct {
	*upstream.Maildrop
	m       *metrics
	backend string
}

// Through the embedded *upstream.Maildrop this also keeps upstream's
// maildrop to the contract of gateway/pop3.Maildrop (upstream must not
// import the fronts).
var _ pop3.Maildrop = pop3Maildrop{}

func (c pop3Maildrop) Backend() string { return c.backend }

func (c pop3Maildrop) Retr(ctx context.Context, n int) (io.ReadCloser, error) {
	rc, err := c.Maildrop.Retr(ctx, n)
	return rc, translate(err, pop3Errors)
}

func (c pop3Maildrop) Top(ctx context.Context, n, lines int) (io.ReadCloser, error) {
	rc, err := c.Maildrop.Top(ctx, n, lines)
	return rc, translate(err, pop3Errors)
}

func (c pop3Maildrop) Commit(ctx context.Context, deleted []int) error {
	err := c.Maildrop.Commit(ctx, deleted)
	if err == nil {
		c.m.deletions.Add(float64(len(deleted)))
	}
	return translate(err, pop3Errors)
}

// imapBackend logs in to the backend for gateway/imap and hands back the
// connection.
type imapBackend struct{ s *Server }

var _ imap.Backend = imapBackend{}

func (b imapBackend) Connect(ctx context.Context, lg imap.Login) (imap.Upstream, error) {
	sess, backend, err := logIn(ctx, b.s, login{config.ProtocolIMAP, lg.User, lg.Password, lg.Remote, lg.Local, lg.Attempt},
		upstream.Login)
	if err != nil {
		return imap.Upstream{}, translate(err, imapErrors)
	}
	return imap.Upstream{Conn: sess.Conn, Caps: sess.Caps, Name: backend}, nil
}
