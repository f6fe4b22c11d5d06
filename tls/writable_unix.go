//go:build unix

package tls

import "golang.org/x/sys/unix"

// writable asks the kernel whether this process may create entries in dir
// (access(2) with W_OK|X_OK): a read-only mount answers EROFS even for root.
func writable(dir string) error { return unix.Access(dir, unix.W_OK|unix.X_OK) }
