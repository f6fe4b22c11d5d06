package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
)

// proxyListener wraps ln so connections from the trusted prefixes must start
// with a PROXY protocol header (v1 or v2), whose client address then stands
// for the connection everywhere (logs, limits, routing). Connections from
// anywhere else are used as they are, without waiting for a header: POP3 and
// IMAP servers speak first, and waiting would delay every greeting. A header
// sent by an untrusted peer is just an invalid command to the protocol front.
func proxyListener(ln net.Listener, trusted []netip.Prefix, timeout time.Duration) net.Listener {
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: timeout,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			ip := addrIP(o.Upstream)
			for _, p := range trusted {
				if p.Contains(ip) {
					return proxyproto.REQUIRE, nil
				}
			}
			return proxyproto.SKIP, nil
		},
	}
}

// readProxyHeader reads the PROXY header of a connection from a trusted
// peer now, under the listener's header timeout, so that its address is known
// before limits apply and a missing header refuses the connection.
func readProxyHeader(conn net.Conn) error {
	pc, ok := conn.(*proxyproto.Conn)
	if !ok {
		return nil
	}
	if _, err := pc.Read(nil); err != nil {
		return err
	}
	if pc.ProxyHeader() == nil {
		return errors.New("no PROXY header")
	}
	return nil
}

// keepaliveListen listens on addr with TCP keepalive on every accepted
// connection: the first probe after idle of silence, then every idle/4
// (at least 1s), and the connection is dropped after 4 unanswered probes, so
// a half-open client connection is found within about twice idle and its
// session ends (and releases its maildrop lock).
func keepaliveListen(addr string, idle time.Duration) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{
		Enable:   true,
		Idle:     idle,
		Interval: max(idle/4, time.Second),
		Count:    4,
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}

// countingConn counts the bytes written to a client.
type countingConn struct {
	net.Conn
	n prometheus.Counter
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(float64(n))
	return n, err
}
