package gateway

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// authLimiter slows down and then refuses password guessing
// (`limits.auth_failures_per_ip`) so that failures cost the one who fails,
// never the user who logs in correctly from elsewhere.
// The counts are per mailgate instance, or shared by a cluster of instances
// (shared: gateway/cluster keeps them in Redis), so that an attacker spread
// over N instances has one budget, not N. The model, as the README states it:
//
//   - Refusal is per client network only. Failed logins are counted per
//     client network (an IPv4 address; an IPv6 prefix, limits.ipv6_prefix);
//     each failure past the first is answered after a growing delay, and once
//     a network reaches the limit within the window, every login from it is
//     refused without asking the backend until the window has passed.
//   - An account is never refused; it is only slowed down. Failures are also
//     counted per account, both under the name as typed and under the routed
//     identity (backend, backend user), so rewrite_user cannot give one
//     backend account many budgets. Once an account has reached the limit
//     within the window, each further login for it waits before the backend
//     is asked: auth_failure_delay doubled per failure past the limit, at
//     most 15 s (Dovecot's auth penalty). A network that logged in to that
//     account successfully within knownFor is exempt from that wait.
type authLimiter struct {
	now  func() time.Time
	step time.Duration // the answer to a failure is delayed by this per earlier failure, up to maxAuthDelay

	mu        sync.Mutex
	max       int           // failures within per; 0 disables
	per       time.Duration // the window
	base      time.Duration // an account's first wait past the limit
	byNet     map[netip.Prefix]*failures
	byAccount map[string]*failures
	known     map[knownLogin]time.Time // successful logins, for the exemption
	sweep     time.Time

	// shared, when set, holds the counts and known logins of the whole
	// cluster; the tables above are still kept, and decide whenever the
	// shared store cannot be reached (degraded mode: per instance).
	shared sharedFailures
}

// sharedFailures keeps the limiter's counts for a set of gateway instances.
// Keys are opaque strings made by the limiter (failureKey, knownKey); a
// method returns an error when the store cannot be reached, and the limiter
// then decides on its own counts.
type sharedFailures interface {
	// Failures returns the failures counted under each key in its current
	// window (0: none, or the window has passed).
	Failures(ctx context.Context, keys ...string) ([]int, error)
	// AddFailure counts one failure under each key and returns the new
	// counts; a key's window of per starts at its first failure, as in the
	// limiter's own tables.
	AddFailure(ctx context.Context, per time.Duration, keys ...string) ([]int, error)
	// Known reports, for each key, whether Remember stored it within ttl.
	Known(ctx context.Context, keys ...string) ([]bool, error)
	// Remember stores each key for ttl.
	Remember(ctx context.Context, ttl time.Duration, keys ...string) error
}

// useShared makes the limiter count for the cluster (before it is used).
func (a *authLimiter) useShared(s sharedFailures) { a.shared = s }

// The shared store's keys: a client network, an account (nameAccount or
// routedAccount, whose NULs become ':'; a backend name has no ':'), and a
// network's successful login to an account (the network last: a prefix
// has no '|').
func netKey(network netip.Prefix) string { return "net:" + network.String() }
func accountKey(account string) string {
	return "acct:" + strings.ReplaceAll(account, "\x00", ":")
}
func knownKey(account string, network netip.Prefix) string {
	return "known:" + strings.ReplaceAll(account, "\x00", ":") + "|" + network.String()
}

type failures struct {
	n     int
	start time.Time // of the current window
}

// knownLogin is an account that a client network logged in to.
type knownLogin struct {
	account string
	network netip.Prefix
}

const (
	// maxAuthDelay bounds the delay before the answer to a failure.
	maxAuthDelay = 5 * time.Second
	// maxAccountDelay bounds the wait of a login for an account under
	// attack: Dovecot's auth penalty stops doubling at 15 s.
	maxAccountDelay = 15 * time.Second
	// knownFor is how long a successful login exempts its network from the
	// wait of an account under attack.
	knownFor = 7 * 24 * time.Hour
	// maxTracked bounds each table (networks, accounts, known logins), so
	// that hostile clients cost bounded memory whatever they send.
	maxTracked = 100_000
)

// set changes the limit, window and base delay (SIGHUP); counts so far are
// kept.
func (a *authLimiter) set(max int, per, base time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.max, a.per, a.base = max, per, base
}

func newAuthLimiter(max int, per, base time.Duration) *authLimiter {
	return &authLimiter{max: max, per: per, base: base, now: time.Now, step: 250 * time.Millisecond,
		byNet: make(map[netip.Prefix]*failures), byAccount: make(map[string]*failures),
		known: make(map[knownLogin]time.Time)}
}

// nameAccount and routedAccount are the keys of an account's failures: the
// name as the client typed it, and the identity routing chose.
func nameAccount(user string) string { return "name\x00" + strings.ToLower(user) }
func routedAccount(backend, user string) string {
	return "routed\x00" + backend + "\x00" + strings.ToLower(user)
}

// allowed reports whether a login from the client network may be tried now.
func (a *authLimiter) allowed(network netip.Prefix) bool {
	a.mu.Lock()
	max := a.max
	a.mu.Unlock()
	if max <= 0 {
		return true
	}
	if a.shared != nil {
		if n, err := a.shared.Failures(context.Background(), netKey(network)); err == nil {
			return n[0] < max
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.count(a.byNet[network], a.now()) < a.max
}

// accountDelay is how long a login from network for the accounts must wait
// before the backend is asked: zero unless an account has reached the
// limit and the network has not logged in to it before.
func (a *authLimiter) accountDelay(network netip.Prefix, accounts ...string) time.Duration {
	shared, sharedOK := a.sharedAccounts(network, accounts)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max <= 0 {
		return 0
	}
	now := a.now()
	n := 0
	for _, acc := range accounts {
		if t, ok := a.known[knownLogin{acc, network}]; ok && now.Sub(t) < knownFor {
			return 0
		}
		n = max(n, a.count(a.byAccount[acc], now))
	}
	if sharedOK {
		if shared < 0 {
			return 0 // known to the cluster
		}
		n = shared
	}
	if n < a.max {
		return 0
	}
	d := a.base
	for i := a.max; i < n && d < maxAccountDelay; i++ {
		d *= 2
	}
	return min(d, maxAccountDelay)
}

// sharedAccounts asks the shared store about the accounts: -1 if network
// logged in to one of them before, else their highest failure count. ok is
// false without a shared store or when it cannot be reached.
func (a *authLimiter) sharedAccounts(network netip.Prefix, accounts []string) (n int, ok bool) {
	if a.shared == nil {
		return 0, false
	}
	ctx := context.Background()
	keys := make([]string, len(accounts))
	for i, acc := range accounts {
		keys[i] = knownKey(acc, network)
	}
	known, err := a.shared.Known(ctx, keys...)
	if err != nil {
		return 0, false
	}
	for _, k := range known {
		if k {
			return -1, true
		}
	}
	for i, acc := range accounts {
		keys[i] = accountKey(acc)
	}
	counts, err := a.shared.Failures(ctx, keys...)
	if err != nil {
		return 0, false
	}
	for _, c := range counts {
		n = max(n, c)
	}
	return n, true
}

func (a *authLimiter) count(f *failures, now time.Time) int {
	if f == nil || now.Sub(f.start) >= a.per {
		return 0
	}
	return f.n
}

// failed records a failed login from network for the accounts and returns
// how long to wait before answering it (growing with the network's
// failures only: the victim's own network is not slowed by an attacker).
func (a *authLimiter) failed(network netip.Prefix, accounts ...string) time.Duration {
	a.mu.Lock()
	if a.max <= 0 {
		a.mu.Unlock()
		return 0
	}
	now := a.now()
	a.expire(now)
	n := addFailure(a, a.byNet, network, now)
	for _, acc := range accounts {
		addFailure(a, a.byAccount, acc, now)
	}
	per := a.per
	a.mu.Unlock()
	if a.shared != nil {
		keys := []string{netKey(network)}
		for _, acc := range accounts {
			keys = append(keys, accountKey(acc))
		}
		if counts, err := a.shared.AddFailure(context.Background(), per, keys...); err == nil {
			n = counts[0]
		}
	}
	return min(time.Duration(n-1)*a.step, maxAuthDelay)
}

// succeeded records a successful login from network for the accounts: that
// network is exempt from their wait from now on.
func (a *authLimiter) succeeded(network netip.Prefix, accounts ...string) {
	a.mu.Lock()
	if a.max <= 0 {
		a.mu.Unlock()
		return
	}
	now := a.now()
	for _, acc := range accounts {
		k := knownLogin{acc, network}
		if _, ok := a.known[k]; !ok {
			evictOne(a.known)
		}
		a.known[k] = now
	}
	a.mu.Unlock()
	if a.shared != nil {
		keys := make([]string, len(accounts))
		for i, acc := range accounts {
			keys[i] = knownKey(acc, network)
		}
		a.shared.Remember(context.Background(), knownFor, keys...) // an error: the local table has it
	}
}

func addFailure[K comparable](a *authLimiter, m map[K]*failures, k K, now time.Time) int {
	f := m[k]
	if f == nil || now.Sub(f.start) >= a.per {
		if f == nil {
			evictOne(m)
		}
		f = &failures{start: now}
		m[k] = f
	}
	f.n++
	return f.n
}

// evictOne makes room in a full table by dropping an arbitrary entry (Go's
// map iteration order is random, so an attacker cannot choose which).
func evictOne[K comparable, V any](m map[K]V) {
	if len(m) < maxTracked {
		return
	}
	for k := range m {
		delete(m, k)
		return
	}
}

// expire drops finished windows and old known logins now and then, so
// memory stays bounded by the clients of the last window.
func (a *authLimiter) expire(now time.Time) {
	if now.Sub(a.sweep) < a.per {
		return
	}
	a.sweep = now
	for k, f := range a.byNet {
		if now.Sub(f.start) >= a.per {
			delete(a.byNet, k)
		}
	}
	for k, f := range a.byAccount {
		if now.Sub(f.start) >= a.per {
			delete(a.byAccount, k)
		}
	}
	for k, t := range a.known {
		if now.Sub(t) >= knownFor {
			delete(a.known, k)
		}
	}
}
