package main

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// relay is a TCP proxy on 127.0.0.1 that puts a backend "far away": every
// chunk read from one side is stamped with the time it arrived and written
// to the other side delay later, in order, so each direction sees a one-way
// delay of delay (a round trip of 2*delay) and no bandwidth limit beyond the
// machine's. Each direction of each connection has a reader goroutine that
// keeps reading (so a full window stays in flight, as on a long fat link)
// and a writer goroutine that sleeps until the oldest chunk is due: one
// sleep per chunk, never per byte. A full queue (queueChunks) stops the
// reader, which is TCP's own back pressure.
//
// Connection setup costs one round trip too: the relay dials the backend
// 2*delay after it accepted the client, so a server-first greeting reaches
// the client 1.5 round trips after connect, as on a link where the client's
// SYN and the server's SYN-ACK each take delay (real TCP adds the final
// ACK's half round trip before the server's accept; this relay does not).
type relay struct {
	ln     net.Listener
	target string
	delay  time.Duration

	up, down atomic.Int64 // bytes delivered client->backend, backend->client
	conns    atomic.Int64 // connections accepted

	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

const (
	relayReadSize = 64 << 10
	queueChunks   = 4096
)

func startRelay(target string, delay time.Duration) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target, delay: delay, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is where clients connect instead of target.
func (r *relay) Addr() string { return r.ln.Addr().String() }

// Close stops accepting, cuts every open connection and waits for the
// relay's goroutines.
func (r *relay) Close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.open {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.open[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.open, c)
	r.mu.Unlock()
	c.Close()
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.conns.Add(1)
		r.wg.Add(1)
		go r.handle(c)
	}
}

func (r *relay) handle(client net.Conn) {
	defer r.wg.Done()
	if !r.track(client) {
		return
	}
	defer r.untrack(client)
	time.Sleep(2 * r.delay) // SYN out, SYN-ACK back
	backend, err := net.DialTimeout("tcp", r.target, 10*time.Second)
	if err != nil {
		return
	}
	if !r.track(backend) {
		return
	}
	defer r.untrack(backend)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pipe(backend, client, &r.up) }()
	go func() { defer wg.Done(); r.pipe(client, backend, &r.down) }()
	wg.Wait()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst with the delay. At src's EOF it half-closes dst
// once every chunk is delivered; on any error it closes both, which ends
// the other direction too.
func (r *relay) pipe(dst, src net.Conn, count *atomic.Int64) {
	q := make(chan chunk, queueChunks)
	go func() {
		defer close(q)
		buf := make([]byte, relayReadSize)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(r.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if failed {
			continue // drain so the reader can finish
		}
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		n, err := dst.Write(c.b)
		count.Add(int64(n))
		if err != nil {
			failed = true
			dst.Close()
			src.Close()
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok && !failed {
		if err := tc.CloseWrite(); err == nil {
			return
		}
	}
	dst.Close()
}
