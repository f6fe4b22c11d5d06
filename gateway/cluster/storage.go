package cluster

// A certmagic.Storage on Redis, so that the instances of a cluster share one
// ACME account, one set of certificates and one lock per ACME operation: one
// instance asks the CA, every instance serves the result.
//
// Key layout, under the configured prefix P (e.g. "mailgate:"):
//
//	P{acme}:index      sorted set, every stored key as a member (score 0)
//	P{acme}:data       hash, key -> value
//	P{acme}:mtime      hash, key -> modification time, Unix milliseconds
//	P{acme}:lock:NAME  string, the random token of the holder of lock NAME,
//	                   with the lease as its expiry
//
// Invariants kept here:
//   - The index, the data and the mtime hold the same keys: only two Lua
//     scripts (storageStoreScript, storageDeleteScript) write them, each
//     atomically.
//   - All these keys share the hash tag {acme} (the prefix comes before it
//     and is the same for all, so the first {...} of every key is the same):
//     in Redis Cluster they live in one slot, and a script that names them
//     runs on one node. Every key a script touches is passed in KEYS.
//   - The tree has no key that is both a file and a directory: Store refuses
//     a key that has keys below it, and a key below a file (FileStorage
//     refuses both, through the file system).
//   - Directories are implicit: "a/b" is a directory while some key starts
//     with "a/b/". A prefix is found with ZRANGEBYLEX ["a/b/", ("a/b0"
//     ('0' is the byte after '/'), never with KEYS or SCAN.
//   - A lock is a lease: SET NX PX with a random token, renewed by a
//     goroutine while held, released by compare-and-delete of the token.
//     A holder that dies stops renewing, and the lock expires within the
//     lease. Nobody but the holder's token releases or renews it.
//   - Every Redis call runs under the caller's context and a deadline
//     (opTimeout); the renewer, which outlives Lock's context, under its
//     own deadline.
//
// The certmagic data of a mail gateway (an account, a few certificates) is
// small, so one slot and two hashes hold it comfortably.

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Defaults of the storage's timings; tests shorten them on the unexported
// fields.
const (
	// storageLockLease is how long a lock outlives its holder's last
	// renewal: the time another instance waits for the lock of a dead one.
	storageLockLease = 30 * time.Second
	// storageLockPoll is how often Lock retries a taken lock.
	storageLockPoll = time.Second
	// storageOpTimeout bounds one Redis call.
	storageOpTimeout = 5 * time.Second
)

// ErrLockLost is returned by Unlock and RenewLockLease when the lease of a
// lock this Storage took has expired or been taken over: the critical
// section may have overlapped another holder's.
var ErrLockLost = errors.New("cluster storage: lock lease lost")

// Storage is a certmagic.Storage (with certmagic.TryLocker and
// certmagic.LockLeaseRenewer) keeping certmagic's data and locks in Redis.
// Instances of the gateway that use Storages with the same client target and
// prefix share certificates and locks. Safe for concurrent use.
type Storage struct {
	client redis.UniversalClient
	log    *zap.Logger
	prefix string

	index, data, mtime string // the keys of the tree (see the layout above)

	lease     time.Duration // a lock's lease; renewed every lease/3
	poll      time.Duration // Lock's retry interval
	opTimeout time.Duration // bound of one Redis call

	mu    sync.Mutex
	locks map[string]*storageLock // by lock name, the locks this Storage holds
}

// storageLock is a lock this Storage took, with its renewer.
type storageLock struct {
	token string
	stop  chan struct{} // closed to stop the renewer
	done  chan struct{} // closed by the renewer when it returns
	lost  chan struct{} // closed by the renewer when the lease is gone
}

var (
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
)

// NewStorage returns a certmagic.Storage keeping certmagic's data and locks
// in Redis under prefix (e.g. "mailgate:" -> keys "mailgate:{acme}:...").
// The client should have ContextTimeoutEnabled set, so that the deadlines
// of the calls reach the connections. log gets lock trouble (a failed
// renewal, a lost lease); nil logs nothing. A nil client is a programming
// error and panics here rather than at the first certificate.
func NewStorage(client redis.UniversalClient, prefix string, log *zap.Logger) *Storage {
	if client == nil {
		panic("cluster.NewStorage: nil Redis client")
	}
	if log == nil {
		log = zap.NewNop()
	}
	base := prefix + "{acme}:"
	return &Storage{
		client:    client,
		log:       log,
		prefix:    prefix,
		index:     base + "index",
		data:      base + "data",
		mtime:     base + "mtime",
		lease:     storageLockLease,
		poll:      storageLockPoll,
		opTimeout: storageOpTimeout,
		locks:     make(map[string]*storageLock),
	}
}

// String names the storage in certmagic's logs (it logs the Storage value);
// it shows the prefix only, never the client's options.
func (s *Storage) String() string { return "RedisStorage:" + s.prefix }

// op returns ctx bounded by the timeout of one Redis call.
func (s *Storage) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opTimeout)
}

// cleanStorageKey normalises a certmagic key as FileStorage does through
// filepath.Join: "a//b/./c/" is "a/b/c"; "" and "/" are the root, "".
func cleanStorageKey(key string) string {
	return strings.TrimPrefix(path.Clean("/"+key), "/")
}

// keysBelow returns the ZRANGEBYLEX bounds of the keys strictly below dir: the
// whole index for the root, else ["dir/", ("dir0" ('0' follows '/').
func keysBelow(dir string) (lo, hi string) {
	if dir == "" {
		return "-", "+"
	}
	return "[" + dir + "/", "(" + dir + "0"
}

// storageStoreScript writes one key after checking the tree stays a tree.
// KEYS: index, data, mtime. ARGV: key, value, mtime, lo, hi (the bounds of
// the keys below key), then key's ancestors ("a", "a/b" for "a/b/c").
// Returns {0} when stored, {1, key} when key has keys below it, {2, ancestor}
// when an ancestor is a file.
var storageStoreScript = redis.NewScript(`
if #redis.call('ZRANGEBYLEX', KEYS[1], ARGV[4], ARGV[5], 'LIMIT', 0, 1) > 0 then
  return {1, ARGV[1]}
end
for i = 6, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    return {2, ARGV[i]}
  end
end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return {0}
`)

// storageDeleteScript deletes a key and every key below it.
// KEYS: index, data, mtime. ARGV: key ("" for the root), lo, hi (the bounds
// of the keys below key). Returns the number of keys deleted.
var storageDeleteScript = redis.NewScript(`
local gone = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3])
if ARGV[1] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  table.insert(gone, ARGV[1])
end
for _, k in ipairs(gone) do
  redis.call('ZREM', KEYS[1], k)
  redis.call('HDEL', KEYS[2], k)
  redis.call('HDEL', KEYS[3], k)
end
return #gone
`)

// Store puts value at key, creating or overwriting it.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	key = cleanStorageKey(key)
	if key == "" {
		return errors.New("cluster storage: store: empty key")
	}
	lo, hi := keysBelow(key)
	args := []any{key, value, time.Now().UnixMilli(), lo, hi}
	for i := range len(key) {
		if key[i] == '/' {
			args = append(args, key[:i])
		}
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	res, err := storageStoreScript.Run(ctx, s.client, []string{s.index, s.data, s.mtime}, args...).Slice()
	if err != nil {
		return fmt.Errorf("cluster storage: store %s: %w", key, err)
	}
	code, _ := res[0].(int64)
	switch code {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("cluster storage: store %s: it is a directory (keys exist below it)", key)
	case 2:
		return fmt.Errorf("cluster storage: store %s: %v is a file, not a directory", key, res[1])
	}
	return fmt.Errorf("cluster storage: store %s: unexpected script reply %v", key, res)
}

// Load returns the value at key, or an error matching fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	key = cleanStorageKey(key)
	ctx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.client.HGet(ctx, s.data, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, notExistErr("load", key)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster storage: load %s: %w", key, err)
	}
	return v, nil
}

// Delete deletes key and, when it is a directory, every key below it. An
// absent key is not an error (certmagic's Storage contract; FileStorage
// uses os.RemoveAll); the deletion is one atomic script, so nothing of it
// is left when Delete returns nil.
func (s *Storage) Delete(ctx context.Context, key string) error {
	key = cleanStorageKey(key)
	lo, hi := keysBelow(key)
	ctx, cancel := s.op(ctx)
	defer cancel()
	if err := storageDeleteScript.Run(ctx, s.client, []string{s.index, s.data, s.mtime}, key, lo, hi).Err(); err != nil {
		return fmt.Errorf("cluster storage: delete %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key is a file or a directory; false also when
// Redis could not tell.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file with its size and modification time, or a
// directory (IsTerminal false, no size or time); an error matching
// fs.ErrNotExist when it is neither. The root is a directory while anything
// is stored.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = cleanStorageKey(key)
	lo, hi := keysBelow(key)
	ctx, cancel := s.op(ctx)
	defer cancel()
	var size *redis.IntCmd
	var mtime *redis.StringCmd
	var child *redis.StringSliceCmd
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		size = p.HStrLen(ctx, s.data, key)
		mtime = p.HGet(ctx, s.mtime, key)
		child = p.ZRangeByLex(ctx, s.index, &redis.ZRangeBy{Min: lo, Max: hi, Count: 1})
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return certmagic.KeyInfo{}, fmt.Errorf("cluster storage: stat %s: %w", key, err)
	}
	if ms, err := mtime.Int64(); err == nil {
		return certmagic.KeyInfo{
			Key:        key,
			Modified:   time.UnixMilli(ms),
			Size:       size.Val(),
			IsTerminal: true,
		}, nil
	}
	if len(child.Val()) > 0 {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, notExistErr("stat", key)
}

// List returns the keys below dir: with recursive, every file and
// directory at any depth; without, the immediate children (files and
// directories). The keys are full keys ("a/b", not "b"), sorted. A dir that
// does not exist is an error matching fs.ErrNotExist; a dir that is a file
// lists nothing, as in FileStorage.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	dir = cleanStorageKey(dir)
	lo, hi := keysBelow(dir)
	ctx, cancel := s.op(ctx)
	defer cancel()
	var keys *redis.StringSliceCmd
	var isFile *redis.BoolCmd
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		keys = p.ZRangeByLex(ctx, s.index, &redis.ZRangeBy{Min: lo, Max: hi})
		isFile = p.HExists(ctx, s.data, dir)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cluster storage: list %s: %w", dir, err)
	}
	if len(keys.Val()) == 0 {
		if dir != "" && isFile.Val() {
			return []string{}, nil
		}
		return nil, notExistErr("list", dir)
	}
	base := dir
	if base != "" {
		base += "/"
	}
	seen := make(map[string]struct{})
	for _, k := range keys.Val() {
		rest := k[len(base):]
		// Every directory between dir and k, then k itself: the
		// directories only when walking recursively, else the first
		// component only.
		for i := range len(rest) {
			if rest[i] == '/' {
				seen[base+rest[:i]] = struct{}{}
				if !recursive {
					break
				}
			}
		}
		if recursive || !strings.Contains(rest, "/") {
			seen[k] = struct{}{}
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

func notExistErr(op, key string) error {
	return fmt.Errorf("cluster storage: %s %s: %w", op, key, fs.ErrNotExist)
}

// lockKey is the Redis key of lock name.
func (s *Storage) lockKey(name string) string { return s.prefix + "{acme}:lock:" + name }

// storageRenewScript extends a lease if the caller's token still holds it.
// KEYS: the lock. ARGV: token, lease in milliseconds. Returns 1 or 0.
var storageRenewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// storageUnlockScript deletes a lock if the caller's token still holds it: a
// holder whose lease expired never releases its successor's lock.
// KEYS: the lock. ARGV: token. Returns 1 or 0.
var storageUnlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Lock takes the lock name, waiting while another holder has it, until ctx
// ends. The lock is held until Unlock, renewed in the background; if this
// process dies, it expires within the lease.
func (s *Storage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		// Jitter keeps the waiters of one lock from retrying in step.
		wait := s.poll/2 + rand.N(s.poll)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("cluster storage: lock %s: %w", name, context.Cause(ctx))
		}
	}
}

// TryLock takes the lock name if it is free, without waiting.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("cluster storage: lock %s: %w", name, err)
	}
	var b [16]byte
	_, _ = cryptorand.Read(b[:]) // never fails (crypto/rand)
	token := hex.EncodeToString(b[:])
	octx, cancel := s.op(ctx)
	defer cancel()
	ok, err := s.client.SetNX(octx, s.lockKey(name), token, s.lease).Result()
	if err != nil {
		return false, fmt.Errorf("cluster storage: lock %s: %w", name, err)
	}
	if !ok {
		return false, nil
	}
	l := &storageLock{token: token, stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	s.mu.Lock()
	if old := s.locks[name]; old != nil {
		// Our previous lease for name expired unnoticed (its renewer
		// could not reach Redis): that holder's Unlock will release this
		// one, which certmagic's API cannot tell apart.
		close(old.stop)
	}
	s.locks[name] = l
	s.mu.Unlock()
	go s.renew(name, l)
	return true, nil
}

// renew extends l's lease every lease/3 until stopped or the lease is gone.
func (s *Storage) renew(name string, l *storageLock) {
	defer close(l.done)
	every(s.lease/3, l.stop, func() bool {
		ok, err := s.extend(context.Background(), name, l.token)
		switch {
		case err != nil:
			// Redis away for a moment: the lease may still hold; the next
			// tick tries again, and finds out.
			s.log.Warn("acme storage lock not renewed", zap.String("lock", name), zap.Error(err))
		case !ok:
			s.log.Error("acme storage lock lost: its lease expired or was taken over", zap.String("lock", name),
				zap.Duration("lease", s.lease))
			close(l.lost)
			return false
		}
		return true
	})
}

// extend renews the lease of the lock name held with token.
func (s *Storage) extend(ctx context.Context, name, token string) (bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	n, err := storageRenewScript.Run(ctx, s.client, []string{s.lockKey(name)}, token, s.lease.Milliseconds()).Int()
	return n == 1, err
}

// held returns the lock name as this Storage holds it.
func (s *Storage) held(name string) *storageLock {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.locks[name]
}

// RenewLockLease confirms that this Storage still holds the lock and renews
// its lease now. The lease stays this Storage's own (the background renewal
// keeps it while the process lives): a longer leaseDuration would only keep
// a dead holder's lock longer. ErrLockLost when the lease is gone.
func (s *Storage) RenewLockLease(ctx context.Context, name string, leaseDuration time.Duration) error {
	l := s.held(name)
	if l == nil {
		return fmt.Errorf("cluster storage: renew lock %s: not held by this instance", name)
	}
	ok, err := s.extend(ctx, name, l.token)
	if err != nil {
		return fmt.Errorf("cluster storage: renew lock %s: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("cluster storage: renew lock %s: %w", name, ErrLockLost)
	}
	return nil
}

// Unlock releases the lock name taken by this Storage. A lock this Storage
// does not hold is left alone, with an error; so is a lock whose lease
// expired meanwhile (ErrLockLost), since it may now be another's.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	l := s.locks[name]
	if l != nil {
		delete(s.locks, name)
		close(l.stop)
	}
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("cluster storage: unlock %s: not held by this instance", name)
	}
	<-l.done
	ctx, cancel := s.op(ctx)
	defer cancel()
	n, err := storageUnlockScript.Run(ctx, s.client, []string{s.lockKey(name)}, l.token).Int()
	if err != nil {
		// The lease expires by itself within s.lease.
		return fmt.Errorf("cluster storage: unlock %s: %w", name, err)
	}
	if n != 1 {
		return fmt.Errorf("cluster storage: unlock %s: %w", name, ErrLockLost)
	}
	return nil
}
