package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"mailgate/test/redistest"
	"mailgate/upstream"
)

// lockRedis is a miniredis for the scripts and the lockers (the real
// redis-server runs in test/cluster).
func lockRedis(t *testing.T) *miniredis.Miniredis {
	t.Helper()
	m := miniredis.RunT(t)
	return m
}

// lockClient is one instance of a cluster on m, started.
func lockClient(t *testing.T, m *miniredis.Miniredis, instance string, lease time.Duration) *Client {
	t.Helper()
	cfg := &Config{Redis: RedisConfig{Addresses: []string{m.Addr()}}, Instance: instance, LockLease: lease}
	cfg.ApplyDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	c := New(cfg, zaptest.NewLogger(t), nil)
	c.Start(context.Background())
	t.Cleanup(func() { c.Close() })
	if !c.Up() {
		t.Fatal("the client does not see miniredis")
	}
	return c
}

func rawClient(t *testing.T, m *miniredis.Miniredis) *redis.Client {
	t.Helper()
	r := redis.NewClient(&redis.Options{Addr: m.Addr(), DisableIdentity: true})
	t.Cleanup(func() { r.Close() })
	return r
}

func TestLeaseScripts(t *testing.T) {
	m := lockRedis(t)
	r := rawClient(t, m)
	ctx := context.Background()
	run := func(s *redis.Script, args ...any) int {
		t.Helper()
		n, err := s.Run(ctx, r, []string{"k"}, args...).Int()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	m.Set("k", "mine")
	if n := run(releaseScript, "theirs"); n != 0 || !m.Exists("k") {
		t.Fatal("release deleted a lock that was not its own")
	}
	if n := run(releaseScript, "mine"); n != 1 || m.Exists("k") {
		t.Fatal("release did not delete its own lock")
	}

	// renew: extend ours (1), write a missing one (2), lose to another (0).
	m.Set("k", "mine")
	m.SetTTL("k", time.Second)
	if n := run(renewScript, "mine", 30000); n != 1 || m.TTL("k") != 30*time.Second {
		t.Fatalf("renew of our lease = %d, ttl %v; want 1 and 30s", n, m.TTL("k"))
	}
	m.Del("k")
	if n := run(renewScript, "mine", 30000); n != 2 || mustGet(t, m, "k") != "mine" || m.TTL("k") != 30*time.Second {
		t.Fatalf("renew of a missing lease = %d; want it written again with its lease", n)
	}
	m.Set("k", "theirs")
	if n := run(renewScript, "mine", 30000); n != 0 || mustGet(t, m, "k") != "theirs" {
		t.Fatalf("renew of another's lease = %d; want 0 and their value kept", n)
	}

	// transfer: only from the value named.
	if n := run(transferScript, "mine", "new", 30000); n != 0 || mustGet(t, m, "k") != "theirs" {
		t.Fatal("transfer from a value that does not hold the lock")
	}
	if n := run(transferScript, "theirs", "new", 30000); n != 1 || mustGet(t, m, "k") != "new" || m.TTL("k") != 30*time.Second {
		t.Fatal("transfer did not hand the lock over with a fresh lease")
	}

	// The lease expires: the key is gone after it.
	m.FastForward(31 * time.Second)
	if m.Exists("k") {
		t.Fatal("the lease did not expire")
	}
}

func mustGet(t *testing.T, m *miniredis.Miniredis, k string) string {
	t.Helper()
	v, err := m.Get(k)
	if err != nil {
		t.Fatalf("GET %s: %v", k, err)
	}
	return v
}

var bob = upstream.LockKey{Backend: "store", User: "bob@example.org"}

func TestLockerExclusiveAcrossInstances(t *testing.T) {
	m := lockRedis(t)
	a := lockClient(t, m, "a", 30*time.Second).Locker(upstream.NewLocalLocker())
	b := lockClient(t, m, "b", 30*time.Second).Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	la, err := a.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	v := mustGet(t, m, "mailgate:lock:store:bob@example.org")
	if !strings.HasSuffix(v, " a") || len(v) != 32+2 {
		t.Fatalf("lock value %q: want a 32-digit token and the owner instance", v)
	}
	if _, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, time.Second); !errors.Is(err, upstream.ErrInUse) {
		t.Fatalf("a second session on another instance: %v, want ErrInUse", err)
	}
	if _, err := b.Lock(ctx, upstream.LockKey{Backend: "store", User: "alice"}, upstream.NewHolder(), upstream.LockExclusive, time.Second); err != nil {
		t.Fatalf("another user: %v", err)
	}
	la.Release()
	if m.Exists("mailgate:lock:store:bob@example.org") {
		t.Fatal("Release left the key")
	}
	lb, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, time.Second)
	if err != nil {
		t.Fatalf("after the release: %v", err)
	}
	if err := lb.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	lb.Release()
	la.Release() // idempotent, and never deletes another's lock
}

// The same instance: a session that ends and a newcomer right after it (the
// key still there for a moment) meet in the local table, and the newcomer
// takes the key over.
func TestLockerSameInstanceHandsOver(t *testing.T) {
	m := lockRedis(t)
	a := lockClient(t, m, "a", 30*time.Second).Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	old := upstream.NewHolder()
	l1, err := a.Lock(ctx, bob, old, upstream.LockTakeover, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	old.Waiting(true)
	time.Sleep(5 * time.Millisecond)
	l2, err := a.Lock(ctx, bob, upstream.NewHolder(), upstream.LockTakeover, time.Millisecond)
	if err != nil {
		t.Fatalf("takeover on one instance: %v", err)
	}
	select {
	case <-old.Taken():
	default:
		t.Fatal("the older session was not told")
	}
	l1.Release()
	if err := l2.Confirm(ctx); err != nil {
		t.Fatalf("the newcomer's lease after the old session's release: %v", err)
	}
	if !m.Exists("mailgate:lock:store:bob@example.org") {
		t.Fatal("the old session's release deleted the newcomer's key")
	}
	l2.Release()
}

func TestLockerTakeoverAcrossInstances(t *testing.T) {
	m := lockRedis(t)
	a := lockClient(t, m, "a", 30*time.Second).Locker(upstream.NewLocalLocker())
	b := lockClient(t, m, "b", 30*time.Second).Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	old := upstream.NewHolder()
	la, err := a.Lock(ctx, bob, old, upstream.LockTakeover, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Busy (not waiting for a command): [IN-USE].
	if _, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockTakeover, 10*time.Millisecond); !errors.Is(err, upstream.ErrInUse) {
		t.Fatalf("takeover of a busy session: %v, want ErrInUse", err)
	}
	// Waiting, but not for long enough: [IN-USE].
	old.Waiting(true)
	if _, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockTakeover, time.Hour); !errors.Is(err, upstream.ErrInUse) {
		t.Fatalf("takeover before takeover_after: %v, want ErrInUse", err)
	}
	time.Sleep(20 * time.Millisecond)
	lb, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockTakeover, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("takeover across instances: %v", err)
	}
	select {
	case <-old.Taken():
	default:
		t.Fatal("the session on the owner instance was not ended")
	}
	if v := mustGet(t, m, "mailgate:lock:store:bob@example.org"); !strings.HasSuffix(v, " b") {
		t.Fatalf("lock value %q after the takeover: want b's", v)
	}
	la.Release() // the taken-over session ends: b keeps the lock
	if err := lb.Confirm(ctx); err != nil {
		t.Fatalf("b's lease: %v", err)
	}
	// The old instance's table let the lock go with the takeover: its next
	// session asks b (busy now), not its own stale entry.
	if _, err := a.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, 0); !errors.Is(err, upstream.ErrInUse) {
		t.Fatalf("a new session on a while b holds the lock: %v, want ErrInUse", err)
	}
	lb.Release()
}

// An owner in UPDATE is waited for, then the newcomer gets the lock.
func TestLockerTakeoverWaitsForUpdate(t *testing.T) {
	m := lockRedis(t)
	a := lockClient(t, m, "a", 30*time.Second).Locker(upstream.NewLocalLocker())
	b := lockClient(t, m, "b", 30*time.Second).Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	old := upstream.NewHolder()
	la, err := a.Lock(ctx, bob, old, upstream.LockTakeover, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !old.EnterUpdate() {
		t.Fatal("EnterUpdate refused")
	}
	go func() { time.Sleep(300 * time.Millisecond); la.Release() }()
	start := time.Now()
	lb, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockTakeover, 0)
	if err != nil {
		t.Fatalf("newcomer after the owner's UPDATE: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("got the lock after %v while the owner was in UPDATE", d)
	}
	select {
	case <-old.Taken():
		t.Fatal("a session in UPDATE was taken over")
	default:
	}
	lb.Release()
}

// A lease another session holds now (a failover to a replica that had
// another's lock, a pause past the lease) is found out by Confirm, before
// UPDATE; a missing key is written again.
func TestLeaseLost(t *testing.T) {
	m := lockRedis(t)
	a := lockClient(t, m, "a", 30*time.Second).Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	la, err := a.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, 0)
	if err != nil {
		t.Fatal(err)
	}
	key := "mailgate:lock:store:bob@example.org"
	mine := mustGet(t, m, key)
	m.Del(key)
	if err := la.Confirm(ctx); err != nil {
		t.Fatalf("Confirm after the key vanished: %v, want it written again", err)
	}
	if mustGet(t, m, key) != mine {
		t.Fatal("the vanished key was not written again")
	}
	m.Set(key, "0123456789abcdef0123456789abcdef b")
	if err := la.Confirm(ctx); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Confirm with another's value: %v, want ErrLeaseLost", err)
	}
	la.Release()
	if mustGet(t, m, key) == mine || !m.Exists(key) {
		t.Fatal("the lost lease's release touched the new holder's key")
	}
}

// The renewals keep a lease alive past lock_lease.
func TestLeaseRenewed(t *testing.T) {
	m := lockRedis(t)
	a := lockClient(t, m, "a", time.Second).Locker(upstream.NewLocalLocker())
	la, err := a.Lock(context.Background(), bob, upstream.NewHolder(), upstream.LockExclusive, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Release()
	key := "mailgate:lock:store:bob@example.org"
	// miniredis's clock only moves by FastForward: let the renewer reset
	// the TTL, then move past the original lease.
	m.FastForward(900 * time.Millisecond)
	deadline := time.Now().Add(3 * time.Second)
	for m.TTL(key) <= 100*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatal("the lease was not renewed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.FastForward(900 * time.Millisecond)
	if !m.Exists(key) {
		t.Fatal("the renewed lease expired at the original deadline")
	}
}

// Degraded mode: with Redis away a lock is the instance's own; back, the
// renewals write it to Redis.
func TestLockerDegraded(t *testing.T) {
	m := lockRedis(t)
	c := lockClient(t, m, "a", time.Second)
	a := c.Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	m.Close()
	start := time.Now()
	la, err := a.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, 0)
	if err != nil {
		t.Fatalf("lock with Redis away: %v, want the local lock", err)
	}
	if d := time.Since(start); d > 3*opTimeout {
		t.Fatalf("lock with Redis away took %v", d)
	}
	if c.Up() {
		t.Fatal("Up with Redis away")
	}
	if _, err := a.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, 0); !errors.Is(err, upstream.ErrInUse) {
		t.Fatalf("second session on the instance in degraded mode: %v, want ErrInUse", err)
	}
	if err := la.Confirm(ctx); err != nil {
		t.Fatalf("Confirm in degraded mode: %v, want nil (availability first)", err)
	}
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	key := "mailgate:lock:store:bob@example.org"
	deadline := time.Now().Add(5 * time.Second)
	for !c.Up() || !m.Exists(key) {
		if time.Now().After(deadline) {
			t.Fatalf("after Redis returned: up %v, key written %v", c.Up(), m.Exists(key))
		}
		time.Sleep(50 * time.Millisecond)
	}
	la.Release()
	if m.Exists(key) {
		t.Fatal("Release after the outage left the key")
	}
}

// BenchmarkLock is one session's lock as a POP3 login and QUIT use it: Lock,
// Confirm (before UPDATE) and Release; per process (local) and on a real
// redis-server (cluster), interleaved op by op, each reported per lock.
// -count 3 gives three runs: take the median.
//
//	go test -run '^$' -bench '^BenchmarkLock$' -count 3 ./gateway/cluster/
func BenchmarkLock(b *testing.B) {
	addr, _ := redistest.Start(b)
	cfg := &Config{Redis: RedisConfig{Addresses: []string{addr}}, Instance: "bench"}
	cfg.ApplyDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		b.Fatal(errs)
	}
	c := New(cfg, zap.NewNop(), nil)
	c.Start(context.Background())
	b.Cleanup(func() { c.Close() })
	ctx := context.Background()
	lockers := []upstream.Locker{upstream.NewLocalLocker(), c.Locker(upstream.NewLocalLocker())}
	var spent [2]time.Duration
	n := 0
	for b.Loop() {
		for i, l := range lockers {
			start := time.Now()
			ls, err := l.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, 0)
			if err != nil {
				b.Fatal(err)
			}
			if err := ls.Confirm(ctx); err != nil {
				b.Fatal(err)
			}
			ls.Release()
			spent[i] += time.Since(start)
		}
		n++
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(n), "local-ns/lock")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(n), "cluster-ns/lock")
}

// On Redis Cluster (several addresses: go-redis's ClusterClient) every
// exchange is one key, or a pipeline of one-key commands, so none is
// refused CROSSSLOT; the takeover messages cross over pub/sub too.
func TestOnRedisCluster(t *testing.T) {
	addr, _ := redistest.StartCluster(t)
	client := func(instance string) *Client {
		// The same seed twice: two addresses make it a Redis Cluster client.
		cfg := &Config{Redis: RedisConfig{Addresses: []string{addr, addr}}, Instance: instance}
		cfg.ApplyDefaults()
		if errs := cfg.Validate(); len(errs) > 0 {
			t.Fatal(errs)
		}
		c := New(cfg, zaptest.NewLogger(t), nil)
		if _, ok := c.Redis().(*redis.ClusterClient); !ok {
			t.Fatalf("%T, want a *redis.ClusterClient", c.Redis())
		}
		c.Start(context.Background())
		t.Cleanup(func() { c.Close() })
		if !c.Up() {
			t.Fatal("the cluster client does not see the cluster")
		}
		return c
	}
	ca, cb := client("a"), client("b")
	a, b := ca.Locker(upstream.NewLocalLocker()), cb.Locker(upstream.NewLocalLocker())
	ctx := context.Background()
	old := upstream.NewHolder()
	la, err := a.Lock(ctx, bob, old, upstream.LockTakeover, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockExclusive, 0); !errors.Is(err, upstream.ErrInUse) {
		t.Fatalf("exclusive across instances on Redis Cluster: %v, want ErrInUse", err)
	}
	old.Waiting(true)
	time.Sleep(5 * time.Millisecond)
	lb, err := b.Lock(ctx, bob, upstream.NewHolder(), upstream.LockTakeover, time.Millisecond)
	if err != nil {
		t.Fatalf("takeover across instances on Redis Cluster: %v", err)
	}
	la.Release()
	if err := lb.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	lb.Release()

	f := ca.Failures()
	keys := []string{"net:192.0.2.1/32", "acct:name:alice", "acct:routed:store:alice"}
	for i := 1; i <= 2; i++ {
		n, err := f.AddFailure(ctx, time.Minute, keys...)
		if err != nil || n[0] != i || n[2] != i {
			t.Fatalf("AddFailure %d: %v, %v", i, n, err)
		}
	}
	if n, err := cb.Failures().Failures(ctx, keys...); err != nil || n[1] != 2 {
		t.Fatalf("Failures from the other instance: %v, %v", n, err)
	}
	if err := f.Remember(ctx, time.Hour, "known:a|x", "known:b|y"); err != nil {
		t.Fatal(err)
	}
	if k, err := cb.Failures().Known(ctx, "known:a|x", "known:c|z"); err != nil || !k[0] || k[1] {
		t.Fatalf("Known: %v, %v", k, err)
	}
}
