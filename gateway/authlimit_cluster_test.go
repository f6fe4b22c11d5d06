package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap/zaptest"

	"mailgate/gateway/cluster"
)

// sharedLimiters are n instances' limiters sharing the counts in m.
func sharedLimiters(t *testing.T, m *miniredis.Miniredis, n, max int) ([]*authLimiter, []*cluster.Client) {
	t.Helper()
	var ls []*authLimiter
	var cs []*cluster.Client
	for i := range n {
		cfg := &cluster.Config{Redis: cluster.RedisConfig{Addresses: []string{m.Addr()}}, Instance: "gw" + string(rune('a'+i))}
		cfg.ApplyDefaults()
		if errs := cfg.Validate(); len(errs) > 0 {
			t.Fatal(errs)
		}
		c := cluster.New(cfg, zaptest.NewLogger(t), nil)
		c.Start(context.Background())
		t.Cleanup(func() { c.Close() })
		a := newAuthLimiter(max, time.Minute, 100*time.Millisecond)
		a.useShared(c.Failures())
		ls, cs = append(ls, a), append(cs, c)
	}
	return ls, cs
}

// Failed logins spread over three instances count as one budget, for the
// network and for the account; a login that succeeded through one instance
// exempts its network on the others; the window is the same fixed window
// as one instance's.
func TestAuthLimiterSharedByTheCluster(t *testing.T) {
	m := miniredis.RunT(t)
	ls, _ := sharedLimiters(t, m, 3, 3)
	bad, good, known := net4("192.0.2.1"), net4("192.0.2.2"), net4("192.0.2.3")
	alice := nameAccount("alice")
	var delays []time.Duration
	for i := range 3 {
		if !ls[i].allowed(bad) {
			t.Fatalf("attempt %d (instance %d) refused before the cluster's limit", i+1, i)
		}
		delays = append(delays, ls[i].failed(bad, alice))
	}
	if !(delays[0] < delays[1] && delays[1] < delays[2]) {
		t.Errorf("delays do not grow across instances: %v", delays)
	}
	for i, l := range ls {
		if l.allowed(bad) {
			t.Errorf("instance %d still lets the network try after 3 failures spread over 3 instances", i)
		}
		if !l.allowed(good) {
			t.Errorf("instance %d refuses another network", i)
		}
		if d := l.accountDelay(good, alice); d != 100*time.Millisecond {
			t.Errorf("instance %d: account at the cluster's limit waits %v, want 100ms", i, d)
		}
	}
	ls[0].succeeded(known, alice)
	if d := ls[2].accountDelay(known, alice); d != 0 {
		t.Errorf("a network that logged in through instance 0 waits %v on instance 2", d)
	}
	// The window passes (miniredis's clock): nothing is refused or delayed.
	m.FastForward(time.Minute)
	if !ls[1].allowed(bad) || ls[1].accountDelay(good, alice) != 0 {
		t.Error("still refused or delayed after the window")
	}
	// Redis holds counts and markers, never a password.
	for _, k := range m.Keys() {
		if !strings.HasPrefix(k, "mailgate:fail:") {
			t.Errorf("unexpected key %q", k)
		}
	}
}

// Degraded mode: with Redis away each instance counts alone, and refuses
// after its own budget.
func TestAuthLimiterDegraded(t *testing.T) {
	m := miniredis.RunT(t)
	ls, cs := sharedLimiters(t, m, 2, 3)
	m.Close()
	bad := net4("192.0.2.1")
	for i := range 3 {
		if !ls[0].allowed(bad) {
			t.Fatalf("attempt %d refused before the instance's own limit", i+1)
		}
		ls[0].failed(bad, nameAccount("alice"))
	}
	if cs[0].Up() {
		t.Fatal("the client still says Redis is up")
	}
	if ls[0].allowed(bad) {
		t.Error("degraded: the instance forgot its own counts")
	}
	if !ls[1].allowed(bad) {
		t.Error("degraded: another instance refuses on counts it cannot see")
	}
}
