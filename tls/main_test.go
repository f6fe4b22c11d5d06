package tls

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Idle keep-alive connections of certmagic's ACME HTTP client; they
		// belong to a transport certmagic keeps to itself, which we cannot
		// reach to close.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		// certmagic keeps one rate limiter per CA directory and account in a
		// package-level map for the life of the process, with no way to stop
		// it ("TODO: stop rate limiter when it is garbage-collected"): one
		// in production, one per Pebble here.
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).loop"),
		// certmagic's FileStorage refreshes a lock file from a goroutine that
		// notices the lock's release only at its next 5 s tick, then ends.
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
	)
}
