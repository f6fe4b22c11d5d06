package upstream

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Lock policies (`pop3.lock`).
const (
	// LockExclusive: RFC 1939 §4, one session per maildrop; a second one
	// gets -ERR [IN-USE].
	LockExclusive = "exclusive"
	// LockTakeover: a new session of the user ends an older one that has
	// been waiting for a command for at least pop3.takeover_after (without
	// UPDATE, RFC 1939 §6) and takes the lock; an older session inside
	// UPDATE is never cut.
	LockTakeover = "takeover"
	// LockNone: no lock, as Dovecot's POP3 by default; each session works
	// on its own snapshot, and everything is by UID.
	LockNone = "none"
)

// Defaults of pop3.lock and pop3.takeover_after.
const (
	DefaultLock          = LockExclusive
	DefaultTakeoverAfter = 10 * time.Second
)

// UpdateWait bounds how long a newcomer waits for an older session inside
// UPDATE (its QUIT's deletions) before it gets [IN-USE].
const UpdateWait = 5 * time.Second

// LockKey names one maildrop: the backend identity, that is the backend (by
// configured name) and the user as routing hands it to the backend (after
// rewrite_user), case-folded. IMAP servers commonly fold the login name
// (Dovecot's default auth_username_format is %Lu), so bob, BOB and Bob are
// one mailbox there and must be one lock here; a backend that does not fold
// is at worst locked a little more than needed.
type LockKey struct {
	Backend string // the backend's configured name
	User    string // the backend user, case-folded
}

func newLockKey(backend, user string) LockKey {
	return LockKey{Backend: backend, User: strings.ToLower(user)}
}

// Holder is a session's side of the lock: its lifecycle as the lockers
// see it. The POP3 session reports when it waits for a command (Waiting);
// Commit moves it into UPDATE; a takeover ends it.
type Holder struct {
	state     atomic.Int32  // holderActive, holderUpdating or holderTaken
	idleSince atomic.Int64  // UnixNano since the session waits for a command; 0 = busy
	taken     chan struct{} // closed when a newer session took the lock
	released  chan struct{} // closed when the lock is released
}

const (
	holderActive int32 = iota
	holderUpdating
	holderTaken
)

// NewHolder makes a session's side of a lock (tests of other lockers; a
// Maildrop makes its own).
func NewHolder() *Holder { return newHolder() }

func newHolder() *Holder {
	return &Holder{taken: make(chan struct{}), released: make(chan struct{})}
}

// Waiting records whether the session waits for the client's next command:
// only such a session may be taken over.
func (h *Holder) Waiting(waiting bool) {
	if waiting {
		h.idleSince.Store(time.Now().UnixNano())
	} else {
		h.idleSince.Store(0)
	}
}

// Taken is closed when a newer session took the lock over.
func (h *Holder) Taken() <-chan struct{} { return h.taken }

// EnterUpdate moves the holder into UPDATE, unless it has been taken over,
// and reports whether it did (a Maildrop's Commit; tests of lockers).
func (h *Holder) EnterUpdate() bool { return h.enterUpdate() }

func (h *Holder) enterUpdate() bool {
	return h.state.CompareAndSwap(holderActive, holderUpdating)
}

// Updating reports whether the holder's session is in UPDATE (its QUIT's
// deletions under way): it is never taken over then (RFC 1939 §6).
func (h *Holder) Updating() bool { return h.state.Load() == holderUpdating }

// TakeOver ends the holder if it has waited for a command for at least
// after and is not in UPDATE (pop3.lock: takeover), and reports whether it
// did: its session then ends without UPDATE and its Commit refuses.
func (h *Holder) TakeOver(after time.Duration) bool { return h.takeOver(after) }

func (h *Holder) takeOver(after time.Duration) bool {
	since := h.idleSince.Load()
	if since == 0 || time.Since(time.Unix(0, since)) < after {
		return false
	}
	if !h.state.CompareAndSwap(holderActive, holderTaken) {
		return false
	}
	close(h.taken)
	return true
}

// Locker takes the exclusive-access maildrop locks of RFC 1939 §4 for
// Maildrops, per pop3.lock. The default is the in-process table
// (NewLocalLocker); gateway/cluster implements one shared by several
// gateway instances, on top of a local table.
type Locker interface {
	// Lock takes the lock of k for h under policy (LockExclusive,
	// LockTakeover or LockNone), or returns an error wrapping ErrInUse.
	// With LockTakeover an older holder that has waited for a command for
	// at least after is taken over; one in UPDATE is waited for, up to
	// UpdateWait.
	Lock(ctx context.Context, k LockKey, h *Holder, policy string, after time.Duration) (Lease, error)
}

// Lease is a lock taken by a Locker.
type Lease interface {
	// Confirm reports, right before UPDATE, whether the lock is still the
	// session's: a lock that another session holds now (a cluster lease
	// lost in a Redis failover or a long pause) is an error, and the
	// session commits nothing.
	Confirm(ctx context.Context) error
	// Release gives the lock up. A lock since taken over stays its new
	// holder's. Release is idempotent and bounded in time.
	Release()
}

// NewLocalLocker is the in-process lock table: one POP3 session per
// maildrop in this process.
func NewLocalLocker() Locker { return &lockTable{} }

// Lock implements Locker.
func (t *lockTable) Lock(_ context.Context, k LockKey, h *Holder, policy string, after time.Duration) (Lease, error) {
	if !t.acquire(k, h, policy, after) {
		return nil, fmt.Errorf("%w: %s on %s", ErrInUse, k.User, k.Backend)
	}
	return &localLease{t: t, k: k, h: h}, nil
}

// localLease is a lock of the in-process table.
type localLease struct {
	t    *lockTable
	k    LockKey
	h    *Holder
	once sync.Once
}

// Confirm: a local lock cannot be lost; a takeover shows in the holder.
func (l *localLease) Confirm(context.Context) error { return nil }

func (l *localLease) Release() { l.once.Do(func() { l.t.release(l.k, l.h) }) }

// lockTable holds the exclusive-access locks of RFC 1939 §4: one POP3 session
// per maildrop in this process, per pop3.lock. A session that cannot get the
// lock answers -ERR [IN-USE] (RFC 2449 §8.1.2).
//
// The table is per process. Several gateway instances in front of one backend
// see each other's locks only through a cluster locker (gateway/cluster);
// without one, since every change is made by UID, a second session elsewhere
// can at worst see messages the first one is deleting.
type lockTable struct {
	mu   sync.Mutex
	held map[LockKey]*Holder

	// releases counts the releases of the locks whose keys hash to each
	// bucket (see Epoch).
	releases [epochBuckets]atomic.Uint64
}

// Epocher is a Locker that tells when a lock of a key was released in this
// process: the in-process table, and a cluster locker through the table it
// wraps.
type Epocher interface {
	// Epoch changes whenever a lock of k is released.
	Epoch(k LockKey) uint64
}

// epochBuckets spreads Epoch's counters: two keys sharing a bucket only
// cost a needless second snapshot now and then.
const epochBuckets = 1024

// Epoch changes whenever a lock of k is released. Open reads it before it
// pipelines the snapshot behind the login (which the backend answers before
// the lock is taken, since the lock must not be taken before the password is
// known good) and again once it holds the lock: a change means a session of
// the user may have left UPDATE in between, after the snapshot was taken,
// and the snapshot is taken again (RFC 1939 §4: the lock keeps the maildrop
// from changing under the session; its view must not predate the lock).
func (t *lockTable) Epoch(k LockKey) uint64 {
	return t.releases[k.bucket()].Load()
}

func (k LockKey) bucket() uint32 {
	h := fnv.New32a()
	h.Write([]byte(k.Backend))
	h.Write([]byte{0})
	h.Write([]byte(k.User))
	return h.Sum32() % epochBuckets
}

// acquire takes the lock for h and reports whether it got it. With
// takeover, an older holder waiting for a command for at least after is
// ended (its taken channel closes) and the lock is h's at once; an older
// holder in UPDATE is waited for, up to UpdateWait.
func (t *lockTable) acquire(k LockKey, h *Holder, policy string, after time.Duration) bool {
	if policy == LockNone {
		return true
	}
	deadline := time.Now().Add(UpdateWait)
	for {
		t.mu.Lock()
		old, ok := t.held[k]
		if !ok {
			if t.held == nil {
				t.held = make(map[LockKey]*Holder)
			}
			t.held[k] = h
			t.mu.Unlock()
			return true
		}
		if old.state.Load() == holderTaken {
			// Taken over by a session elsewhere (a cluster locker's
			// takeover): its session is ending and holds nothing.
			t.held[k] = h
			t.mu.Unlock()
			return true
		}
		if policy != LockTakeover {
			t.mu.Unlock()
			return false
		}
		if old.takeOver(after) {
			t.held[k] = h
			t.mu.Unlock()
			return true
		}
		updating := old.state.Load() == holderUpdating
		t.mu.Unlock()
		if !updating {
			return false
		}
		// RFC 1939 §6: a session in UPDATE is never cut; wait for it.
		wait := time.Until(deadline)
		if wait <= 0 {
			return false
		}
		timer := time.NewTimer(wait)
		select {
		case <-old.released:
			timer.Stop()
		case <-timer.C:
			return false
		}
	}
}

// release gives up h's lock; a lock taken over by a newer holder stays
// that holder's.
func (t *lockTable) release(k LockKey, h *Holder) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held[k] == h {
		delete(t.held, k)
		t.releases[k.bucket()].Add(1)
	}
	select {
	case <-h.released:
	default:
		close(h.released)
	}
}
