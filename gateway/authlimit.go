package gateway

import (
	"net/netip"
	"strings"
	"sync"
	"time"
)

// authLimiter slows down and then refuses password guessing
// (`limits.auth_failures_per_ip`): failed logins are counted per client
// address and per user name within a window. Each failure past the first
// costs a growing delay before its answer; once a client address or a user
// reaches the limit, further logins are refused without asking the backend
// until the window has passed. The counts are per mailgate instance.
type authLimiter struct {
	now  func() time.Time
	step time.Duration // the delay grows by this per failure, up to maxDelay

	mu     sync.Mutex
	max    int           // failures within per before refusal; 0 disables
	per    time.Duration // the window
	byIP   map[netip.Addr]*failures
	byUser map[string]*failures
	sweep  time.Time
}

type failures struct {
	n     int
	start time.Time // of the current window
}

const maxAuthDelay = 5 * time.Second

// set changes the limit and window (SIGHUP); counts so far are kept.
func (a *authLimiter) set(max int, per time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.max, a.per = max, per
}

func newAuthLimiter(max int, per time.Duration) *authLimiter {
	return &authLimiter{max: max, per: per, now: time.Now, step: 250 * time.Millisecond,
		byIP: make(map[netip.Addr]*failures), byUser: make(map[string]*failures)}
}

// allowed reports whether a login from ip as user may be tried now.
func (a *authLimiter) allowed(ip netip.Addr, user string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max <= 0 {
		return true
	}
	now := a.now()
	return a.count(a.byIP[ip], now) < a.max && a.count(a.byUser[strings.ToLower(user)], now) < a.max
}

func (a *authLimiter) count(f *failures, now time.Time) int {
	if f == nil || now.Sub(f.start) >= a.per {
		return 0
	}
	return f.n
}

// failed records a failed login and returns how long to wait before
// answering it.
func (a *authLimiter) failed(ip netip.Addr, user string) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max <= 0 {
		return 0
	}
	now := a.now()
	a.expire(now)
	n := addFailure(a.byIP, ip, now, a.per)
	if u := addFailure(a.byUser, strings.ToLower(user), now, a.per); u > n {
		n = u
	}
	d := time.Duration(n-1) * a.step
	if d > maxAuthDelay {
		d = maxAuthDelay
	}
	return d
}

func addFailure[K comparable](m map[K]*failures, k K, now time.Time, per time.Duration) int {
	f := m[k]
	if f == nil || now.Sub(f.start) >= per {
		f = &failures{start: now}
		m[k] = f
	}
	f.n++
	return f.n
}

// expire drops finished windows now and then, so memory stays bounded by the
// clients of the last window.
func (a *authLimiter) expire(now time.Time) {
	if now.Sub(a.sweep) < a.per {
		return
	}
	a.sweep = now
	for k, f := range a.byIP {
		if now.Sub(f.start) >= a.per {
			delete(a.byIP, k)
		}
	}
	for k, f := range a.byUser {
		if now.Sub(f.start) >= a.per {
			delete(a.byUser, k)
		}
	}
}
