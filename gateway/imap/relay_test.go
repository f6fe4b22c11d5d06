package imap

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailgate/gateway/internal/connlog"
)

// tcpPair returns two connected loopback TCP conns.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// relayFixture: client <-> [cSide relay bSide] <-> backend.
type relayFixture struct {
	client, backend net.Conn // the test's ends
	done            chan relayStats
	cancel          context.CancelFunc
	r               *relayer
}

func startRelay(t *testing.T, tcp bool, idle time.Duration) *relayFixture {
	t.Helper()
	return startRelayMode(t, tcp, true, idle)
}

// startRelayMode: with tcp and !splice, two TCP pairs on the pooled-buffer
// path (readiness first, then a buffer).
func startRelayMode(t *testing.T, tcp, splice bool, idle time.Duration) *relayFixture {
	t.Helper()
	var client, cSide, backend, bSide net.Conn
	if tcp {
		client, cSide = tcpPair(t)
		backend, bSide = tcpPair(t)
	} else {
		client, cSide = net.Pipe()
		backend, bSide = net.Pipe()
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &relayFixture{client: client, backend: backend, done: make(chan relayStats, 1), cancel: cancel}
	f.r = newRelayer(ctx, cSide, bSide, idle, splice, func(st relayStats) { f.done <- st })
	go f.r.start()
	t.Cleanup(func() {
		cancel()
		client.Close()
		backend.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Error("relay did not return")
		}
	})
	return f
}

func (f *relayFixture) wait(t *testing.T, within time.Duration) relayStats {
	t.Helper()
	select {
	case st := <-f.done:
		f.done <- st // for Cleanup
		return st
	case <-time.After(within):
		t.Fatalf("relay still running after %v", within)
	}
	return relayStats{}
}

// modes runs fn over TCP (splice, or readiness then a pooled buffer) and
// over net.Pipe (a blocking Read into a held buffer, as for TLS).
func modes(t *testing.T, fn func(t *testing.T, f func(t *testing.T, idle time.Duration) *relayFixture, tcp bool)) {
	t.Run("splice", func(t *testing.T) {
		fn(t, func(t *testing.T, idle time.Duration) *relayFixture { return startRelayMode(t, true, true, idle) }, true)
	})
	t.Run("tcp-buffered", func(t *testing.T) {
		fn(t, func(t *testing.T, idle time.Duration) *relayFixture { return startRelayMode(t, true, false, idle) }, true)
	})
	t.Run("pipe", func(t *testing.T) {
		fn(t, func(t *testing.T, idle time.Duration) *relayFixture { return startRelayMode(t, false, false, idle) }, false)
	})
}

func TestRelayCopiesBothWaysAndHalfCloses(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		f := newRelay(t, time.Minute)
		big := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16) // 200 KiB
		go f.backend.Write(big)
		got := make([]byte, len(big))
		f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f.client, got); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("backend->client: %v", err)
		}
		go f.client.Write([]byte("a LOGOUT\r\n"))
		buf := make([]byte, 10)
		f.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f.backend, buf); err != nil || string(buf) != "a LOGOUT\r\n" {
			t.Fatalf("client->backend: %q %v", buf, err)
		}
		if !tcp {
			return // net.Pipe has no half-close
		}
		// The client half-closes: the backend sees EOF and can still answer.
		f.client.(*net.TCPConn).CloseWrite()
		if n, err := f.backend.Read(buf); err != io.EOF {
			t.Fatalf("backend read after client CloseWrite: %d %v", n, err)
		}
		f.backend.Write([]byte("* BYE\r\n"))
		f.backend.Close()
		f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, err := io.ReadAll(f.client)
		if err != nil || string(rest) != "* BYE\r\n" {
			t.Fatalf("client got %q %v", rest, err)
		}
		st := f.wait(t, 5*time.Second)
		if st.up != 10 || st.down != int64(len(big))+7 || st.result != connlog.ClientClosed {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestRelayIdleTimeoutClosesBoth(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		idle := 200 * time.Millisecond
		start := time.Now() // before the relay starts its idle clock
		f := newRelay(t, idle)
		st := f.wait(t, 5*time.Second)
		if d := time.Since(start); d < idle || st.result != connlog.IdleTimeout {
			t.Fatalf("ended after %v with %q", d, st.result)
		}
		f.client.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := f.client.Read(make([]byte, 1)); err == nil {
			t.Fatal("client conn still open")
		}
	})
}

// A client in IDLE sends nothing while the backend pushes updates: the
// connection lives.
func TestRelayOneActiveDirectionKeepsConnection(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		idle := 300 * time.Millisecond
		f := newRelay(t, idle)
		go io.Copy(io.Discard, f.client)
		for i := 0; i < 12; i++ { // 1.2 s, four idle periods
			if _, err := f.backend.Write([]byte("* 1 EXISTS\r\n")); err != nil {
				t.Fatalf("push %d: %v; the relay ended: %+v", i, err, f.wait(t, time.Second))
			}
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case st := <-f.done:
			t.Fatalf("relay ended while the backend was active: %+v", st)
		default:
		}
		// Then silence: cut within about two idle periods.
		f.wait(t, 5*time.Second)
	})
}

func TestRelayShutdown(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		f := newRelay(t, time.Minute)
		f.cancel()
		if st := f.wait(t, 5*time.Second); st.result != connlog.Shutdown {
			t.Fatalf("result %q", st.result)
		}
	})
}

func TestRelayBackendCloseEndsSession(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		f := newRelay(t, time.Minute)
		f.backend.Close()
		if st := f.wait(t, 5*time.Second); st.result != connlog.BackendClosed {
			t.Fatalf("result %q", st.result)
		}
	})
}

func TestRelayClientCloseEndsSession(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		f := newRelay(t, time.Minute)
		f.client.Close()
		if tcp {
			// The EOF is passed on: the backend, like an IMAP server, closes.
			f.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := f.backend.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("backend read %v, want EOF", err)
			}
			f.backend.Close()
		}
		if st := f.wait(t, 5*time.Second); st.result != connlog.ClientClosed {
			t.Fatalf("result %q", st.result)
		}
	})
}

// A client that stops reading while the backend keeps sending is cut after
// the idle timeout plus writeGrace, as dropped.
func TestRelayStalledClientIsDropped(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for writeGrace")
	}
	t.Parallel()
	f := startRelay(t, false, 100*time.Millisecond) // net.Pipe: a write blocks until read
	go func() {
		for {
			if _, err := f.backend.Write([]byte("* 1 EXISTS\r\n")); err != nil {
				return
			}
		}
	}()
	if st := f.wait(t, writeGrace+5*time.Second); st.result != connlog.Dropped || st.err == nil {
		t.Fatalf("result %q, err %v", st.result, st.err)
	}
}

// Both directions at once, in odd-sized writes: every byte arrives, in
// order (the readiness path moves exactly what the socket has queued).
func TestRelayByteExactBothWays(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		f := newRelay(t, time.Minute)
		mk := func(seed byte, n int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = seed + byte(i*7+i/251)
			}
			return b
		}
		up, down := mk(1, 3<<20+17), mk(9, 5<<20+3)
		send := func(c net.Conn, b []byte) {
			for len(b) > 0 {
				n := min(len(b), 1+len(b)%40000)
				if _, err := c.Write(b[:n]); err != nil {
					return
				}
				b = b[n:]
			}
		}
		go send(f.client, up)
		go send(f.backend, down)
		check := func(c net.Conn, want []byte, what string) {
			got := make([]byte, len(want))
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: %v, equal %v", what, err, bytes.Equal(got, want))
			}
		}
		done := make(chan struct{})
		go func() { check(f.backend, up, "client->backend"); close(done) }()
		check(f.client, down, "backend->client")
		<-done
	})
}

// relayFrames reports whether any goroutine runs relay code, and the stacks.
func relayFrames() (bool, string) {
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	busy := strings.Contains(stacks, "imap.waitReadable") || strings.Contains(stacks, "imap.copyOnce") ||
		strings.Contains(stacks, "poll.Splice") || strings.Contains(stacks, "imap.(*relayer).run") ||
		strings.Contains(stacks, "imap.(*relayer).start")
	return busy, stacks
}

// An idle relay between sockets holds neither a buffer nor a splice pipe
// nor a goroutine: both directions wait in the lot.
func TestRelayIdleHoldsNoBuffer(t *testing.T) {
	for _, splice := range []bool{true, false} {
		f := startRelayMode(t, true, splice, time.Minute)
		f.client.Write([]byte("a NOOP\r\n")) // one round of traffic each way first
		io.ReadFull(f.backend, make([]byte, 8))
		f.backend.Write([]byte("a OK\r\n"))
		io.ReadFull(f.client, make([]byte, 6))
		deadline := time.Now().Add(5 * time.Second)
		for {
			busy, stacks := relayFrames()
			if !busy {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("splice %v: a goroutine still runs the idle relay:\n%s", splice, stacks)
			}
			time.Sleep(10 * time.Millisecond)
		}
		f.cancel()
		f.wait(t, 5*time.Second)
	}
}

// Many idle relays cost no goroutine each: only the lot's one runs.
func TestRelayIdleRelaysRunNoGoroutines(t *testing.T) {
	const n = 50
	before := runtime.NumGoroutine()
	fs := make([]*relayFixture, n)
	for i := range fs {
		fs[i] = startRelayMode(t, true, true, time.Minute)
	}
	for _, f := range fs { // traffic both ways, then quiet
		f.client.Write([]byte("a IDLE\r\n"))
		io.ReadFull(f.backend, make([]byte, 8))
		f.backend.Write([]byte("+ idling\r\n"))
		io.ReadFull(f.client, make([]byte, 10))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// The lot's goroutine, and slack for the runtime's own.
		if extra := runtime.NumGoroutine() - before; extra <= 3 {
			break
		}
		if time.Now().After(deadline) {
			_, stacks := relayFrames()
			t.Fatalf("%d idle relays run %d goroutines:\n%s", n, runtime.NumGoroutine()-before, stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Every one of them still relays, both ways.
	for i, f := range fs {
		f.client.Write([]byte("DONE\r\n"))
		f.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f.backend, make([]byte, 6)); err != nil {
			t.Fatalf("relay %d, client->backend after idle: %v", i, err)
		}
		f.backend.Write([]byte("a OK\r\n"))
		f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f.client, make([]byte, 6)); err != nil {
			t.Fatalf("relay %d, backend->client after idle: %v", i, err)
		}
	}
}

// The client half-closes and the backend says nothing more: with both
// directions done or in the lot, the idle timer still ends the session.
func TestRelayIdleAfterHalfClose(t *testing.T) {
	idle := 200 * time.Millisecond
	f := startRelay(t, true, idle)
	f.client.(*net.TCPConn).CloseWrite()
	f.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := f.backend.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("backend read %v, want EOF", err)
	}
	start := time.Now()
	if st := f.wait(t, 5*time.Second); st.result != connlog.IdleTimeout {
		t.Fatalf("result %q after %v", st.result, time.Since(start))
	}
}

// A relay whose directions wait in the lot still ends on shutdown,
// and the lot's goroutine stops with the last relay.
func TestRelayShutdownWhileParked(t *testing.T) {
	f := startRelayMode(t, true, true, time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if strings.Contains(stacks, "imap.(*lot).serve") && !strings.Contains(stacks, "imap.(*relayer).run") &&
			!strings.Contains(stacks, "imap.(*relayer).start") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the directions never parked:\n%s", stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.cancel()
	if st := f.wait(t, 5*time.Second); st.result != connlog.Shutdown {
		t.Fatalf("result %q", st.result)
	}
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "imap.(*lot).serve") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lot's goroutine outlived the last relay:\n%s", stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A client quiet for longer than the idle timeout while the backend pushes
// (IDLE), then sending DONE: its bytes pass and the session lives on.
func TestRelayClientSpeaksAfterLongQuiet(t *testing.T) {
	modes(t, func(t *testing.T, newRelay func(*testing.T, time.Duration) *relayFixture, tcp bool) {
		idle := 200 * time.Millisecond
		f := newRelay(t, idle)
		go io.Copy(io.Discard, f.client)
		for range 8 { // 0.4 s: two idle periods of client silence
			if _, err := f.backend.Write([]byte("* 1 EXISTS\r\n")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := f.client.Write([]byte("DONE\r\n")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 6)
		f.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f.backend, got); err != nil || string(got) != "DONE\r\n" {
			t.Fatalf("backend got %q %v", got, err)
		}
		select {
		case st := <-f.done:
			t.Fatalf("relay ended: %+v", st)
		default:
		}
	})
}

// A stream with short gaps (a FETCH the backend writes in pieces) does not
// park in the lot each time it drains the socket: the direction waits in
// the runtime's poller for linger first, and parks once the stream stops.
func TestRelayStreamDoesNotParkBetweenChunks(t *testing.T) {
	f := startRelay(t, true, time.Minute)
	go io.Copy(io.Discard, f.client)
	chunk := bytes.Repeat([]byte("x"), 1000)
	for range 40 { // gaps of 5 ms, far below linger (200 ms)
		if _, err := f.backend.Write(chunk); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := f.r.down.parks.Load(); n > 1 {
		t.Fatalf("the backend-to-client direction parked %d times during one stream", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.r.down.parks.Load() == 0 || f.r.down.inLot.Load() == false {
		if time.Now().After(deadline) {
			t.Fatal("the direction did not park after the stream stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pending sees queued bytes and the peer's EOF without the poller, even on
// a socket whose read deadline has passed (as a parked direction's may).
func TestPendingIgnoresDeadlines(t *testing.T) {
	a, b := tcpPair(t)
	rc := rawConn(b)
	b.SetReadDeadline(time.Unix(1, 0))
	if pending(rc) {
		t.Fatal("pending with nothing sent")
	}
	a.Write([]byte("x"))
	deadline := time.Now().Add(5 * time.Second)
	for !pending(rc) {
		if time.Now().After(deadline) {
			t.Fatal("a queued byte is not pending")
		}
		time.Sleep(time.Millisecond)
	}
	b.SetReadDeadline(time.Time{})
	b.Read(make([]byte, 1))
	if pending(rc) {
		t.Fatal("pending after the byte was read")
	}
	a.Close()
	for !pending(rc) {
		if time.Now().After(deadline) {
			t.Fatal("the peer's EOF is not pending")
		}
		time.Sleep(time.Millisecond)
	}
}
