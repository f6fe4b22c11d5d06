//go:build !linux

package imap

import (
	"net"
	"syscall"
)

// rawConn returns nil off Linux: every direction blocks in Read over its
// own buffer.
func rawConn(net.Conn) syscall.RawConn { return nil }

func waitReadable(syscall.RawConn) (int, error) { panic("unreachable") }

func peekQueued(syscall.RawConn) (int, bool, error) { panic("unreachable") }

func pending(syscall.RawConn) bool { panic("unreachable") }

// lot is unavailable off Linux: both directions wait in a goroutine.
type lot struct{}

var parkingLot lot

func (lot) acquire() bool             { return false }
func (lot) release()                  {}
func (lot) forget(*relayer)           {}
func (lot) park(*direction, int) bool { return false }
