package routing

import (
	"hash/fnv"
	"slices"
	"strings"
)

// Pick returns the server of a pool that serves user, by rendezvous (highest
// random weight) hashing: every server gets a pseudo-random weight from the
// pair (server, user) and the heaviest wins. A user therefore always lands on
// the same server, on every gateway replica and across restarts (the hash is
// fixed, not seeded per process), and adding an n-th server moves only about
// 1/n of the users: those for whom the new server weighs the most. Removing a
// server moves only its own users.
//
// user is the backend login name (Decision.User); case is ignored, like in the
// rules. Pick returns "" for an empty pool.
func Pick(servers []string, user string) string {
	best, bestW := "", uint64(0)
	u := strings.ToLower(user)
	for _, s := range servers {
		w := weight(s, u)
		if best == "" || w > bestW || (w == bestW && s < best) {
			best, bestW = s, w
		}
	}
	return best
}

// Rank returns the pool's servers in the order user should try them: Pick's
// choice first, then the user's next choices. Failing over along this order
// keeps the users of a healthy server where they are and spreads the users
// of a failed one over the others.
func Rank(servers []string, user string) []string {
	u := strings.ToLower(user)
	type ws struct {
		s string
		w uint64
	}
	all := make([]ws, len(servers))
	for i, s := range servers {
		all[i] = ws{s, weight(s, u)}
	}
	slices.SortFunc(all, func(a, b ws) int {
		switch {
		case a.w > b.w:
			return -1
		case a.w < b.w:
			return 1
		}
		return strings.Compare(a.s, b.s)
	})
	out := make([]string, len(all))
	for i, x := range all {
		out[i] = x.s
	}
	return out
}

// weight is FNV-1a over server, a NUL separator and the user, followed by
// the splitmix64 finalizer: FNV alone leaves names that differ only in
// their last bytes with correlated weights.
func weight(server, user string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(server))
	h.Write([]byte{0})
	h.Write([]byte(user))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
