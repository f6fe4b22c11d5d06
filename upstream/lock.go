package upstream

import (
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

// updateWait bounds how long a newcomer waits for an older session inside
// UPDATE (its QUIT's deletions) before it gets [IN-USE].
const updateWait = 5 * time.Second

// lockKey names one maildrop: the backend identity, that is the backend (by
// configured name) and the user as routing hands it to the backend (after
// rewrite_user), case-folded. IMAP servers commonly fold the login name
// (Dovecot's default auth_username_format is %Lu), so bob, BOB and Bob are
// one mailbox there and must be one lock here; a backend that does not fold
// is at worst locked a little more than needed.
type lockKey struct {
	backend, user string
}

func newLockKey(backend, user string) lockKey {
	return lockKey{backend: backend, user: strings.ToLower(user)}
}

// holder is a session's side of the lock: its lifecycle as the lock table
// sees it. The POP3 session reports when it waits for a command (Waiting);
// Commit moves it into UPDATE; a takeover ends it.
type holder struct {
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

func newHolder() *holder {
	return &holder{taken: make(chan struct{}), released: make(chan struct{})}
}

// enterUpdate moves the holder into UPDATE, unless it has been taken over.
func (h *holder) enterUpdate() bool {
	return h.state.CompareAndSwap(holderActive, holderUpdating)
}

// takeOver ends the holder if it has waited for a command for at least
// after and is not in UPDATE.
func (h *holder) takeOver(after time.Duration) bool {
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

// lockTable holds the exclusive-access locks of RFC 1939 §4: one POP3 session
// per maildrop in this process, per pop3.lock. A session that cannot get the
// lock answers -ERR [IN-USE] (RFC 2449 §8.1.2).
//
// The lock is per process. Several gateway instances in front of one backend
// do not see each other's locks; since every change is made by UID, a second
// session elsewhere can at worst see messages the first one is deleting.
type lockTable struct {
	mu   sync.Mutex
	held map[lockKey]*holder

	// releases counts the releases of the locks whose keys hash to each
	// bucket (see epoch).
	releases [epochBuckets]atomic.Uint64
}

// epochBuckets spreads epoch's counters: two keys sharing a bucket only
// cost a needless second snapshot now and then.
const epochBuckets = 1024

// epoch changes whenever a lock of k is released. Open reads it before it
// pipelines the snapshot behind the login (which the backend answers before
// the lock is taken, since the lock must not be taken before the password is
// known good) and again once it holds the lock: a change means a session of
// the user may have left UPDATE in between, after the snapshot was taken,
// and the snapshot is taken again (RFC 1939 §4: the lock keeps the maildrop
// from changing under the session; its view must not predate the lock).
func (t *lockTable) epoch(k lockKey) uint64 {
	return t.releases[k.bucket()].Load()
}

func (k lockKey) bucket() uint32 {
	h := fnv.New32a()
	h.Write([]byte(k.backend))
	h.Write([]byte{0})
	h.Write([]byte(k.user))
	return h.Sum32() % epochBuckets
}

// acquire takes the lock for h and reports whether it got it. With
// takeover, an older holder waiting for a command for at least after is
// ended (its taken channel closes) and the lock is h's at once; an older
// holder in UPDATE is waited for, up to updateWait.
func (t *lockTable) acquire(k lockKey, h *holder, policy string, after time.Duration) bool {
	if policy == LockNone {
		return true
	}
	deadline := time.Now().Add(updateWait)
	for {
		t.mu.Lock()
		old, ok := t.held[k]
		if !ok {
			if t.held == nil {
				t.held = make(map[lockKey]*holder)
			}
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
func (t *lockTable) release(k lockKey, h *holder) {
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
