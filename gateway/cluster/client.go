// Package cluster makes several mailgate instances one gateway: the state
// they must share lives in Redis (a single server, Sentinel or Redis
// Cluster, through go-redis's UniversalClient). It implements the small
// interfaces its consumers declare: a maildrop Locker for upstream (the POP3
// exclusive-access lock of RFC 1939 §4, cluster-wide), the failure counters
// of the gateway's brute-force limiter, a certmagic.Storage for tls, and an
// upstream.UIDLStore for the POP3 UIDL map (uidlstore.go).
// Only package gateway imports it.
//
//	c, _ := cluster.New(cfg.Cluster, log, observe)
//	c.Start(ctx)                                   // health checks, takeover messages
//	mds := upstream.NewMaildrops(cfg.POP3, log, upstream.WithLocker(c.Locker(upstream.NewLocalLocker())))
//	defer c.Close()
//
// Degraded mode (README, Cluster mode): when Redis cannot be reached, every
// lock and count falls back to the instance's own (availability first);
// the change is logged once at error level each way and Up reports it. The
// UIDL map has no such fallback: a session that cannot read it fails.
// Redis never holds a password, a password hash or a message body: keys
// name backends, user names and client networks, values are counters,
// random tokens and instance names, and the UIDL maps' records (header
// digests, sizes, UIDs, UIDLs).
package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Deadlines of the Redis exchanges. Redis answers in well under a
// millisecond on a healthy network; these bound a Redis that is away, so
// that a login in degraded mode waits at most opTimeout once before the
// instance goes per-instance.
const (
	opTimeout      = time.Second
	dialTimeout    = 2 * time.Second
	healthInterval = time.Second
)

// Observer is told the outcome of each health check: whether Redis
// answered, and how long the PING took (for mailgate_cluster_up and the
// round-trip-time metric).
type Observer func(up bool, rtt time.Duration)

// Client is the connection to the cluster's Redis and the instance's place
// in the cluster: its name, its key prefix, its health.
type Client struct {
	rdb      redis.UniversalClient
	cfg      Config
	log      *zap.Logger
	observe  Observer
	up       atomic.Bool
	stateMu  sync.Mutex // orders state changes and their log lines
	checked  bool       // a first health check has run
	channel  string     // this instance's pub/sub channel
	lockers  []*Locker
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeOne sync.Once
}

// New builds the client from a validated Config; nothing is dialled until
// Start. A nil observe observes nothing.
func New(cfg *Config, log *zap.Logger, observe Observer) *Client {
	if observe == nil {
		observe = func(bool, time.Duration) {}
	}
	r := cfg.Redis
	opts := &redis.UniversalOptions{
		Addrs:        r.Addresses,
		MasterName:   r.MasterName,
		Username:     r.Username,
		Password:     r.password,
		DB:           r.DB,
		DialTimeout:  dialTimeout,
		ReadTimeout:  opTimeout,
		WriteTimeout: opTimeout,
		PoolTimeout:  opTimeout,
		// Every call also carries a context deadline; go-redis honours it.
		ContextTimeoutEnabled: true,
		// One retry at most: a Redis that is away must cost a login little
		// before the instance goes per-instance.
		MaxRetries:      1,
		DisableIdentity: true,
	}
	if r.MasterName != "" {
		opts.SentinelUsername, opts.SentinelPassword = r.Username, r.password
	}
	if r.tlsConfig != nil {
		opts.Dialer = tlsDialer(r.tlsConfig)
	}
	return &Client{
		rdb:     redis.NewUniversalClient(opts),
		cfg:     *cfg,
		log:     log.Named("cluster").With(zap.String("instance", cfg.Instance)),
		observe: observe,
		channel: cfg.KeyPrefix + "instance:" + cfg.Instance,
	}
}

// tlsDialer dials Redis over implicit TLS, verifying the server's
// certificate for server_name or, without one, the address's host.
func tlsDialer(base *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cfg := base.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: dialTimeout}, Config: cfg}
		return d.DialContext(ctx, network, addr)
	}
}

// Redis is the client, for the certmagic Storage (NewStorage).
func (c *Client) Redis() redis.UniversalClient { return c.rdb }

// KeyPrefix is cluster.key_prefix.
func (c *Client) KeyPrefix() string { return c.cfg.KeyPrefix }

// Instance is this gateway's name in the cluster.
func (c *Client) Instance() string { return c.cfg.Instance }

// Up reports whether Redis answered the last exchange. While it is false
// the lockers and counters are per instance.
func (c *Client) Up() bool { return c.up.Load() }

// Start checks Redis once (bounded by a few seconds: a Redis that is away
// does not stop the gateway from starting, it starts degraded), then runs
// the health checks and this instance's takeover channel until Close.
func (c *Client) Start(ctx context.Context) {
	ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	c.check(ctx)
	ps := c.rdb.Subscribe(ctx, c.channel)
	if c.Up() {
		// Subscribed before the first session: a takeover answer sent to
		// this instance must find it listening.
		sctx, cancel := opContext(ctx)
		if _, err := ps.Receive(sctx); err != nil {
			c.failed(err)
		}
		cancel()
	}
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(healthInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.check(ctx)
			}
		}
	}()
	go func() {
		defer c.wg.Done()
		c.listen(ctx, ps)
	}()
}

// Close stops the health checks and the subscription, waits for them,
// and closes the connections. The lockers' leases still held are left to
// expire (a stopping gateway releases its sessions' locks as they end,
// before Close).
func (c *Client) Close() error {
	var err error
	c.closeOne.Do(func() {
		if c.cancel != nil {
			c.cancel()
		}
		c.wg.Wait()
		for _, l := range c.lockers {
			l.stop()
		}
		err = c.rdb.Close()
	})
	return err
}

// check PINGs Redis under a deadline and records the outcome.
func (c *Client) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	start := time.Now()
	err := c.rdb.Ping(ctx).Err()
	rtt := time.Since(start)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return // closing
	}
	c.observe(err == nil, rtt)
	c.setUp(err == nil, err)
}

// setUp records Redis's state; each change (and a start in degraded mode)
// is logged once, at error level both ways so that one alert rule sees
// the outage and its end.
func (c *Client) setUp(up bool, cause error) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	was := c.up.Swap(up)
	first := !c.checked
	c.checked = true
	switch {
	case up && !was:
		if !first {
			c.log.Error("cluster: Redis answers again; POP3 locks and login limits are cluster-wide again")
		}
	case !up && (was || first):
		c.log.Error("cluster: Redis unreachable; POP3 locks and login limits are per instance until it answers (degraded mode)",
			zap.Strings("redis", c.cfg.Redis.Addresses), zap.Error(cause))
	}
}

// failed records the outcome of an exchange with Redis: an error that is
// not Redis's own answer (a refused or timed-out connection) puts the
// instance in degraded mode at once, without waiting for the next health
// check. It reports whether err was such an error.
func (c *Client) failed(err error) bool {
	if !unreachable(err) {
		return false
	}
	c.setUp(false, err)
	return true
}

// unreachable: err says nothing came back from Redis (redis.Nil and
// Redis's error replies are answers).
func unreachable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var rerr redis.Error
	return !errors.As(err, &rerr)
}

// opContext is the deadline of one exchange with Redis.
func opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
}

// listen receives this instance's messages (takeover requests and their
// answers) until ctx ends; go-redis subscribes again after a reconnection.
func (c *Client) listen(ctx context.Context, ps *redis.PubSub) {
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			var msg message
			if err := json.Unmarshal([]byte(m.Payload), &msg); err != nil {
				c.log.Warn("cluster: unreadable message on the instance channel", zap.Error(err))
				continue
			}
			for _, l := range c.lockers {
				// A takeover answer costs a Redis exchange: never hold up
				// the channel for it.
				go l.handle(msg)
			}
		}
	}
}
