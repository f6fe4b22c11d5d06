package imap

// lot_linux.go is where quiet relay directions wait without a goroutine:
// one epoll instance for the process, served by one goroutine while any
// relay runs. A direction that finds nothing queued arms its source socket
// there (EPOLLONESHOT) and its goroutine exits; readability, the peer's EOF
// or an error starts a new one. An idle relay with both directions here
// runs no goroutine at all (its idle timeout is a timer, relay.go). The
// socket stays the Go runtime's (its own poller and deadlines work as
// before); the kernel drops the registration when the socket is closed, and
// the relay forgets its entries when it is cut, so nothing of a finished
// relay stays here.

import (
	"sync"
	"syscall"
	"unsafe"
)

// An epoll_event's 64-bit data is syscall.EpollEvent's Fd and Pad together
// on every Linux port (at offset 4 where the kernel packs the struct, as on
// amd64; at 8 after padding, as on arm64): the lot keeps a direction's id
// there.
type lot struct {
	mu      sync.Mutex
	running bool
	epfd    int
	evfd    int // wakes the goroutine to see whether it should stop
	users   int // relays that may park here
	next    uint64
	waiting map[uint64]*direction
}

var parkingLot lot

// acquire counts a relay in, starting the lot's goroutine if needed; false
// means the lot is unavailable and the relay waits the ordinary way.
func (l *lot) acquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return false
		}
		evfd, _, e := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
		if e != 0 {
			syscall.Close(epfd)
			return false
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
		*(*uint64)(unsafe.Pointer(&ev.Fd)) = 0 // id 0: the eventfd
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, int(evfd), &ev); err != nil {
			syscall.Close(epfd)
			syscall.Close(int(evfd))
			return false
		}
		l.epfd, l.evfd, l.running = epfd, int(evfd), true
		if l.waiting == nil {
			l.waiting = map[uint64]*direction{}
		}
		go l.serve(epfd, int(evfd))
	}
	l.users++
	return true
}

// release counts a relay out; the last one stops the goroutine.
func (l *lot) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.users--
	if l.users == 0 {
		one := uint64(1)
		syscall.Write(l.evfd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
}

// park arms fd, d's source socket, for d (d.r.mu held; d.lotID assigned at
// its first park). It returns false when the socket cannot be armed.
func (l *lot) park(d *direction, fd int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d.lotID == 0 {
		l.next++
		d.lotID = l.next
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	*(*uint64)(unsafe.Pointer(&ev.Fd)) = d.lotID
	op := syscall.EPOLL_CTL_MOD
	if !d.lotArmed {
		op = syscall.EPOLL_CTL_ADD
	}
	if err := syscall.EpollCtl(l.epfd, op, fd, &ev); err != nil {
		return false
	}
	d.lotArmed = true
	l.waiting[d.lotID] = d
	return true
}

// forget drops the entries of r's directions (their sockets are closed or
// about to be).
func (l *lot) forget(r *relayer) {
	l.mu.Lock()
	for _, d := range []*direction{&r.up, &r.down} {
		if d.lotID != 0 {
			delete(l.waiting, d.lotID)
		}
	}
	l.mu.Unlock()
}

func (l *lot) serve(epfd, evfd int) {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			panic("imap: epoll_wait: " + err.Error()) // EBADF, EFAULT, EINVAL: a bug here
		}
		for _, ev := range events[:n] {
			id := *(*uint64)(unsafe.Pointer(&ev.Fd))
			if id == 0 {
				var b [8]byte
				syscall.Read(evfd, b[:])
				l.mu.Lock()
				if l.users == 0 {
					l.running = false
					syscall.Close(epfd)
					syscall.Close(evfd)
					l.mu.Unlock()
					return
				}
				l.mu.Unlock()
				continue
			}
			l.mu.Lock()
			d := l.waiting[id]
			delete(l.waiting, id)
			l.mu.Unlock()
			if d != nil {
				d.wake()
			}
		}
	}
}
