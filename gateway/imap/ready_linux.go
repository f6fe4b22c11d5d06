package imap

import (
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawConn returns c's RawConn when c is a socket, else nil.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// waitReadable parks until rc's socket has bytes queued, its peer's EOF or
// an error, or its read deadline passes; it holds no buffer meanwhile. It
// returns how many bytes are queued, 0 at EOF, or the socket's error.
func waitReadable(rc syscall.RawConn) (queued int, err error) {
	queued, _, err = peek(rc, true)
	return queued, err
}

// peekQueued is waitReadable without the wait: empty when nothing is queued.
func peekQueued(rc syscall.RawConn) (queued int, empty bool, err error) {
	return peek(rc, false)
}

func peek(rc syscall.RawConn, wait bool) (queued int, empty bool, err error) {
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		// What is queued, first: while bytes flow that is the only call.
		var q int32
		if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ /* SIOCINQ */, uintptr(unsafe.Pointer(&q))); e == 0 && q > 0 {
			queued, empty = int(q), false
			return true
		}
		// Nothing queued: no data yet, the peer's EOF, or an error.
		var b [1]byte
		for {
			// A connected TCP socket reports no source address: no allocation.
			n, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				empty = true
				return !wait // false: wait for the poller
			case e != nil:
				perr = os.NewSyscallError("recvfrom", e)
				return true
			case n == 0:
				return true // EOF
			}
			empty = false
			queued = 1 // arrived since the ioctl: the next turn sees the rest
			return true
		}
	})
	if err == nil {
		err = perr
	}
	return queued, empty, err
}

// pending reports whether rc's socket has something a read would return at
// once: bytes, the peer's EOF or an error. Unlike peek it ignores the read
// deadline (a direction parked in the lot may hold an expired one) and
// never waits.
func pending(rc syscall.RawConn) bool {
	p := false
	rc.Control(func(fd uintptr) {
		var b [1]byte
		for {
			_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if e == syscall.EINTR {
				continue
			}
			p = e != syscall.EAGAIN
			return
		}
	})
	return p
}
