package gateway

import (
	"net"
	"net/netip"
	"sync"
)

// connLimits bounds client connections in total and per client address
// (`limits.connections`, `limits.per_ip`). The limits are per mailgate
// instance.
type connLimits struct {
	mu    sync.Mutex
	total int
	max   int
	perIP map[netip.Prefix]int // per client network (clientNetwork)
	maxIP int
	v6    int // limits.ipv6_prefix
}

func newConnLimits(max, maxIP, ipv6Prefix int) *connLimits {
	return &connLimits{max: max, maxIP: maxIP, v6: ipv6Prefix, perIP: make(map[netip.Prefix]int)}
}

// set changes the limits (SIGHUP); connections already open stay, counted
// under the network they were counted under.
func (l *connLimits) set(max, maxIP, ipv6Prefix int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max, l.maxIP, l.v6 = max, maxIP, ipv6Prefix
}

// acquire counts a new connection from addr; ok is false when a limit is
// reached. release must be called exactly once when ok.
func (l *connLimits) acquire(addr net.Addr) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ip := clientNetwork(addrIP(addr), l.v6)
	if (l.max > 0 && l.total >= l.max) || (l.maxIP > 0 && l.perIP[ip] >= l.maxIP) {
		return nil, false
	}
	l.total++
	l.perIP[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.perIP[ip]--; l.perIP[ip] <= 0 {
				delete(l.perIP, ip)
			}
		})
	}, true
}

// addrIP extracts the client IP of a connection address (zero if unknown).
func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// clientNetwork is the network whose clients share limits: an IPv4 address
// alone, an IPv6 address with the others of its prefix (one subscriber
// usually has a whole /64; limits.ipv6_prefix).
func clientNetwork(ip netip.Addr, ipv6Prefix int) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if ip.Is6() {
		bits = ipv6Prefix
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(ip, ip.BitLen())
	}
	return p
}
