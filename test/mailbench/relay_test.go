package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// The relay delivers every byte in order, each direction delay late, and
// counts what it delivered.
func TestRelayDelaysAndKeepsOrder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	const delay = 20 * time.Millisecond
	r, err := startRelay(ln.Addr().String(), delay)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// One small round trip: connect (one RTT) plus the echo (one RTT).
	start := time.Now()
	c.Write([]byte("x"))
	one := make([]byte, 1)
	if _, err := io.ReadFull(c, one); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 4*delay {
		t.Errorf("first echo after %v, want at least %v", el, 4*delay)
	}

	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	start = time.Now()
	go func() { c.Write(data); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 2*delay {
		t.Errorf("8 MiB echoed in %v, want at least one RTT %v", el, 2*delay)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs: %d bytes back, want %d", len(got), len(data))
	}
	if up, down := r.up.Load(), r.down.Load(); up != int64(len(data))+1 || down != up {
		t.Errorf("relay counted %d up, %d down; want %d each", up, down, len(data)+1)
	}
}
