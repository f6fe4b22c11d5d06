// Package faults proves mailgate's invariants (listed in package test's
// doc.go) when the backend misbehaves: a fault-injecting TCP proxy sits
// between the gateway and a real Dovecot, and the tests cut, stall or slow
// the backend connection at chosen
// points of the POP3-over-IMAP conversation (login, SELECT, the snapshot
// FETCH, a body literal, the UID STORE and UID EXPUNGE of a QUIT), then check
// what the client saw and what Dovecot kept. model_test.go runs randomized
// concurrent sessions against a model of what must remain.
//
//	p := faults.Listen(t, dovecotAddr)         // closed in t.Cleanup
//	p.Set(faults.Faults{Triggers: []faults.Trigger{
//		{Dir: faults.Upstream, Pattern: "UID EXPUNGE", Action: faults.Reset},
//	}})
//	// point the gateway's backend at p.Addr(), run a session, then:
//	p.Fired() // which triggers fired, so a test knows its fault happened
//
// The proxy is our own (no toxiproxy): a few hundred lines that the tests can
// read, with triggers on byte patterns of the IMAP stream, which a generic
// proxy does not offer.
package faults

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Direction is one half of a proxied connection.
type Direction uint8

const (
	// Upstream is client to server: mailgate's IMAP commands to Dovecot.
	Upstream Direction = iota
	// Downstream is server to client: Dovecot's responses and literals.
	Downstream
)

func (d Direction) String() string {
	if d == Upstream {
		return "upstream"
	}
	return "downstream"
}

// Action is what a trigger does to its connection.
type Action uint8

const (
	// Reset aborts both halves with a TCP RST (SO_LINGER 0), as a crashed
	// backend or a middlebox that drops state would.
	Reset Action = iota + 1
	// Blackhole stops answering: the connection stays open and everything
	// either side sends from then on is read and dropped, as with a hung
	// server or a network partition.
	Blackhole
)

func (a Action) String() string {
	switch a {
	case Reset:
		return "reset"
	case Blackhole:
		return "blackhole"
	}
	return "none"
}

// Trigger fires an Action at a point of one direction's byte stream.
//
// With Pattern empty the point is After bytes from the start of the stream
// (After 0 with Dir Upstream: at once, before the greeting is even
// answered). Otherwise it is After bytes past the end of the first
// occurrence of Pattern: with After 0 the pattern itself passes and nothing
// more, so an upstream IMAP command named by Pattern reaches the server
// incomplete (no CRLF) and is never executed.
//
// With OnReply the matched stream passes on unchanged, and the action fires
// instead on the first bytes the other direction carries afterwards (which
// are dropped): the server executed the command and its answer is lost.
// The other direction's bytes must come after the match, so OnReply suits
// a command sent while nothing else is in flight (the commands of a QUIT).
type Trigger struct {
	Dir     Direction
	Pattern string
	After   int64
	OnReply bool
	Action  Action
}

// Faults are the conditions of one proxied connection. The zero value passes
// everything through untouched.
type Faults struct {
	// Latency delays every chunk, in both directions, by this much.
	Latency time.Duration
	// BytesPerSecond limits each direction's throughput; 0 is unlimited.
	BytesPerSecond int
	// Blackhole makes the backend silent from the start: the client's
	// connect succeeds, nothing is ever answered.
	Blackhole bool
	// Triggers fire at points of the streams; the first that fires decides.
	Triggers []Trigger
}

// Event records a trigger that fired.
type Event struct {
	Conn    int // the connection's number, from 1 in accept order
	Trigger int // index into Faults.Triggers; -1 for Faults.Blackhole
	Action  Action
	At      time.Time
}

// Proxy forwards TCP connections to a target address, applying the Faults
// that were current when each connection was accepted. Each connection costs
// two goroutines (one per direction); Close ends them all and waits.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	faults Faults
	plan   func(conn int) Faults
	seq    int
	links  map[*link]struct{}
	events []Event
	sent   map[int][]byte // per connection number: the upstream bytes passed on, up to maxSent
	closed bool
	fired  chan struct{} // signalled (non-blocking) on every event

	moved [2]atomic.Int64 // bytes forwarded, per Direction, all connections

	wg sync.WaitGroup
}

// Listen starts a proxy on a free port of 127.0.0.1 in front of target and
// closes it in t.Cleanup.
func Listen(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// New starts a proxy listening on addr in front of target. The caller must
// Close it.
func New(addr, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, links: make(map[*link]struct{}), fired: make(chan struct{}, 1)}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Moved is how many bytes the proxy has forwarded in direction dir, over all
// its connections: Downstream counts what the backend sent the gateway.
func (p *Proxy) Moved(dir Direction) int64 { return p.moved[dir].Load() }

// Addr is where clients connect (the gateway's backend address).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Set makes f the conditions of every connection accepted from now on (a
// plan set by Plan is dropped). Connections already open keep theirs.
func (p *Proxy) Set(f Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults, p.plan = f, nil
}

// Plan chooses each new connection's conditions by its number (from 1 in
// accept order), for tests that fault only the n-th backend connection.
func (p *Proxy) Plan(plan func(conn int) Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plan = plan
}

// Accepted is the number of connections accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// Fired returns the triggers that have fired so far, in order.
func (p *Proxy) Fired() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events...)
}

// WaitFired waits until at least n triggers have fired, or d passes, and
// reports whether they did.
func (p *Proxy) WaitFired(n int, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if len(p.Fired()) >= n {
			return true
		}
		select {
		case <-p.fired:
		case <-deadline.C:
			return len(p.Fired()) >= n
		}
	}
}

// maxSent caps what Sent keeps of each connection.
const maxSent = 64 << 10

// Sent returns the upstream bytes (the gateway's commands) that connection
// conn (numbered from 1 in accept order) passed on to the server so far, up
// to the first 64 KiB.
func (p *Proxy) Sent(conn int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]byte(nil), p.sent[conn]...)
}

// Open is the number of proxied connections still open.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// ResetAll aborts every open connection with a RST, as a backend restart
// would.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
	}
}

// Close stops accepting, closes every connection and waits for all the
// proxy's goroutines. It is safe to call more than once.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return
	}
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	p.ln.Close()
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.seq++
		f := p.faults
		if p.plan != nil {
			f = p.plan(p.seq)
		}
		l := &link{p: p, n: p.seq, f: f, client: c.(*net.TCPConn), done: make(chan struct{}),
			matchers: make([]*matcher, len(f.Triggers))}
		for i, tr := range f.Triggers {
			l.matchers[i] = &matcher{tr: tr, left: tr.After}
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go l.run()
	}
}

func (p *Proxy) record(e Event) {
	p.mu.Lock()
	p.events = append(p.events, e)
	p.mu.Unlock()
	select {
	case p.fired <- struct{}{}:
	default:
	}
}

// dialTimeout bounds the proxy's own connect to the target.
const dialTimeout = 5 * time.Second

// link is one proxied connection.
type link struct {
	p        *Proxy
	n        int
	f        Faults
	client   *net.TCPConn
	server   *net.TCPConn // set (under mu) once dialed
	matchers []*matcher

	mu        sync.Mutex
	holed     bool   // black-holed: drop everything
	armed     [2]int // per direction: 1+index of an OnReply trigger armed against it; 0 none
	closeOnce sync.Once
	done      chan struct{} // closed when the link ends
}

func (l *link) run() {
	defer l.p.wg.Done()
	defer func() {
		l.p.mu.Lock()
		delete(l.p.links, l)
		l.p.mu.Unlock()
	}()
	d := net.Dialer{Timeout: dialTimeout}
	sc, err := d.Dial("tcp", l.p.target)
	if err != nil {
		l.client.Close()
		return
	}
	l.mu.Lock()
	l.server = sc.(*net.TCPConn)
	l.mu.Unlock()
	select {
	case <-l.done: // closed while dialing
		sc.Close()
		return
	default:
	}
	if l.f.Blackhole {
		l.fire(-1, Blackhole)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pump(Upstream, l.client, l.server) }()
	go func() { defer wg.Done(); l.pump(Downstream, l.server, l.client) }()
	wg.Wait()
	l.close()
}

// pump copies one direction, applying latency, bandwidth and triggers.
func (l *link) pump(dir Direction, src, dst *net.TCPConn) {
	size := 32 << 10
	if bps := l.f.BytesPerSecond; bps > 0 {
		size = max(1, min(size, bps/20)) // about 20 writes a second
	}
	buf := make([]byte, size)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.pass(dir, buf[:n], dst) {
			return
		}
		if err != nil {
			// A clean end of this half is passed on (the other half may
			// still carry a reply); a black-holed link never says goodbye
			// to the other side, and an error ends the whole link.
			if errors.Is(err, io.EOF) && !l.isHoled() {
				dst.CloseWrite()
				return
			}
			l.close()
			return
		}
	}
}

// pass forwards one chunk read from dir's source, and reports whether the
// pump should go on.
func (l *link) pass(dir Direction, data []byte, dst *net.TCPConn) bool {
	if l.isHoled() {
		return true // read and dropped
	}
	// An OnReply trigger armed against this direction: the answer is lost.
	l.mu.Lock()
	armed := l.armed[dir]
	l.mu.Unlock()
	if armed > 0 {
		return l.fire(armed-1, l.matchers[armed-1].tr.Action)
	}
	cut, which := len(data), -1
	for i, m := range l.matchers {
		if m.tr.Dir != dir {
			continue
		}
		at, ok := m.scan(data)
		switch {
		case !ok:
		case m.tr.OnReply:
			l.mu.Lock()
			if l.armed[1-dir] == 0 {
				l.armed[1-dir] = i + 1
			}
			l.mu.Unlock()
		case which < 0 || at < cut:
			cut, which = at, i
		}
	}
	if l.f.Latency > 0 && !l.sleep(l.f.Latency) {
		return false
	}
	if !l.write(dst, data[:cut]) {
		return false
	}
	l.p.moved[dir].Add(int64(cut))
	if dir == Upstream {
		l.p.mu.Lock()
		if l.p.sent == nil {
			l.p.sent = make(map[int][]byte)
		}
		if s := l.p.sent[l.n]; len(s) < maxSent {
			l.p.sent[l.n] = append(s, data[:min(cut, maxSent-len(s))]...)
		}
		l.p.mu.Unlock()
	}
	if which >= 0 {
		return l.fire(which, l.matchers[which].tr.Action)
	}
	return true
}

// write sends b, paced by the bandwidth limit.
func (l *link) write(dst *net.TCPConn, b []byte) bool {
	bps := l.f.BytesPerSecond
	if bps <= 0 {
		_, err := dst.Write(b)
		return err == nil
	}
	step := max(1, bps/20)
	for len(b) > 0 {
		k := min(step, len(b))
		if _, err := dst.Write(b[:k]); err != nil {
			return false
		}
		b = b[k:]
		if !l.sleep(time.Duration(k) * time.Second / time.Duration(bps)) {
			return false
		}
	}
	return true
}

// fire applies action and reports whether the pump should go on.
func (l *link) fire(trigger int, action Action) bool {
	l.p.record(Event{Conn: l.n, Trigger: trigger, Action: action, At: time.Now()})
	switch action {
	case Blackhole:
		l.mu.Lock()
		l.holed = true
		l.mu.Unlock()
		return true
	default:
		l.reset()
		return false
	}
}

func (l *link) isHoled() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.holed
}

// sleep waits d unless the link ends first; it reports whether it waited.
func (l *link) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.done:
		return false
	}
}

// reset aborts both halves with RST: SO_LINGER 0 makes Close discard unsent
// data and send a reset instead of a FIN.
func (l *link) reset() {
	l.client.SetLinger(0)
	if s := l.serverConn(); s != nil {
		s.SetLinger(0)
	}
	l.close()
}

func (l *link) close() {
	l.closeOnce.Do(func() {
		close(l.done)
		l.client.Close()
		if s := l.serverConn(); s != nil {
			s.Close()
		}
	})
}

func (l *link) serverConn() *net.TCPConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.server
}

// matcher follows one trigger along its direction's stream.
type matcher struct {
	tr      Trigger
	tail    []byte // the last len(Pattern)-1 bytes seen, for matches across reads
	matched bool   // Pattern seen (or empty); counting down left
	left    int64  // bytes still to pass after the match
	done    bool
}

// scan looks at the next chunk of the stream and reports whether the
// trigger's point falls within it, and at which offset (bytes before it
// pass, the rest does not).
func (m *matcher) scan(data []byte) (int, bool) {
	if m.done {
		return 0, false
	}
	start := 0
	if !m.matched {
		if m.tr.Pattern == "" {
			m.matched = true
		} else {
			p := []byte(m.tr.Pattern)
			window := append(append([]byte(nil), m.tail...), data...)
			i := bytes.Index(window, p)
			if i < 0 {
				if k := len(p) - 1; len(window) > k {
					window = window[len(window)-k:]
				}
				m.tail = append(m.tail[:0], window...)
				return 0, false
			}
			m.matched = true
			start = i + len(p) - len(m.tail) // end of the match, in data
		}
	}
	if rest := int64(len(data) - start); m.left > rest {
		m.left -= rest
		return 0, false
	}
	m.done = true
	return start + int(m.left), true
}
