// Package loopback runs the small TCP servers tests put in front of or in
// place of a real one (a silent backend, a proxy that stalls, a front under
// test) on 127.0.0.1, and cleans them up when the test ends.
package loopback

import (
	"net"
	"sync"
	"testing"
)

// Serve listens on 127.0.0.1:0 and calls handle for every connection, each
// in a goroutine of its own, until the test ends. A connection stays open
// after handle returns, until handle closed it or the test ends. At the end
// Serve closes the listener and every accepted connection, then waits for
// the handlers to return. It returns the listener's address.
func Serve(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		handlers sync.WaitGroup
		mu       sync.Mutex
		conns    []net.Conn
		accepted = make(chan struct{})
	)
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			handlers.Add(1)
			go func() { defer handlers.Done(); handle(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-accepted // no connection is added after this
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		handlers.Wait()
	})
	return ln.Addr().String()
}
