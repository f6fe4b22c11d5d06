package routing

import (
	"sync"
	"sync/atomic"
	"time"
)

// DefaultPoolCooldown is how long a pool server that refused a connection is
// skipped when routing.pool_cooldown is not set.
const DefaultPoolCooldown = 30 * time.Second

// Health remembers which servers of the pools recently refused connections,
// so that their users go to their next choice for a cool-down instead of
// failing. It is safe for concurrent use, and it outlives configuration
// reloads (servers are keyed by address, so a reloaded pool that still lists
// a server still knows it is down). The zero value is ready to use, with
// DefaultPoolCooldown.
//
// The gateway's part: Pick a server, dial it; when the dial fails (refused,
// unreachable, timed out, TLS handshake failed), call Down and Pick again;
// when a login on it succeeds, call Up. A server comes back by itself when
// its cool-down ends: the next Pick offers it again, a success calls Up, and
// a failure starts a new cool-down.
//
// Invariant: failover never spreads one user's POP3 session over two
// servers. A session dials once, before its maildrop is opened, and keeps
// that connection (and its snapshot) to the end; a server failing later ends
// the session with [SYS/TEMP] and deletes nothing (RFC 1939 §6: no UPDATE
// state without QUIT).
// Only the next session may land elsewhere, and the POP3 maildrop lock and
// the UIDLs belong to the mailbox, not to the server.
type Health struct {
	cooldown atomic.Int64 // nanoseconds; 0 means DefaultPoolCooldown

	mu   sync.Mutex
	down map[string]time.Time // address -> end of its cool-down

	now func() time.Time // the clock; tests replace it
}

// NewHealth returns a Health whose cool-down is cooldown (0 means
// DefaultPoolCooldown): pass routing.Config.PoolCooldown.
func NewHealth(cooldown time.Duration) *Health {
	h := new(Health)
	h.SetCooldown(cooldown)
	return h
}

// SetCooldown changes the cool-down of servers marked down from now on (on a
// reload); 0 or a negative value means DefaultPoolCooldown.
func (h *Health) SetCooldown(d time.Duration) {
	h.cooldown.Store(int64(max(d, 0)))
}

// Cooldown returns the cool-down in effect.
func (h *Health) Cooldown() time.Duration {
	if d := time.Duration(h.cooldown.Load()); d > 0 {
		return d
	}
	return DefaultPoolCooldown
}

func (h *Health) clock() time.Time {
	if h.now != nil {
		return h.now()
	}
	return time.Now()
}

// Down marks addr as refusing connections: Pick skips it for the cool-down.
// Marking a server that is already down starts its cool-down again. Down
// reports whether addr was up until now, so that the caller logs the
// change once, not once per refused session.
func (h *Health) Down(addr string) bool {
	now := h.clock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down = map[string]time.Time{}
	}
	until, known := h.down[addr]
	wasUp := !known || !now.Before(until)
	// Forget cool-downs that ended, so the map holds only servers down now.
	for a, u := range h.down {
		if !now.Before(u) {
			delete(h.down, a)
		}
	}
	h.down[addr] = now.Add(h.Cooldown())
	return wasUp
}

// Up marks addr as answering again (a login through it succeeded). It
// reports whether addr was in its cool-down until now.
func (h *Health) Up(addr string) bool {
	now := h.clock()
	h.mu.Lock()
	defer h.mu.Unlock()
	until, known := h.down[addr]
	if !known {
		return false
	}
	delete(h.down, addr)
	return now.Before(until)
}

// IsDown reports whether addr is in its cool-down.
func (h *Health) IsDown(addr string) bool {
	now := h.clock()
	h.mu.Lock()
	defer h.mu.Unlock()
	until, known := h.down[addr]
	return known && now.Before(until)
}

// Pick returns the server of the pool that user should be sent to: the first
// of Rank(servers, user) that is not in its cool-down, and true. When every
// server is in its cool-down it returns the user's first choice anyway, and
// false: trying a server that may have come back is better than refusing
// the user. An empty pool gives "", false.
//
// While all servers are up, Pick(servers, user) equals the package's Pick,
// so users stay where they are; when a server is down, only its own users
// move, each to their next choice, and they return when it is up again.
func (h *Health) Pick(servers []string, user string) (string, bool) {
	if len(servers) == 0 {
		return "", false
	}
	now := h.clock()
	h.mu.Lock()
	defer h.mu.Unlock()
	isDown := func(s string) bool {
		until, known := h.down[s]
		return known && now.Before(until)
	}
	first := Pick(servers, user)
	if !isDown(first) {
		return first, true
	}
	for _, s := range Rank(servers, user)[1:] {
		if !isDown(s) {
			return s, true
		}
	}
	return first, false
}
