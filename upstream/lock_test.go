package upstream

import (
	"testing"
	"time"
)

func TestLockTablePolicies(t *testing.T) {
	k := newLockKey("store", "Bob")
	t.Run("exclusive", func(t *testing.T) {
		var lt lockTable
		a, b := newHolder(), newHolder()
		a.idleSince.Store(time.Now().Add(-time.Hour).UnixNano())
		if !lt.acquire(k, a, LockExclusive, time.Second) || lt.acquire(k, b, LockExclusive, time.Second) {
			t.Fatal("exclusive: want the first, refuse the second (however idle the first)")
		}
		lt.release(k, a)
		if !lt.acquire(k, b, LockExclusive, time.Second) {
			t.Fatal("exclusive: not free after release")
		}
	})
	t.Run("none", func(t *testing.T) {
		var lt lockTable
		if !lt.acquire(k, newHolder(), LockNone, 0) || !lt.acquire(k, newHolder(), LockNone, 0) {
			t.Fatal("none: refused")
		}
	})
	t.Run("takeover", func(t *testing.T) {
		var lt lockTable
		a, b := newHolder(), newHolder()
		lt.acquire(k, a, LockTakeover, time.Second)
		if lt.acquire(k, b, LockTakeover, time.Second) {
			t.Fatal("took over a busy session")
		}
		a.idleSince.Store(time.Now().Add(-500 * time.Millisecond).UnixNano())
		if lt.acquire(k, b, LockTakeover, time.Second) {
			t.Fatal("took over a session idle for less than takeover_after")
		}
		a.idleSince.Store(time.Now().Add(-2 * time.Second).UnixNano())
		if !lt.acquire(k, b, LockTakeover, time.Second) {
			t.Fatal("did not take over a session idle for more than takeover_after")
		}
		select {
		case <-a.taken:
		default:
			t.Fatal("the older holder was not told")
		}
		if a.enterUpdate() {
			t.Fatal("a taken-over holder entered UPDATE")
		}
		lt.release(k, a) // the older session ends: b keeps the lock
		if lt.acquire(k, newHolder(), LockExclusive, 0) {
			t.Fatal("the older holder's release freed the newer one's lock")
		}
	})
	t.Run("takeover waits for UPDATE", func(t *testing.T) {
		var lt lockTable
		a, b := newHolder(), newHolder()
		lt.acquire(k, a, LockTakeover, time.Second)
		a.idleSince.Store(time.Now().Add(-time.Hour).UnixNano())
		if !a.enterUpdate() {
			t.Fatal("enterUpdate")
		}
		go func() { time.Sleep(200 * time.Millisecond); lt.release(k, a) }()
		start := time.Now()
		if !lt.acquire(k, b, LockTakeover, time.Second) {
			t.Fatal("the newcomer did not get the lock after UPDATE")
		}
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Fatalf("got the lock after %v, while the older session was in UPDATE", d)
		}
		select {
		case <-a.taken:
			t.Fatal("a session in UPDATE was taken over")
		default:
		}
	})
}

// The lock's epoch moves when a holder of the key releases it, so that Open
// retakes a snapshot that went out (pipelined behind the login) before a
// session of the user left UPDATE; a refused acquire, another key's release
// and a release by a holder that was taken over do not move it.
func TestLockEpoch(t *testing.T) {
	var lt lockTable
	k := newLockKey("store", "alice")
	e0 := lt.Epoch(k)
	h := newHolder()
	if !lt.acquire(k, h, LockExclusive, 0) {
		t.Fatal("acquire failed")
	}
	if lt.acquire(k, newHolder(), LockExclusive, 0) || lt.Epoch(k) != e0 {
		t.Fatal("a refused acquire moved the epoch (or succeeded)")
	}
	other := newLockKey("store", "bob")
	if other.bucket() != k.bucket() {
		ho := newHolder()
		lt.acquire(other, ho, LockExclusive, 0)
		lt.release(other, ho)
		if lt.Epoch(k) != e0 {
			t.Fatal("bob's release moved alice's epoch")
		}
	}
	lt.release(k, h)
	if lt.Epoch(k) == e0 {
		t.Fatal("the release did not move the epoch")
	}
}
