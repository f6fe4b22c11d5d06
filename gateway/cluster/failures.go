package cluster

// The brute-force limiter's counts for the whole cluster (the model is
// gateway/authlimit.go's and the README's; this file only stores).
//
// A failure count is a key prefix + "fail:" + the limiter's key, incremented
// by a Lua script that gives it an expiry of the window at its first
// failure: the same fixed window, starting at the first failure, as the
// limiter's own tables, and atomic whichever instance counts. A known login
// (a network that logged in to an account) is a key with an expiry of its
// own. Values are counts and "1": never a password or a hash of one.

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// failureScript counts one failure: INCR, and the window's expiry at the
// first one. A key left without an expiry (written by hand, or a PEXPIRE
// lost to a crash between two commands of an older version) gets one too,
// so no count lives forever.
var failureScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n`)

// errDegraded: Redis is known to be away; the caller counts on its own.
var errDegraded = errors.New("cluster: Redis unreachable")

// Failures is the limiter's shared store (it implements the gateway's
// sharedFailures).
type Failures struct{ c *Client }

// Failures returns the limiter's shared store.
func (c *Client) Failures() *Failures { return &Failures{c} }

func (f *Failures) key(k string) string { return f.c.cfg.KeyPrefix + "fail:" + k }

// run sends one pipeline under the exchange deadline; with Redis known to
// be away it sends nothing.
func (f *Failures) run(ctx context.Context, fill func(redis.Pipeliner)) ([]redis.Cmder, error) {
	if !f.c.Up() {
		return nil, errDegraded
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	// A pipeline of one-key commands: Redis Cluster splits it by slot,
	// where one MGET across slots would be refused.
	cmds, err := f.c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error { fill(p); return nil })
	if err != nil && !errors.Is(err, redis.Nil) {
		f.c.failed(err)
		return nil, err
	}
	return cmds, nil
}

// Failures implements the limiter's store: the count of each key.
func (f *Failures) Failures(ctx context.Context, keys ...string) ([]int, error) {
	cmds, err := f.run(ctx, func(p redis.Pipeliner) {
		for _, k := range keys {
			p.Get(ctx, f.key(k))
		}
	})
	if err != nil {
		return nil, err
	}
	n := make([]int, len(keys))
	for i, c := range cmds {
		v, err := c.(*redis.StringCmd).Int()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		n[i] = v
	}
	return n, nil
}

// AddFailure implements the limiter's store: one more failure under each
// key, in a window of per from its first.
func (f *Failures) AddFailure(ctx context.Context, per time.Duration, keys ...string) ([]int, error) {
	cmds, err := f.run(ctx, func(p redis.Pipeliner) {
		for _, k := range keys {
			failureScript.Eval(ctx, p, []string{f.key(k)}, per.Milliseconds()) // EVALSHA cannot fall back inside a pipeline
		}
	})
	if err != nil {
		return nil, err
	}
	n := make([]int, len(keys))
	for i, c := range cmds {
		v, err := c.(*redis.Cmd).Int()
		if err != nil {
			return nil, err
		}
		n[i] = v
	}
	return n, nil
}

// Known implements the limiter's store: whether each key was remembered.
func (f *Failures) Known(ctx context.Context, keys ...string) ([]bool, error) {
	cmds, err := f.run(ctx, func(p redis.Pipeliner) {
		for _, k := range keys {
			p.Exists(ctx, f.key(k))
		}
	})
	if err != nil {
		return nil, err
	}
	known := make([]bool, len(keys))
	for i, c := range cmds {
		known[i] = c.(*redis.IntCmd).Val() > 0
	}
	return known, nil
}

// Remember implements the limiter's store: each key, for ttl.
func (f *Failures) Remember(ctx context.Context, ttl time.Duration, keys ...string) error {
	_, err := f.run(ctx, func(p redis.Pipeliner) {
		for _, k := range keys {
			p.Set(ctx, f.key(k), "1", ttl)
		}
	})
	return err
}
