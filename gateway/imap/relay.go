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
//     net.Pipe source blocks in Read and holds its buffer meanwhile.
//   - An idle relay parks one goroutine, not two: the client-to-backend
//     direction, finding nothing queued, waits in the process's epoll lot
//     (lot_linux.go) with no goroutine, and readability starts one.
//   - Idle: the connection is closed when no byte moved in either direction
//     for the idle timeout (a direction that finds itself quiet asks the
//     other one to look at its clock; the one that sees both quiet cuts).
//     Detection can take up to twice the timeout; a direction that cannot
//     write for the idle timeout plus writeGrace is cut too.
//   - Half-close: the client's EOF is passed on with CloseWrite and the
//     backend may still answer; the backend's EOF ends the session.
//   - relay returns only after both directions have stopped and both
//     connections are closed: no goroutine or socket outlives it.

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
	// refreshEvery limits deadline updates per direction.
	refreshEvery = time.Second
	// writeGrace keeps write deadlines after read deadlines, so a read
	// timeout is never mistaken for a stalled write.
	writeGrace = 10 * time.Second
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Direction states.
const (
	stActive int32 = iota
	stQuiet        // nothing moved for the idle timeout
	stDone         // finished (EOF passed on)
)

type direction struct {
	src, dst net.Conn
	raw      syscall.RawConn // src's, to wait for readability holding nothing; nil: block in Read
	splice   bool
	lot      bool // finding nothing queued, leave (errPark) rather than wait
	state    atomic.Int32
	poked    atomic.Bool  // the other direction asks us to look at our clock
	inLot    atomic.Bool  // parked in the lot: no goroutine reads
	active   atomic.Int64 // UnixNano of the last bytes moved this way
	n        atomic.Int64
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
	closeOnce sync.Once
	client    net.Conn
	backend   net.Conn
	end       atomic.Pointer[ending]

	// The client-to-backend direction runs in turns when it uses the lot.
	mu       sync.Mutex
	parked   bool          // up waits in the lot; no goroutine runs it
	ending   bool          // down has stopped: up may not park any more
	finished chan struct{} // closed when up has stopped for good
	lotID    uint64        // the lot's name for us; 0 until the first park
	lotArmed bool          // our client socket is in the lot's epoll set
}

// cut closes both connections, recording the first reason.
func (r *relayer) cut(result connlog.Result, err error) {
	r.end.CompareAndSwap(nil, &ending{result, err})
	r.closeOnce.Do(func() {
		r.client.Close()
		r.backend.Close()
	})
}

// relay copies bytes between client and backend until the session ends,
// then closes both. Cancelling ctx ends it at once.
func relay(ctx context.Context, client, backend net.Conn, idle time.Duration) relayStats {
	return relayMode(ctx, client, backend, idle, true)
}

// relayMode is relay; without allowSplice TCP pairs take the pooled-buffer
// path too (tests cover both).
func relayMode(ctx context.Context, client, backend net.Conn, idle time.Duration, allowSplice bool) relayStats {
	r := &relayer{idle: idle, client: client, backend: backend}
	_, tcp1 := client.(*net.TCPConn)
	_, tcp2 := backend.(*net.TCPConn)
	splice := allowSplice && tcp1 && tcp2
	up, down := &r.up, &r.down
	*up = direction{src: client, dst: backend, raw: rawConn(client), splice: splice}
	*down = direction{src: backend, dst: client, raw: rawConn(backend), splice: splice}
	now := time.Now().UnixNano()
	up.active.Store(now)
	down.active.Store(now)
	useLot := up.raw != nil && parkingLot.acquire()
	up.lot = useLot

	stop := context.AfterFunc(ctx, func() { r.cut(connlog.Shutdown, nil) })
	defer stop()

	r.finished = make(chan struct{})
	go r.runUp()
	if err := r.pump(down, up); err != nil {
		r.failed(err, down)
	} else if up.state.Load() == stDone {
		r.cut(connlog.ClientClosed, nil) // the backend's close answered the client's
	} else {
		r.cut(connlog.BackendClosed, nil) // the server ended the session: nothing more to say
	}
	r.mu.Lock()
	r.ending = true
	wasParked := r.parked
	r.parked = false
	r.mu.Unlock()
	if useLot {
		parkingLot.forget(r)
	}
	if wasParked {
		close(r.finished) // up has no goroutine to stop
	}
	<-r.finished
	if useLot {
		parkingLot.release()
	}
	end := r.end.Load()
	return relayStats{up: up.n.Load(), down: down.n.Load(), result: end.result, err: end.err}
}

// runUp runs the client-to-backend direction until it parks in the lot or
// stops for good.
func (r *relayer) runUp() {
	err := r.pump(&r.up, &r.down)
	if errors.Is(err, errPark) {
		if r.park() {
			return // the lot's goroutine calls wake
		}
		r.up.lot = false // wait the ordinary way from now on
		err = r.pump(&r.up, &r.down)
	}
	defer close(r.finished)
	if err != nil {
		r.failed(err, &r.up)
		return
	}
	// The client is done sending (RFC 9051 allows it to await the
	// backend's last replies): pass the EOF on, keep the other way open.
	if cw, ok := r.backend.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		r.cut(connlog.ClientClosed, nil)
	}
}

// park hands the up direction to the lot; false when the relay is ending
// or the socket cannot be armed.
func (r *relayer) park() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ending {
		return false
	}
	ok := false
	if err := r.up.raw.Control(func(fd uintptr) { ok = parkingLot.park(r, int(fd)) }); err != nil || !ok {
		return false
	}
	r.parked = true
	r.up.inLot.Store(true)
	return true
}

// wake is the lot's call: the client socket is readable (or at EOF, or in
// error). A relay that has ended meanwhile is not woken.
func (r *relayer) wake() {
	r.mu.Lock()
	if !r.parked {
		r.mu.Unlock()
		return
	}
	r.parked = false
	r.up.inLot.Store(false)
	r.up.poked.Store(false) // a poke while parked asked a goroutine that was not there
	r.mu.Unlock()
	go r.runUp()
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
	var buf *[]byte
	if d.raw == nil {
		buf = bufPool.Get().(*[]byte)
		defer bufPool.Put(buf)
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
				// the lot never waits in a read: its deadline only carries
				// pokes, and a turn after a long quiet must not time out.)
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
		case d.raw == nil:
			n, err, writeFailed = copyOnce(d.dst, d.src, *buf)
		default:
			var queued int
			if d.lot {
				var empty bool
				if queued, empty, err = peekQueued(d.raw); err == nil && empty {
					return errPark
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
