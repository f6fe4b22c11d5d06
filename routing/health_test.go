package routing

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for Health and the lookup cache.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestHealthPick(t *testing.T) {
	pool := []string{"10.0.0.1:993", "10.0.0.2:993", "10.0.0.3:993"}
	const user = "alice@example.org"
	rank := Rank(pool, user) // the user's order of preference
	tests := []struct {
		name        string
		cooldown    time.Duration
		down        []int // indexes into rank, marked down at t0
		up          []int // indexes into rank, marked up afterwards
		advance     time.Duration
		want        int // index into rank
		wantHealthy bool
	}{
		{name: "all up: the first choice", want: 0, wantHealthy: true},
		{name: "another server down: no move", down: []int{1}, want: 0, wantHealthy: true},
		{name: "first choice down: the second", down: []int{0}, want: 1, wantHealthy: true},
		{name: "first two down: the third", down: []int{0, 1}, want: 2, wantHealthy: true},
		{name: "all down: the first choice anyway", down: []int{0, 1, 2}, want: 0, wantHealthy: false},
		{name: "all down, the first comes up", down: []int{0, 1, 2}, up: []int{0}, want: 0, wantHealthy: true},
		{name: "all down, the third comes up", down: []int{0, 1, 2}, up: []int{2}, want: 2, wantHealthy: true},
		{name: "down then up: back home", down: []int{0}, up: []int{0}, want: 0, wantHealthy: true},
		{name: "within the default cool-down", down: []int{0}, advance: DefaultPoolCooldown - time.Second, want: 1, wantHealthy: true},
		{name: "default cool-down over: tried again", down: []int{0}, advance: DefaultPoolCooldown, want: 0, wantHealthy: true},
		{name: "within a configured cool-down", cooldown: 2 * time.Minute, down: []int{0}, advance: 90 * time.Second, want: 1, wantHealthy: true},
		{name: "configured cool-down over", cooldown: 2 * time.Minute, down: []int{0}, advance: 2 * time.Minute, want: 0, wantHealthy: true},
		{name: "all down, cool-down over", down: []int{0, 1, 2}, advance: DefaultPoolCooldown, want: 0, wantHealthy: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			h := NewHealth(tt.cooldown)
			h.now = clk.now
			for _, i := range tt.down {
				if !h.Down(rank[i]) {
					t.Errorf("Down(%s) = false for a server that was up", rank[i])
				}
			}
			for _, i := range tt.up {
				if !h.Up(rank[i]) {
					t.Errorf("Up(%s) = false for a server that was down", rank[i])
				}
			}
			clk.advance(tt.advance)
			got, healthy := h.Pick(pool, user)
			if got != rank[tt.want] || healthy != tt.wantHealthy {
				t.Errorf("Pick = %s, %v; want %s (choice %d), %v", got, healthy, rank[tt.want], tt.want, tt.wantHealthy)
			}
		})
	}
}

func TestHealthTransitions(t *testing.T) {
	clk := newFakeClock()
	h := NewHealth(10 * time.Second)
	h.now = clk.now
	const a = "10.0.0.1:143"
	if h.Up(a) {
		t.Error("Up of a server never down = true")
	}
	if !h.Down(a) || !h.IsDown(a) {
		t.Fatal("first Down: want a change to down")
	}
	clk.advance(6 * time.Second)
	if h.Down(a) {
		t.Error("Down of a server already down = true: the change would be logged twice")
	}
	// The second Down restarted the cool-down: 6s+6s is past the first
	// one's end but within the second's.
	clk.advance(6 * time.Second)
	if !h.IsDown(a) {
		t.Error("a refused retry did not restart the cool-down")
	}
	clk.advance(5 * time.Second)
	if h.IsDown(a) {
		t.Error("still down after its cool-down")
	}
	if !h.Down(a) {
		t.Error("Down after the cool-down ended = false: it had come back")
	}
	if !h.Up(a) || h.IsDown(a) {
		t.Error("Up of a down server: want a change to up")
	}
	if h.Up(a) {
		t.Error("second Up = true")
	}
}

func TestHealthCooldownSetting(t *testing.T) {
	var zero Health // usable as is
	if got := zero.Cooldown(); got != DefaultPoolCooldown {
		t.Errorf("zero Health cool-down = %v", got)
	}
	if got, ok := zero.Pick([]string{"a"}, "u"); got != "a" || !ok {
		t.Errorf("zero Health Pick = %q, %v", got, ok)
	}
	zero.Down("a")
	if got, ok := zero.Pick([]string{"a"}, "u"); got != "a" || ok {
		t.Errorf("one-server pool, down: Pick = %q, %v; want it anyway, false", got, ok)
	}
	h := NewHealth(0)
	if got := h.Cooldown(); got != DefaultPoolCooldown {
		t.Errorf("NewHealth(0) cool-down = %v", got)
	}
	h.SetCooldown(time.Minute)
	if got := h.Cooldown(); got != time.Minute {
		t.Errorf("after SetCooldown(1m): %v", got)
	}
	h.SetCooldown(-time.Second)
	if got := h.Cooldown(); got != DefaultPoolCooldown {
		t.Errorf("after SetCooldown(-1s): %v", got)
	}
	if got, ok := h.Pick(nil, "u"); got != "" || ok {
		t.Errorf("empty pool: Pick = %q, %v", got, ok)
	}
}

// TestHealthMovesOnlyTheDownServersUsers: with one server of four down, its
// users go to their second choice, everyone else stays, and everyone is home
// again once it is up.
func TestHealthMovesOnlyTheDownServersUsers(t *testing.T) {
	pool := []string{"a:993", "b:993", "c:993", "d:993"}
	h := NewHealth(0)
	h.Down("b:993")
	moved := 0
	for i := range 2000 {
		u := fmt.Sprintf("user%d@example.org", i)
		r := Rank(pool, u)
		got, ok := h.Pick(pool, u)
		if !ok {
			t.Fatalf("%s: Pick reports no healthy server", u)
		}
		want := r[0]
		if r[0] == "b:993" {
			want = r[1]
			moved++
		}
		if got != want {
			t.Fatalf("%s: Pick = %s, want %s (rank %v)", u, got, want, r)
		}
	}
	if moved < 2000/4*8/10 || moved > 2000/4*12/10 {
		t.Errorf("%d of 2000 users moved, want about a quarter", moved)
	}
	h.Up("b:993")
	for i := range 2000 {
		u := fmt.Sprintf("user%d@example.org", i)
		if got, _ := h.Pick(pool, u); got != Pick(pool, u) {
			t.Fatalf("%s not back on %s after Up", u, Pick(pool, u))
		}
	}
}

func TestHealthConcurrent(t *testing.T) {
	pool := []string{"a", "b", "c"}
	h := NewHealth(time.Millisecond)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				s := pool[(g+i)%len(pool)]
				switch i % 3 {
				case 0:
					h.Down(s)
				case 1:
					h.Up(s)
				}
				if got, _ := h.Pick(pool, fmt.Sprint("u", i)); got == "" {
					t.Error("Pick returned no server")
					return
				}
			}
		})
	}
	wg.Wait()
}
