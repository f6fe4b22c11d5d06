package gateway

import (
	"net/netip"
	"testing"
	"time"
)

func net4(s string) netip.Prefix { return clientNetwork(netip.MustParseAddr(s), 64) }

// TestAuthLimiterRefusesTheNetworkNeverTheAccount: finding 1 of the hostile
// internet issue. Failures from one network refuse that network; an
// account's failures from everywhere only delay it, and never the network
// that logged in to it before.
func TestAuthLimiterRefusesTheNetworkNeverTheAccount(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAuthLimiter(3, time.Minute, 100*time.Millisecond)
	a.now = func() time.Time { return now }
	bad := net4("192.0.2.1")
	good := net4("192.0.2.2")
	alice := nameAccount("alice")

	var delays []time.Duration
	for i := 0; i < 3; i++ {
		if !a.allowed(bad) {
			t.Fatalf("attempt %d refused before the limit", i+1)
		}
		delays = append(delays, a.failed(bad, alice))
	}
	if !(delays[0] < delays[1] && delays[1] < delays[2]) {
		t.Errorf("delays do not grow: %v", delays)
	}
	if a.allowed(bad) {
		t.Error("a network over the limit may still try")
	}
	if !a.allowed(good) {
		t.Error("another network is refused")
	}
	// alice has 3 failures (the limit): a new network waits the base delay,
	// doubled per failure past the limit, at most maxAccountDelay.
	if d := a.accountDelay(good, nameAccount("Alice")); d != 100*time.Millisecond {
		t.Errorf("account at the limit: wait %v, want 100ms (case-insensitive)", d)
	}
	for i := 0; i < 2; i++ {
		a.failed(net4("198.51.100."+string(rune('1'+i))), alice)
	}
	if d := a.accountDelay(good, alice); d != 400*time.Millisecond {
		t.Errorf("two failures past the limit: wait %v, want 400ms", d)
	}
	for i := 0; i < 20; i++ {
		a.failed(net4("203.0.113.1"), alice)
	}
	if d := a.accountDelay(good, alice); d != maxAccountDelay {
		t.Errorf("many failures: wait %v, want the cap %v", d, maxAccountDelay)
	}
	// A network that logged in to alice before does not wait.
	known := net4("192.0.2.77")
	a.succeeded(known, alice)
	if d := a.accountDelay(known, alice); d != 0 {
		t.Errorf("a network that logged in before waits %v", d)
	}
	if d := a.accountDelay(good, nameAccount("bob")); d != 0 {
		t.Errorf("an account without failures waits %v", d)
	}

	now = now.Add(time.Minute)
	if !a.allowed(bad) || a.accountDelay(good, alice) != 0 {
		t.Error("still refused or delayed after the window")
	}
	a.failed(good, nameAccount("x")) // sweeps expired windows
	if len(a.byNet) != 1 || len(a.byAccount) != 1 {
		t.Errorf("expired windows kept: %d networks, %d accounts", len(a.byNet), len(a.byAccount))
	}
}

// TestAuthLimiterCountsTheRoutedIdentity: finding 2. Names that routing
// rewrites to one backend account share that account's count.
func TestAuthLimiterCountsTheRoutedIdentity(t *testing.T) {
	a := newAuthLimiter(3, time.Minute, time.Second)
	bob := routedAccount("store", "bob")
	for i := 0; i < 3; i++ {
		n := net4("198.51.100." + string(rune('1'+i)))
		a.failed(n, nameAccount("bob@x"+string(rune('1'+i))+".example.org"), bob)
	}
	fresh := net4("203.0.113.9")
	if d := a.accountDelay(fresh, nameAccount("bob@x9.example.org")); d != 0 {
		t.Errorf("a fresh name before routing waits %v", d)
	}
	if d := a.accountDelay(fresh, nameAccount("bob@x9.example.org"), bob); d != time.Second {
		t.Errorf("a fresh name routed to an attacked account waits %v, want 1s", d)
	}
	if d := a.accountDelay(fresh, nameAccount("bob@x9.example.org"), routedAccount("other", "bob")); d != 0 {
		t.Errorf("the same user name on another backend waits %v", d)
	}
}

func TestAuthLimiterDelayIsBounded(t *testing.T) {
	a := newAuthLimiter(1000, time.Hour, time.Second)
	n := net4("192.0.2.9")
	var d time.Duration
	for i := 0; i < 100; i++ {
		d = a.failed(n, nameAccount("u"))
	}
	if d != maxAuthDelay {
		t.Errorf("delay after 100 failures = %v, want the cap %v", d, maxAuthDelay)
	}
}

// TestAuthLimiterTablesAreBounded: finding 5. However many networks and
// names fail, each table holds at most maxTracked entries.
func TestAuthLimiterTablesAreBounded(t *testing.T) {
	a := newAuthLimiter(10, time.Hour, time.Second)
	for i := range maxTracked + 500 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		a.failed(clientNetwork(ip, 64), nameAccount(ip.String()))
		a.succeeded(clientNetwork(ip, 64), nameAccount(ip.String()))
	}
	if len(a.byNet) > maxTracked || len(a.byAccount) > maxTracked || len(a.known) > maxTracked {
		t.Errorf("tables grew past %d: %d networks, %d accounts, %d known", maxTracked, len(a.byNet), len(a.byAccount), len(a.known))
	}
}

func TestConnLimits(t *testing.T) {
	l := newConnLimits(3, 2, 64)
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

// TestIPv6ClientsCountPerPrefix: finding 3. Every address of one /64 is one
// client network for per_ip and for the failed-login limit
// (limits.ipv6_prefix); another /64 is another network.
func TestIPv6ClientsCountPerPrefix(t *testing.T) {
	l := newConnLimits(100, 2, 64)
	if _, ok := l.acquire(tcpAddr("2001:db8:1:2::1")); !ok {
		t.Fatal("first connection refused")
	}
	if _, ok := l.acquire(tcpAddr("2001:db8:1:2::ffff:1")); !ok {
		t.Fatal("second connection of the /64 refused")
	}
	if _, ok := l.acquire(tcpAddr("2001:db8:1:2:dead:beef::9")); ok {
		t.Error("a third address of the same /64 got a fresh per_ip budget")
	}
	if _, ok := l.acquire(tcpAddr("2001:db8:1:3::1")); !ok {
		t.Error("another /64 is refused")
	}
	if _, ok := l.acquire(tcpAddr("192.0.2.1")); !ok {
		t.Error("an IPv4 client is refused")
	}

	a := newAuthLimiter(3, time.Minute, time.Millisecond)
	for i := range 3 {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 15: byte(i + 1)})
		a.failed(clientNetwork(ip, 64), nameAccount("u"))
	}
	if a.allowed(clientNetwork(netip.MustParseAddr("2001:db8:1:2::77"), 64)) {
		t.Error("a fresh address of a /64 over the failure limit may still try")
	}
	if !a.allowed(clientNetwork(netip.MustParseAddr("2001:db8:1:3::77"), 64)) {
		t.Error("another /64 is refused")
	}
	if got := clientNetwork(netip.MustParseAddr("2001:db8::1"), 128); got.Bits() != 128 {
		t.Errorf("ipv6_prefix 128 groups %v", got)
	}
	if got := clientNetwork(netip.MustParseAddr("192.0.2.7"), 64); got.Bits() != 32 {
		t.Errorf("an IPv4 address is grouped as %v", got)
	}
}
