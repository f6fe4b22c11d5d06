package cluster

// The cluster-wide POP3 maildrop lock (RFC 1939 §4: one session per
// maildrop, for the whole gateway and not only for one instance).
//
// A lock is a Redis key, prefix + "lock:" + backend + ":" + case-folded
// backend user (upstream.LockKey, the identity of the per-process lock),
// whose value is "<random token> <instance>": a lease taken with SET NX PX,
// renewed every third of cluster.lock_lease while the session lives, and
// released by a compare-and-delete of exactly that value (Lua), so that a
// lease that expired and was taken by another session is never deleted by
// its former holder. Each lock is also taken in the instance's own table
// first: sessions of one instance meet there, and it is all that is left
// when Redis is away (degraded mode, availability first).
//
// pop3.lock: takeover across instances: the newcomer publishes a request
// on the owner instance's channel (prefix + "instance:" + name); the owner
// asks the holder's session (upstream.Holder.TakeOver: waiting for a
// command for at least takeover_after, not in UPDATE), and if it agrees
// swaps the key to the newcomer's value (compare-and-set, Lua) before it
// answers, so that nobody can slip in between. The taken-over session ends
// without UPDATE (RFC 1939 §6). An owner that does not answer within
// takeoverReplyWait (dead, or partitioned) means [IN-USE]; its lease
// expires within lock_lease.
//
// A lease can be lost: a Redis failover to a replica that had not seen it,
// or a pause longer than the lease, after which another session took the
// key. The renewals notice it, and so does Lease.Confirm, which the
// maildrop calls right before UPDATE: a lost lease commits nothing and QUIT
// answers -ERR [SYS/TEMP]. A key found missing at a renewal (a failover, or
// Redis back after an outage) is written again: nobody holds it, so the
// session is still alone.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"mailgate/upstream"
)

// The lease scripts. Each touches one key (Redis Cluster routes it by the
// key's slot) and compares the whole value, token and instance.
var (
	// releaseScript deletes the lock if it is still ours.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
	// renewScript extends our lease: 1. A missing key is written again
	// (Redis lost it, nobody holds it): 2. Another value: lost, 0.
	renewScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0`)
	// transferScript hands the lock from value ARGV[1] to ARGV[2] with a
	// fresh lease: a takeover, atomically.
	transferScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0`)
)

// takeoverReplyWait bounds how long a newcomer waits for the owner
// instance's answer to a takeover request.
const takeoverReplyWait = time.Second

// updatePoll is how often a newcomer looks again at a lock whose holder is
// in UPDATE on another instance.
const updatePoll = 50 * time.Millisecond

// ErrLeaseLost is Lease.Confirm's error when another session holds the
// lock now.
var ErrLeaseLost = errors.New("the maildrop lock was lost to another session")

// Locker is the cluster-wide maildrop locker; it implements
// upstream.Locker.
type Locker struct {
	c     *Client
	local upstream.Locker
	lease time.Duration

	mu      sync.Mutex
	leases  map[string]*lease      // ours, by value
	waiters map[string]chan string // takeover requests awaiting an answer, by id
	wg      sync.WaitGroup         // renewers
}

var _ upstream.Locker = (*Locker)(nil)

// Locker makes the cluster-wide locker on top of local, the instance's own
// table (upstream.NewLocalLocker). Make one per gateway, before Start.
func (c *Client) Locker(local upstream.Locker) *Locker {
	l := &Locker{c: c, local: local, lease: c.cfg.LockLease,
		leases: make(map[string]*lease), waiters: make(map[string]chan string)}
	c.lockers = append(c.lockers, l)
	return l
}

var _ upstream.Epocher = (*Locker)(nil)

// Epoch implements upstream.Epocher with the instance's own table: a lock
// released on this instance is what a pipelined snapshot may predate.
func (l *Locker) Epoch(k upstream.LockKey) uint64 {
	if e, ok := l.local.(upstream.Epocher); ok {
		return e.Epoch(k)
	}
	return 0
}

func (l *Locker) key(k upstream.LockKey) string {
	// Backend names are letters, digits, - and _: the first ':' after
	// "lock:" ends the backend.
	return l.c.cfg.KeyPrefix + "lock:" + k.Backend + ":" + k.User
}

// Lock implements upstream.Locker.
func (l *Locker) Lock(ctx context.Context, k upstream.LockKey, h *upstream.Holder, policy string, after time.Duration) (upstream.Lease, error) {
	local, err := l.local.Lock(ctx, k, h, policy, after)
	if err != nil || policy == upstream.LockNone {
		return local, err
	}
	ls := &lease{l: l, key: l.key(k), value: newToken() + " " + l.c.cfg.Instance, h: h, local: local,
		stop: make(chan struct{}), log: l.c.log.With(zap.String("backend", k.Backend), zap.String("user", k.User))}
	l.mu.Lock()
	l.leases[ls.value] = ls
	l.mu.Unlock()
	if err := l.acquire(ctx, ls, policy, after); err != nil {
		l.forget(ls)
		local.Release()
		return nil, err
	}
	l.wg.Add(1)
	go ls.renew()
	return ls, nil
}

// acquire writes ls's lease in Redis, taking it over from its owner when
// policy allows. With Redis away it returns nil: the local lock is all
// there is (degraded mode), and the renewals write the lease when Redis
// answers again.
func (l *Locker) acquire(ctx context.Context, ls *lease, policy string, after time.Duration) error {
	deadline := time.Now().Add(upstream.UpdateWait)
	for time.Now().Before(deadline) {
		if !l.c.Up() {
			return nil
		}
		octx, cancel := opContext(ctx)
		ok, err := l.c.rdb.SetNX(octx, ls.key, ls.value, l.lease).Result()
		if err == nil && !ok {
			var cur string
			cur, err = l.c.rdb.Get(octx, ls.key).Result()
			if err == nil {
				ok, err = l.contend(octx, ls, cur, policy, after)
			} else if errors.Is(err, redis.Nil) {
				err = nil // released meanwhile: try again
			}
		}
		cancel()
		switch {
		case errors.Is(err, upstream.ErrInUse):
			return err
		case errors.Is(err, errUpdating):
			if !sleep(ctx, updatePoll) {
				return ctx.Err()
			}
		case err != nil:
			if l.c.failed(err) {
				ls.log.Warn("maildrop lock taken on this instance only: Redis unreachable", zap.Error(err))
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		case ok:
			ls.confirmed(time.Now())
			return nil
		}
	}
	return fmt.Errorf("%w: the session holding the maildrop is still in UPDATE", upstream.ErrInUse)
}

// errUpdating: the holder is in UPDATE; look again shortly.
var errUpdating = errors.New("holder in UPDATE")

// contend deals with a lock held under value cur: ours to hand over (a
// session of this instance that ended or was taken over here), or
// another instance's, which is asked to give it up if policy is takeover.
func (l *Locker) contend(ctx context.Context, ls *lease, cur, policy string, after time.Duration) (bool, error) {
	l.mu.Lock()
	_, mine := l.leases[cur]
	l.mu.Unlock()
	if mine {
		// The local table gave us the lock, so that session has ended or
		// was taken over here: its lease is ours to take.
		n, err := transferScript.Run(ctx, l.c.rdb, []string{ls.key}, cur, ls.value, l.lease.Milliseconds()).Int()
		return n == 1, err
	}
	owner := cur[strings.IndexByte(cur, ' ')+1:]
	if policy != upstream.LockTakeover {
		ls.log.Info("maildrop locked by a session on another instance", zap.String("owner", owner))
		return false, fmt.Errorf("%w: held on instance %s", upstream.ErrInUse, owner)
	}
	switch answer := l.askTakeover(ctx, owner, ls.key, cur, ls.value, after); answer {
	case answerTaken:
		ls.log.Info("maildrop taken over from a session on another instance", zap.String("owner", owner))
		return true, nil
	case answerUpdating:
		return false, errUpdating
	case answerUnknown:
		return false, nil // gone meanwhile: try again
	default:
		ls.log.Info("maildrop locked by a session on another instance", zap.String("owner", owner), zap.String("takeover", answer))
		return false, fmt.Errorf("%w: held on instance %s (%s)", upstream.ErrInUse, owner, answer)
	}
}

// Answers to a takeover request.
const (
	answerTaken    = "taken"    // the lock is the newcomer's now
	answerUpdating = "updating" // the holder is in UPDATE: wait
	answerBusy     = "busy"     // the holder is not idle for long enough
	answerUnknown  = "unknown"  // no such lease here (released meanwhile)
	answerNone     = "no answer"
)

// message is what instances tell each other on their channels.
type message struct {
	Type    string `json:"type"` // "takeover" or "answer"
	ID      string `json:"id"`
	From    string `json:"from,omitempty"`   // the asking instance's channel
	Key     string `json:"key,omitempty"`    // the lock
	Value   string `json:"value,omitempty"`  // the owner's value
	NewVal  string `json:"new,omitempty"`    // the newcomer's value
	AfterMS int64  `json:"after,omitempty"`  // takeover_after
	Answer  string `json:"answer,omitempty"` // for "answer"
}

// askTakeover asks the owner instance to give the lock up and waits for its
// answer, up to takeoverReplyWait.
func (l *Locker) askTakeover(ctx context.Context, owner, key, cur, value string, after time.Duration) string {
	id := newToken()
	ch := make(chan string, 1)
	l.mu.Lock()
	l.waiters[id] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.waiters, id)
		l.mu.Unlock()
	}()
	msg, _ := json.Marshal(message{Type: "takeover", ID: id, From: l.c.channel, Key: key, Value: cur, NewVal: value,
		AfterMS: after.Milliseconds()})
	if err := l.c.rdb.Publish(ctx, l.c.cfg.KeyPrefix+"instance:"+owner, msg).Err(); err != nil {
		l.c.failed(err)
		return answerNone
	}
	t := time.NewTimer(takeoverReplyWait)
	defer t.Stop()
	select {
	case a := <-ch:
		return a
	case <-t.C:
		return answerNone
	case <-ctx.Done():
		return answerNone
	}
}

// handle is a message on this instance's channel.
func (l *Locker) handle(m message) {
	switch m.Type {
	case "answer":
		l.mu.Lock()
		ch := l.waiters[m.ID]
		l.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m.Answer:
			default:
			}
		}
	case "takeover":
		l.mu.Lock()
		ls := l.leases[m.Value]
		l.mu.Unlock()
		answer := answerUnknown
		switch {
		case ls == nil || ls.key != m.Key:
		case ls.h.TakeOver(time.Duration(m.AfterMS) * time.Millisecond):
			// The session ends without UPDATE; the lock goes to the
			// newcomer before we say so.
			ctx, cancel := opContext(context.Background())
			n, err := transferScript.Run(ctx, l.c.rdb, []string{m.Key}, m.Value, m.NewVal, l.lease.Milliseconds()).Int()
			cancel()
			if err != nil {
				l.c.failed(err)
			}
			if n == 1 {
				answer = answerTaken
				ls.stopRenewing()
				ls.log.Info("maildrop lock handed to a newer session on another instance")
			}
		case ls.h.Updating():
			answer = answerUpdating
		default:
			answer = answerBusy
		}
		reply, _ := json.Marshal(message{Type: "answer", ID: m.ID, Answer: answer})
		ctx, cancel := opContext(context.Background())
		if err := l.c.rdb.Publish(ctx, m.From, reply).Err(); err != nil {
			l.c.failed(err)
		}
		cancel()
	}
}

func (l *Locker) forget(ls *lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leases[ls.value] == ls {
		delete(l.leases, ls.value)
	}
}

// stop ends the renewers (Client.Close).
func (l *Locker) stop() {
	l.mu.Lock()
	all := make([]*lease, 0, len(l.leases))
	for _, ls := range l.leases {
		all = append(all, ls)
	}
	l.mu.Unlock()
	for _, ls := range all {
		ls.stopRenewing()
	}
	l.wg.Wait()
}

// lease is one session's cluster lock; it implements upstream.Lease.
type lease struct {
	l          *Locker
	key, value string
	h          *upstream.Holder
	local      upstream.Lease
	log        *zap.Logger

	stop     chan struct{}
	stopOnce sync.Once
	release  sync.Once

	mu     sync.Mutex
	lastOK time.Time // the last time Redis said the lease was ours
	lost   bool      // another session holds the key
}

func (ls *lease) confirmed(at time.Time) {
	ls.mu.Lock()
	ls.lastOK = at
	ls.mu.Unlock()
}

// renew extends the lease every third of lock_lease until Release.
func (ls *lease) renew() {
	defer ls.l.wg.Done()
	t := time.NewTicker(ls.l.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ls.stop:
			return
		case <-t.C:
		}
		if !ls.l.c.Up() {
			continue
		}
		if err := ls.check(context.Background()); err != nil {
			if errors.Is(err, ErrLeaseLost) {
				return
			}
		}
	}
}

// check asks Redis whether the lease is still ours, extending it (or
// writing it again where Redis lost it).
func (ls *lease) check(ctx context.Context) error {
	ls.mu.Lock()
	lost := ls.lost
	ls.mu.Unlock()
	if lost {
		return ErrLeaseLost
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	start := time.Now()
	n, err := renewScript.Run(ctx, ls.l.c.rdb, []string{ls.key}, ls.value, ls.l.lease.Milliseconds()).Int()
	switch {
	case err != nil:
		ls.l.c.failed(err)
		return err
	case n == 0:
		ls.mu.Lock()
		ls.lost = true
		ls.mu.Unlock()
		ls.log.Warn("maildrop lock lost: another session holds it now; this session's QUIT will commit nothing")
		return ErrLeaseLost
	case n == 2:
		ls.log.Info("maildrop lock written to Redis, which had none (taken while Redis was away, or lost in a failover)")
	}
	ls.confirmed(start)
	return nil
}

// Confirm implements upstream.Lease: the lease is still ours in Redis.
// With Redis away the session goes on with its local lock (degraded mode,
// availability first).
func (ls *lease) Confirm(ctx context.Context) error {
	if err := ls.local.Confirm(ctx); err != nil {
		return err
	}
	if !ls.l.c.Up() {
		ls.log.Warn("QUIT with the per-instance lock only: Redis unreachable")
		return nil
	}
	err := ls.check(ctx)
	if err != nil && !errors.Is(err, ErrLeaseLost) && unreachable(err) {
		ls.log.Warn("QUIT with the per-instance lock only: Redis unreachable", zap.Error(err))
		return nil
	}
	return err
}

func (ls *lease) stopRenewing() { ls.stopOnce.Do(func() { close(ls.stop) }) }

// Release implements upstream.Lease: the Redis key goes (if it is still
// ours), then the local lock. Bounded by opTimeout.
func (ls *lease) Release() {
	ls.release.Do(func() {
		ls.stopRenewing()
		if ls.l.c.Up() {
			ctx, cancel := opContext(context.Background())
			if err := releaseScript.Run(ctx, ls.l.c.rdb, []string{ls.key}, ls.value).Err(); err != nil {
				ls.l.c.failed(err)
			}
			cancel()
		}
		ls.l.forget(ls)
		ls.local.Release()
	})
}

func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sleep waits d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
