package routing

import (
	"fmt"
	"slices"
	"testing"
)

func TestPickStable(t *testing.T) {
	servers := []string{"10.0.0.1:993", "10.0.0.2:993", "10.0.0.3:993"}
	reversed := slices.Clone(servers)
	slices.Reverse(reversed)
	for i := range 200 {
		u := fmt.Sprintf("user%d@example.org", i)
		a := Pick(servers, u)
		if b := Pick(reversed, u); a != b {
			t.Fatalf("Pick depends on the order of the pool: %q vs %q for %s", a, b, u)
		}
		if b := Pick(servers, fmt.Sprintf("USER%d@Example.org", i)); a != b {
			t.Fatalf("Pick depends on case: %q vs %q for %s", a, b, u)
		}
	}
	if got := Pick(nil, "alice"); got != "" {
		t.Errorf("Pick(empty pool) = %q", got)
	}
	if got := Pick([]string{"only"}, "alice"); got != "only" {
		t.Errorf("Pick(one server) = %q", got)
	}
}

// TestPickMovesFewUsers is issue 5's stability requirement: adding a 4th
// server to 3 moves 20-30% of 10,000 users (ideally 1/4), all of them to the
// new server, and the load stays balanced.
func TestPickMovesFewUsers(t *testing.T) {
	three := []string{"a:993", "b:993", "c:993"}
	four := append(slices.Clone(three), "d:993")
	const n = 10000
	moved := 0
	load := map[string]int{}
	for i := range n {
		u := fmt.Sprintf("user%d@example.org", i)
		before, after := Pick(three, u), Pick(four, u)
		load[after]++
		if before != after {
			moved++
			if after != "d:993" {
				t.Fatalf("%s moved from %s to %s, not to the new server", u, before, after)
			}
		}
	}
	if frac := float64(moved) / n; frac < 0.20 || frac > 0.30 {
		t.Errorf("adding a 4th server moved %.1f%% of users, want 20-30%%", 100*frac)
	}
	for s, c := range load {
		if c < n/4*85/100 || c > n/4*115/100 {
			t.Errorf("server %s serves %d of %d users, want about %d", s, c, n, n/4)
		}
	}
}

func TestRankFailover(t *testing.T) {
	pool := []string{"a", "b", "c", "d"}
	for i := range 500 {
		u := fmt.Sprintf("u%d", i)
		r := Rank(pool, u)
		if r[0] != Pick(pool, u) {
			t.Fatalf("Rank(%s)[0] = %s, Pick = %s", u, r[0], Pick(pool, u))
		}
		if len(r) != len(pool) {
			t.Fatalf("Rank(%s) = %v", u, r)
		}
		// Without the first choice, the user's pick is their second choice:
		// failover and removal agree.
		rest := slices.DeleteFunc(slices.Clone(pool), func(s string) bool { return s == r[0] })
		if got := Pick(rest, u); got != r[1] {
			t.Fatalf("Pick without %s = %s, Rank says %s", r[0], got, r[1])
		}
	}
}
