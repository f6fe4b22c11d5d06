package cluster

// The POP3 UIDL map's store on Redis (pop3.uidl_map.store: redis), so that
// every instance of a cluster shows a user the same UIDLs whichever instance
// the user reaches, and a rematch one instance made after a UIDVALIDITY
// change is what the others read.
//
// Key layout, under the configured prefix P (e.g. "mailgate:"):
//
//	P{uidl:USER}:maps  hash, mailbox -> the user's map record of that mailbox
//	                   (upstream's encoding, opaque here)
//	P{uidl}:bytes      string, an integer: the size of all records, counted
//	                   as the embedded store counts it (mailbox name plus
//	                   record), which pop3.uidl_map.max_bytes bounds
//
// Invariants kept here:
//   - A record changes only by compare-and-set (uidlCASScript): Update reads
//     the record, runs the caller's fn on it, and writes fn's result only if
//     the record is still the one read (compared by SHA-1 inside Redis, so the
//     record does not travel twice); otherwise it reads again and runs fn
//     again (upstream.UIDLStore allows it). No write is ever based on a record
//     that another writer had already replaced, so no update is lost, across
//     instances as within one.
//   - Every script touches one key, the user's hash, so it runs on one node of
//     a Redis Cluster; the hash tag {uidl:USER} spreads users over the slots.
//     The size counter is a key of its own (its own slot), changed by INCRBY
//     and DECRBY after the record's script: never in the same script, which a
//     cluster would refuse (CROSSSLOT).
//   - The size bound is approximate, in two ways documented in the README:
//     sessions that make new maps at the same moment can each pass the check
//     and overshoot the bound by their records; and an instance that dies (or
//     loses Redis) between a record's write and the counter's change leaves
//     the counter off by that record. Stats measures the records one by one
//     (Measured) beside the counter, so a drift is visible (mailgate
//     uidl-stats). The bound refuses new maps only, as the embedded store's.
//   - Every Redis call runs under the caller's context and a deadline of its
//     own (opTimeout of the store).

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"mailgate/upstream"
)

// Timings of the UIDL store; tests shorten them on the unexported fields.
const (
	// uidlOpTimeout bounds one Redis call. A record holds tens of bytes a
	// message: a 100,000-message map (max_messages' default) is a few MB.
	uidlOpTimeout = 5 * time.Second
	// uidlMaxAttempts bounds the compare-and-set retries of one Update: a
	// user's record is written by that user's sessions only, so more than
	// a few conflicts in a row mean something is wrong.
	uidlMaxAttempts = 64
	// uidlBackoffMax bounds the random pause before a retry, which lets
	// the writers that collided go in turn.
	uidlBackoffMax = 10 * time.Millisecond
)

// UIDLStore is an upstream.UIDLStore keeping the UIDL maps in Redis (see the
// layout above). Instances of the gateway whose UIDLStores share the client
// target and prefix share the maps. Safe for concurrent use; it holds no
// state but its settings, so a restart loses nothing.
type UIDLStore struct {
	client    redis.UniversalClient
	prefix    string
	counter   string // P{uidl}:bytes
	maxBytes  int64  // 0: no bound
	opTimeout time.Duration
}

var _ upstream.UIDLStore = (*UIDLStore)(nil)

// NewUIDLStore returns the UIDL store on client under prefix (e.g.
// "mailgate:" -> "mailgate:{uidl:alice}:maps"). maxBytes bounds the records'
// total size, approximately (see above); 0 leaves it unbounded. The client
// should have ContextTimeoutEnabled set, so that the deadlines reach the
// connections. A nil client is a programming error and panics here.
func NewUIDLStore(client redis.UniversalClient, prefix string, maxBytes int64) *UIDLStore {
	if client == nil {
		panic("cluster.NewUIDLStore: nil Redis client")
	}
	return &UIDLStore{
		client:    client,
		prefix:    prefix,
		counter:   prefix + "{uidl}:bytes",
		maxBytes:  maxBytes,
		opTimeout: uidlOpTimeout,
	}
}

// String names the store in logs: the prefix only, never the client's
// options.
func (s *UIDLStore) String() string { return "RedisUIDLStore:" + s.prefix }

const (
	uidlKeyStart = "{uidl:"
	uidlKeyEnd   = "}:maps"
)

// mapsKey is the hash of user's maps.
func (s *UIDLStore) mapsKey(user string) string {
	return s.prefix + uidlKeyStart + user + uidlKeyEnd
}

// op returns ctx bounded by the timeout of one Redis call.
func (s *UIDLStore) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opTimeout)
}

// Load implements upstream.UIDLStore.
func (s *UIDLStore) Load(ctx context.Context, key upstream.UIDLKey) ([]byte, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	b, err := s.client.HGet(ctx, s.mapsKey(key.User), key.Mailbox).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("uidl map on redis: load: %w", err)
	}
	return b, nil
}

// uidlCASScript writes a record if the current one is the one the caller
// read. KEYS: the user's hash. ARGV: mailbox, the SHA-1 (hex) of the record
// read ("" when there was none), the new record. Returns 1 when written, 0
// when the record changed meanwhile.
var uidlCASScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local seen = ''
if cur then seen = redis.sha1hex(cur) end
if seen ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
`)

// Update implements upstream.UIDLStore by compare-and-set: fn may run more
// than once, each time on the record then current.
func (s *UIDLStore) Update(ctx context.Context, key upstream.UIDLKey, fn func(old []byte) ([]byte, error)) error {
	if key.User == "" {
		return errors.New("uidl map: empty user")
	}
	hash := s.mapsKey(key.User)
	for attempt := 1; ; attempt++ {
		old, err := s.Load(ctx, key)
		if err != nil {
			return err
		}
		next, err := fn(old)
		if err != nil {
			return err
		}
		grow := int64(len(next)) - int64(len(old))
		seen := ""
		if old == nil {
			grow += int64(len(key.Mailbox))
			// The bound refuses new maps only, as the embedded store's:
			// refusing an existing map's growth would lose what a
			// session showed.
			if s.maxBytes > 0 {
				total, err := s.total(ctx)
				if err != nil {
					return err
				}
				if total+grow > s.maxBytes {
					return upstream.ErrUIDLStoreFull
				}
			}
		} else {
			sum := sha1.Sum(old)
			seen = hex.EncodeToString(sum[:])
		}
		written, err := s.compareAndSet(ctx, hash, key.Mailbox, seen, next)
		if err != nil {
			return err
		}
		if written {
			if grow != 0 {
				// The record is written: the update happened, whatever
				// becomes of the count (a failure here is the drift the
				// layout's comment describes).
				_ = s.count(context.WithoutCancel(ctx), grow)
			}
			return nil
		}
		if attempt == uidlMaxAttempts {
			return fmt.Errorf("uidl map on redis: the record of %s changed %d times during one update", key.User, attempt)
		}
		if err := uidlBackoff(ctx); err != nil {
			return err
		}
	}
}

func (s *UIDLStore) compareAndSet(ctx context.Context, hash, mailbox, seen string, next []byte) (bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	n, err := uidlCASScript.Run(ctx, s.client, []string{hash}, mailbox, seen, next).Int()
	if err != nil {
		return false, fmt.Errorf("uidl map on redis: update: %w", err)
	}
	return n == 1, nil
}

// uidlBackoff pauses a random time before a compare-and-set is retried.
func uidlBackoff(ctx context.Context) error {
	t := time.NewTimer(rand.N(uidlBackoffMax) + time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// total reads the size counter (what max_bytes bounds).
func (s *UIDLStore) total(ctx context.Context) (int64, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	n, err := s.client.Get(ctx, s.counter).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("uidl map on redis: size counter: %w", err)
	}
	return max(0, n), nil
}

// count adds delta to the size counter.
func (s *UIDLStore) count(ctx context.Context, delta int64) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	return s.client.IncrBy(ctx, s.counter, delta).Err()
}

// uidlDropScript deletes a user's hash. KEYS: the hash. Returns {the number
// of maps, their size as the counter counts it}.
var uidlDropScript = redis.NewScript(`
local fields = redis.call('HKEYS', KEYS[1])
local size = 0
for _, f in ipairs(fields) do
  size = size + #f + redis.call('HSTRLEN', KEYS[1], f)
end
redis.call('DEL', KEYS[1])
return {#fields, size}
`)

// Drop forgets every map of user (a UIDLIdentity) and says how many there
// were: for a deleted user. Unlike the embedded store's, it may run while
// the gateways serve: a session of the user that writes afterwards makes
// a new map.
func (s *UIDLStore) Drop(user string) (int, error) {
	ctx, cancel := s.op(context.Background())
	defer cancel()
	res, err := uidlDropScript.Run(ctx, s.client, []string{s.mapsKey(user)}).Int64Slice()
	if err != nil {
		return 0, fmt.Errorf("uidl map on redis: drop: %w", err)
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("uidl map on redis: drop: unexpected script reply %v", res)
	}
	if res[1] != 0 {
		if err := s.count(context.Background(), -res[1]); err != nil {
			return int(res[0]), fmt.Errorf("uidl map on redis: dropped %d map(s), the size counter not lowered: %w", res[0], err)
		}
	}
	return int(res[0]), nil
}

// uidlScanBatch is the COUNT of one SCAN step in Stats.
const uidlScanBatch = 256

// Stats counts users, maps and remembered messages: it SCANs the keyspace
// (every master of a Redis Cluster) for the users' hashes and reads each,
// so it costs a pass over Redis; for an operator's command, not for a
// request path. Bytes is the counter that max_bytes checks, Measured the
// records' size as read.
func (s *UIDLStore) Stats() (upstream.UIDLStoreStats, error) {
	ctx := context.Background()
	var mu sync.Mutex
	st := upstream.UIDLStoreStats{}
	pattern := redisGlobEscape(s.prefix) + redisGlobEscape(uidlKeyStart) + "*" + redisGlobEscape(uidlKeyEnd)
	scan := func(ctx context.Context, node redis.Cmdable) error {
		var cursor uint64
		for {
			sctx, cancel := s.op(ctx)
			keys, next, err := node.Scan(sctx, cursor, pattern, uidlScanBatch).Result()
			cancel()
			if err != nil {
				return fmt.Errorf("uidl map on redis: stats: scan: %w", err)
			}
			for _, k := range keys {
				if !strings.HasPrefix(k, s.prefix+uidlKeyStart) || !strings.HasSuffix(k, uidlKeyEnd) {
					continue // a pattern character in a user name matched more
				}
				hctx, cancel := s.op(ctx)
				maps, err := node.HGetAll(hctx, k).Result()
				cancel()
				if err != nil {
					return fmt.Errorf("uidl map on redis: stats: %w", err)
				}
				if len(maps) == 0 {
					continue // dropped since the SCAN saw it
				}
				mu.Lock()
				st.Users++
				for mailbox, rec := range maps {
					st.AddRecord([]byte(rec))
					st.Measured += int64(len(mailbox) + len(rec))
				}
				mu.Unlock()
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, s.client)
	}
	if err != nil {
		return upstream.UIDLStoreStats{}, err
	}
	if st.Bytes, err = s.total(ctx); err != nil {
		return upstream.UIDLStoreStats{}, err
	}
	return st, nil
}

// redisGlobEscape quotes the characters that SCAN MATCH patterns give a
// meaning (Redis's stringmatchlen: * ? [ ] \).
func redisGlobEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
