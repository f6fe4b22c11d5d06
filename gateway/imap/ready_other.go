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
