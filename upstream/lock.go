package upstream

import (
	"strings"
	"sync"
)

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

// lockTable holds the exclusive-access locks of RFC 1939 §4: one POP3 session
// per maildrop in this process. A session that cannot get the lock answers
// -ERR [IN-USE] (RFC 2449 §8.1.2).
//
// The lock is per process. Several gateway instances in front of one backend
// do not see each other's locks; since every change is made by UID, a second
// session elsewhere can at worst see messages the first one is deleting.
type lockTable struct {
	mu   sync.Mutex
	held map[lockKey]struct{}
}

// acquire takes the lock and reports whether it was free.
func (t *lockTable) acquire(k lockKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.held[k]; ok {
		return false
	}
	if t.held == nil {
		t.held = make(map[lockKey]struct{})
	}
	t.held[k] = struct{}{}
	return true
}

func (t *lockTable) release(k lockKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.held, k)
}
