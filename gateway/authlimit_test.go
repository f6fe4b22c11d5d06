package gateway

import (
	"net/netip"
	"testing"
	"time"
)

func TestAuthLimiterSlowsThenRefusesPerIPAndUser(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAuthLimiter(3, time.Minute)
	a.now = func() time.Time { return now }
	bad := netip.MustParseAddr("192.0.2.1")
	good := netip.MustParseAddr("192.0.2.2")

	var delays []time.Duration
	for i := 0; i < 3; i++ {
		if !a.allowed(bad, "mallory") {
			t.Fatalf("attempt %d refused before the limit", i+1)
		}
		delays = append(delays, a.failed(bad, "user"+string(rune('a'+i))))
	}
	if !(delays[0] < delays[1] && delays[1] < delays[2]) {
		t.Errorf("delays do not grow: %v", delays)
	}
	if a.allowed(bad, "someone") {
		t.Error("an address over the limit may still try")
	}
	if !a.allowed(good, "alice") {
		t.Error("another address is refused")
	}

	// Per user: failures from many addresses add up.
	for i := 0; i < 3; i++ {
		a.failed(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), "Bob")
	}
	if a.allowed(good, "bob") {
		t.Error("a user over the limit may still be tried (case-insensitively)")
	}

	now = now.Add(time.Minute)
	if !a.allowed(bad, "bob") {
		t.Error("still refused after the window")
	}
	a.failed(good, "x") // sweeps expired windows
	if len(a.byIP) != 1 || len(a.byUser) != 1 {
		t.Errorf("expired windows kept: %d addresses, %d users", len(a.byIP), len(a.byUser))
	}
}

func TestAuthLimiterDelayIsBounded(t *testing.T) {
	a := newAuthLimiter(1000, time.Hour)
	ip := netip.MustParseAddr("192.0.2.9")
	var d time.Duration
	for i := 0; i < 100; i++ {
		d = a.failed(ip, "u")
	}
	if d != maxAuthDelay {
		t.Errorf("delay after 100 failures = %v, want the cap %v", d, maxAuthDelay)
	}
}

func TestConnLimits(t *testing.T) {
	l := newConnLimits(3, 2)
	a := tcpAddr("192.0.2.1")
	b := tcpAddr("192.0.2.2")
	r1, ok1 := l.acquire(a)
	_, ok2 := l.acquire(a)
	_, ok3 := l.acquire(a)
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("per-IP limit 2: got %v %v %v", ok1, ok2, ok3)
	}
	_, ok4 := l.acquire(b)
	_, ok5 := l.acquire(b)
	if !ok4 || ok5 {
		t.Fatalf("total limit 3: got %v %v", ok4, ok5)
	}
	r1()
	r1() // a second release is harmless
	if _, ok := l.acquire(b); !ok {
		t.Fatal("a released slot is not reusable")
	}
	if l.total != 3 {
		t.Fatalf("total = %d, want 3", l.total)
	}
}
