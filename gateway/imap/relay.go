package imap

// relay.go is the hot path after login: bytes both ways, untouched.
//
// Invariants:
//   - No per-byte work: the copy is the kernel's splice(2) when both sides
//     are cleartext TCP (io.CopyN between *net.TCPConn), else a Read/Write
//     loop over a pooled buffer. Deadlines are refreshed at most once a
//     second per direction.
//   - Nothing is held while a direction waits: when its source is a socket
//     (syscall.Conn) it waits for readability through the RawConn, and only
//     then takes a pooled buffer, or a splice pipe for exactly the bytes
//     queued (SIOCINQ), and gives it back after the write. A *tls.Conn or
//     net.Pipe source blocks in Read, into a small buffer of its own
//     (smallSize); only a read that fills it takes a pooled one for the
//     reads that follow, until one comes back short.
//   - An idle relay runs no goroutine: each direction whose source is a
//     socket, finding nothing queued, waits in the process's epoll lot
//     (lot_linux.go), and readability starts a goroutine for it. A
//     direction that moved bytes less than linger ago waits in the
//     runtime's poller instead (its goroutine, no buffer), so that a stream
//     in flight does not pay a park and a new goroutine each time it drains
//     the socket. The goroutine that called relay returns once it has
//     nothing to move.
//   - Idle: the connection is closed when no byte moved in either direction
//     for the idle timeout. With every direction in the lot (or stopped) a
//     timer keeps that clock; a direction blocked in Read (TLS, net.Pipe)
//     that finds itself quiet asks the other one to look at its clock (or
//     reads it itself, when the other is in the lot), and the one that sees
//     both quiet cuts. Detection can take up to twice the timeout; a
//     direction that cannot write for the idle timeout plus writeGrace is
//     cut too.
//   - Half-close: the client's EOF is passed on with CloseWrite and the
//     backend may still answer; the backend's EOF ends the session.
//   - done is called once, after both directions have stopped and both
//     connections are closed: no goroutine or socket outlives it, and a cut
//     (shutdown, idle) stops the directions parked in the lot itself.

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mailgate/gateway/internal/connlog"
)

const (
	// spliceChunk is how much one io.CopyN may move before the loop looks at
	// its deadlines again (the kernel's splice moves up to 1 MiB a call).
	spliceChunk = 1 << 20
	// bufSize fits one TLS record (16 KiB of plaintext).
	bufSize = 16 << 10
	// smallSize is what a blocking direction holds while it waits: a
	// command line or a DONE fits, and tls.Conn keeps the rest of a record
	// for the next Read.
	smallSize = 512
	// refreshEvery limits deadline updates per direction.
	refreshEvery = time.Second
	// writeGrace keeps write deadlines after read deadlines, so a read
	// timeout is never mistaken for a stalled write.
	writeGrace = 10 * time.Second
	// parkAfter is how long a direction that moved bytes waits for more in
	// the runtime's poller before it parks in the lot (at most a quarter of
	// the idle timeout). A FETCH in flight finds the socket empty between
	// the backend's writes thousands of times a second; each park would
	// cost a peek, an epoll_ctl, a wake of the lot's thread and a goroutine.
	parkAfter = 200 * time.Millisecond
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Direction states.
const (
	stActive int32 = iota
	stQuiet        // nothing moved for the idle timeout
	stDone         // finished (EOF passed on)
)

type direction struct {
	r        *relayer
	src, dst net.Conn
	raw      syscall.RawConn // src's, to wait for readability holding nothing; nil: block in Read
	splice   bool
	lot      bool // finding nothing queued, leave (errPark) rather than wait
	state    atomic.Int32
	poked    atomic.Bool  // the other direction asks us to look at our clock
	inLot    atomic.Bool  // parked in the lot: no goroutine reads
	active   atomic.Int64 // UnixNano of the last bytes moved this way
	n        atomic.Int64
	parks    atomic.Int32 // times parked in the lot (tests)

	// Under r.mu:
	parked  bool // waits in the lot; no goroutine runs it
	stopped bool // has stopped for good
	// Under the lot's mutex:
	lotID    uint64 // the lot's name for this direction; 0 until the first park
	lotArmed bool   // src is in the lot's epoll set
}

// poke makes d's pending read return at once so that d reports its state.
// The flag survives a deadline refresh racing with the poke.
func (d *direction) poke() {
	d.poked.Store(true)
	d.src.SetReadDeadline(time.Unix(1, 0))
}

type relayStats struct {
	up, down int64 // client to backend, backend to client
	result   connlog.Result
	err      error // the I/O error that ended the session, if one did
}

// ending is why the relay stopped.
type ending struct {
	result connlog.Result
	err    error
}

type relayer struct {
	up, down  direction // one allocation for the relay's state
	idle      time.Duration
	linger    time.Duration // min(parkAfter, idle/4)
	closeOnce sync.Once
	client    net.Conn
	backend   net.Conn
	end       atomic.Pointer[ending]
	useLot    bool
	ctx       context.Context  // until start: cancelling it cuts the relay
	stopCtx   func() bool      // unregisters the shutdown cut
	done      func(relayStats) // called once, when both directions have stopped

	mu     sync.Mutex
	ending bool        // cut: no direction may park any more
	live   int         // directions not yet stopped
	timer  *time.Timer // the idle check while no goroutine runs the relay
}

// cut closes both connections, recording the first reason. A direction
// parked in the lot has no goroutine to see the close: it stops here.
func (r *relayer) cut(result connlog.Result, err error) {
	r.end.CompareAndSwap(nil, &ending{result, err})
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.ending = true
		n := 0
		for _, d := range []*direction{&r.up, &r.down} {
			if d.parked {
				d.parked = false
				d.inLot.Store(false)
				d.stopped = true
				n++
			}
		}
		if r.timer != nil {
			r.timer.Stop()
		}
		r.mu.Unlock()
		if r.useLot {
			parkingLot.forget(r)
		}
		r.client.Close()
		r.backend.Close()
		r.leave(n)
	})
}

// leave counts n directions out; the last one out finishes the relay.
func (r *relayer) leave(n int) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	r.live -= n
	last := r.live == 0
	r.mu.Unlock()
	if !last {
		return
	}
	if r.useLot {
		parkingLot.release()
	}
	r.stopCtx()
	end := r.end.Load()
	r.done(relayStats{up: r.up.n.Load(), down: r.down.n.Load(), result: end.result, err: end.err})
}

// relay copies bytes between client and backend until the session ends,
// closes both and then calls done (once, from whichever goroutine saw the
// end; it must not block). Cancelling ctx ends it at once. relay returns
// when the relay no longer needs the calling goroutine: it has ended, or
// both directions wait, in the lot or in goroutines of their own.
func relay(ctx context.Context, client, backend net.Conn, idle time.Duration, done func(relayStats)) {
	newRelayer(ctx, client, backend, idle, true, done).start()
}

// newRelayer prepares relay's state; without allowSplice TCP pairs take the
// pooled-buffer path too (tests cover both). start runs it.
func newRelayer(ctx context.Context, client, backend net.Conn, idle time.Duration, allowSplice bool, done func(relayStats)) *relayer {
	r := &relayer{idle: idle, linger: min(parkAfter, idle/4), client: client, backend: backend, done: done, live: 2}
	_, tcp1 := client.(*net.TCPConn)
	_, tcp2 := backend.(*net.TCPConn)
	splice := allowSplice && tcp1 && tcp2
	up, down := &r.up, &r.down
	*up = direction{r: r, src: client, dst: backend, raw: rawConn(client), splice: splice}
	*down = direction{r: r, src: backend, dst: client, raw: rawConn(backend), splice: splice}
	now := time.Now().UnixNano()
	up.active.Store(now)
	down.active.Store(now)
	r.useLot = (up.raw != nil || down.raw != nil) && parkingLot.acquire()
	up.lot = r.useLot && up.raw != nil
	down.lot = r.useLot && down.raw != nil
	r.ctx = ctx
	return r
}

// start runs the relay: the client-to-backend direction in a new
// goroutine, the other in the caller's until it parks or stops.
func (r *relayer) start() {
	r.stopCtx = context.AfterFunc(r.ctx, func() { r.cut(connlog.Shutdown, nil) })
	r.ctx = nil
	go r.run(&r.up)
	r.run(&r.down)
}

func (r *relayer) other(d *direction) *direction {
	if d == &r.up {
		return &r.down
	}
	return &r.up
}

// run runs direction d until it parks in the lot or stops for good.
func (r *relayer) run(d *direction) {
	err := r.pump(d, r.other(d))
	if errors.Is(err, errPark) {
		if r.park(d) {
			return // the lot's goroutine calls wake
		}
		d.lot = false // the relay is ending, or epoll refused: wait the ordinary way
		err = r.pump(d, r.other(d))
	}
	switch {
	case err != nil:
		r.failed(err, d)
	case d == &r.down:
		if r.up.state.Load() == stDone {
			r.cut(connlog.ClientClosed, nil) // the backend's close answered the client's
		} else {
			r.cut(connlog.BackendClosed, nil) // the server ended the session: nothing more to say
		}
	default:
		// The client is done sending (RFC 9051 allows it to await the
		// backend's last replies): pass the EOF on, keep the other way open.
		if cw, ok := r.backend.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
			r.cut(connlog.ClientClosed, nil)
		}
	}
	r.mu.Lock()
	d.stopped = true
	if o := r.other(d); o.parked {
		r.armIdle() // the other way waits in the lot: nobody else keeps the clock
	}
	r.mu.Unlock()
	r.leave(1)
}

// park hands d to the lot; false when the relay is ending or the socket
// cannot be armed.
func (r *relayer) park(d *direction) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ending {
		return false
	}
	ok := false
	if err := d.raw.Control(func(fd uintptr) { ok = parkingLot.park(d, int(fd)) }); err != nil || !ok {
		return false
	}
	d.parked = true
	d.inLot.Store(true)
	d.parks.Add(1)
	if o := r.other(d); o.parked || o.stopped {
		r.armIdle()
	}
	return true
}

// armIdle sets the idle check for when no goroutine runs the relay (r.mu
// held): at the idle timeout after the last bytes moved either way.
func (r *relayer) armIdle() {
	last := max(r.up.active.Load(), r.down.active.Load())
	r.armIdleIn(time.Until(time.Unix(0, last).Add(r.idle)))
}

func (r *relayer) armIdleIn(wait time.Duration) {
	if r.timer == nil {
		r.timer = time.AfterFunc(wait, r.idleCheck)
	} else {
		r.timer.Reset(wait)
	}
}

// idleCheck is the timer's: with every direction still waiting in the lot
// (or stopped) and nothing moved for the idle timeout, the relay is cut. A
// direction running again re-arms the check when it parks.
func (r *relayer) idleCheck() {
	r.mu.Lock()
	if r.ending || !(r.up.parked || r.up.stopped) || !(r.down.parked || r.down.stopped) {
		r.mu.Unlock()
		return
	}
	last := max(r.up.active.Load(), r.down.active.Load())
	if time.Since(time.Unix(0, last)) < r.idle {
		r.armIdle()
		r.mu.Unlock()
		return
	}
	for _, d := range []*direction{&r.up, &r.down} {
		if d.parked && pending(d.raw) {
			// Bytes have arrived and the lot is about to hand them on: the
			// connection is not idle, its wake-up is late (a loaded machine).
			r.armIdleIn(r.linger)
			r.mu.Unlock()
			return
		}
	}
	r.mu.Unlock()
	r.cut(connlog.IdleTimeout, nil)
}

// wake is the lot's call: d's socket is readable (or at EOF, or in error).
// A relay that has ended meanwhile is not woken.
func (d *direction) wake() {
	r := d.r
	r.mu.Lock()
	if !d.parked {
		r.mu.Unlock()
		return
	}
	d.parked = false
	d.inLot.Store(false)
	d.poked.Store(false) // a poke while parked asked a goroutine that was not there
	r.mu.Unlock()
	go r.run(d)
}

// failed cuts the relay after pump(d) returned err.
func (r *relayer) failed(err error, d *direction) {
	switch {
	case errors.Is(err, errIdle):
		r.cut(connlog.IdleTimeout, nil)
	case errors.Is(err, errWriteStall) && d.dst == r.backend:
		r.cut(connlog.BackendError, err)
	default: // a broken connection, or a client that stopped reading
		r.cut(connlog.Dropped, err)
	}
}

var (
	errPark       = errors.New("nothing queued: park in the lot")
	errIdle       = errors.New("idle timeout")
	errWriteStall = errors.New("peer not reading")
)

// pump copies d.src to d.dst until EOF (nil), an error, or the idle cut.
func (r *relayer) pump(d, other *direction) error {
	var small []byte
	var big *[]byte // a blocking direction's pooled buffer, while reads fill it
	if d.raw == nil {
		small = make([]byte, smallSize)
		defer func() {
			if big != nil {
				bufPool.Put(big)
			}
		}()
	}
	var (
		active        = time.Unix(0, d.active.Load()) // last time bytes were seen moving this way
		refreshed     time.Time                       // last deadline update
		readDeadline  time.Time
		writeDeadline time.Time
	)
	for {
		if now := time.Now(); now.Sub(refreshed) >= refreshEvery {
			readDeadline = active.Add(r.idle)
			if d.state.Load() == stQuiet || d.lot {
				// Wait for data or the next look. (A direction that parks in
				// the lot waits in a read only for linger, under a deadline
				// of its own: this one only carries pokes, and a turn after
				// a long quiet must not time out.)
				readDeadline = now.Add(r.idle)
			}
			writeDeadline = now.Add(r.idle + writeGrace)
			// Errors here mean a closed conn; the Read or Write says so next.
			d.src.SetReadDeadline(readDeadline)
			d.dst.SetWriteDeadline(writeDeadline)
			if d.poked.Load() {
				d.src.SetReadDeadline(time.Unix(1, 0)) // a poke we just overwrote
			}
			refreshed = now
		}

		var n int64
		var err error
		writeFailed := false
		switch {
		case d.raw == nil && big == nil:
			n, err, writeFailed = copyOnce(d.dst, d.src, small)
			if n == smallSize {
				big = bufPool.Get().(*[]byte) // more is likely queued: read it in large pieces
			}
		case d.raw == nil:
			n, err, writeFailed = copyOnce(d.dst, d.src, *big)
			if n < bufSize {
				bufPool.Put(big) // caught up: wait holding only small
				big = nil
			}
		default:
			var queued int
			if d.lot {
				var empty bool
				if queued, empty, err = peekQueued(d.raw); err == nil && empty {
					if time.Since(active) >= r.linger {
						return errPark
					}
					// Busy a moment ago: more is likely soon. Wait in the
					// runtime's poller until linger is over; the timeout
					// brings us back here, to park.
					d.src.SetReadDeadline(active.Add(r.linger))
					if d.poked.Load() {
						d.src.SetReadDeadline(time.Unix(1, 0)) // a poke we just overwrote
					}
					refreshed = time.Time{} // the next turn puts the usual deadline back
					queued, err = waitReadable(d.raw)
				}
			} else {
				queued, err = waitReadable(d.raw)
			}
			if err != nil {
				break // a deadline (or a poke), or a closed conn
			}
			switch {
			case queued == 0:
				err = io.EOF
			case d.splice:
				n, err = io.CopyN(d.dst, d.src, int64(min(queued, spliceChunk)))
			default:
				b := bufPool.Get().(*[]byte)
				n, err, writeFailed = copyOnce(d.dst, d.src, *b)
				bufPool.Put(b)
			}
		}
		if n > 0 {
			d.n.Add(n)
			active = time.Now()
			d.active.Store(active.UnixNano())
			d.state.CompareAndSwap(stQuiet, stActive)
			d.poked.Store(false) // activity is the answer to a poke
		}
		switch {
		case err == nil:
			continue
		case err == io.EOF && !writeFailed:
			d.state.Store(stDone)
			return nil
		case !isTimeout(err):
			return err
		case writeFailed || !time.Now().Before(writeDeadline):
			return errWriteStall
		}

		// A read timeout: our own deadline, or the other direction asking.
		now := time.Now()
		poked := d.poked.Swap(false)
		refreshed = time.Time{} // re-arm on the next turn
		if now.Sub(active) < r.idle {
			continue
		}
		d.state.Store(stQuiet)
		if other.inLot.Load() {
			// No goroutine to ask: its clock is here.
			if now.Sub(time.Unix(0, other.active.Load())) >= r.idle {
				return errIdle
			}
			continue
		}
		switch other.state.Load() {
		case stDone:
			return errIdle
		case stQuiet:
			if poked {
				// The other side declared itself quiet just now and asked.
				return errIdle
			}
		}
		// Ask the other side to check its own clock (its flag may be stale:
		// a splice reports bytes only when it returns).
		other.poke()
	}
}

// copyOnce moves what one Read returns. writeFailed tells a Write error from
// a Read error.
func copyOnce(dst io.Writer, src io.Reader, buf []byte) (n int64, err error, writeFailed bool) {
	nr, rerr := src.Read(buf)
	if nr > 0 {
		nw, werr := dst.Write(buf[:nr])
		n = int64(nw)
		if werr != nil {
			return n, werr, true
		}
	}
	return n, rerr, false
}
