// Package syncbuf is a bytes.Buffer that many goroutines may write to at
// once while a test reads it: the output of a child process (exec copies
// stdout and stderr from goroutines of its own) or of a zap logger.
//
//	out := &syncbuf.Buffer{}
//	cmd.Stdout, cmd.Stderr = out, out
//	...
//	t.Logf("output:\n%s", out)
//
// It is for tests and test helpers only; product code never imports it.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is safe for concurrent use. The zero value is empty and ready.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Sync does nothing: it makes a Buffer a zapcore.WriteSyncer.
func (b *Buffer) Sync() error { return nil }

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
