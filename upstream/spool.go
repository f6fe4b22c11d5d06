package upstream

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
)

// body is one fetched message: in memory, or spooled to a temporary file so
// that a large message costs disk rather than memory while a slow POP3 client
// reads it, and the backend connection is free again as soon as the literal
// has arrived.
//
// A body in memory is immutable and may be shared (with the cache, or by
// several readers). A body in a file has exactly one owner, which must call
// open().Close() or discard().
type body struct {
	data []byte
	file *os.File
	path string // set only if the file could not be unlinked when created
	size int64

	once sync.Once
}

// spoolLiteral reads a FETCH literal into a body: in memory when it is at
// most memMax bytes, else into a temporary file in dir ("" = os.TempDir).
// The file is unlinked as soon as it is created (on Unix), so nothing is left
// behind even if the process dies.
func spoolLiteral(lit io.Reader, size, memMax int64, dir string) (*body, error) {
	if size <= memMax {
		buf := make([]byte, size)
		if _, err := io.ReadFull(lit, buf); err != nil {
			return nil, fmt.Errorf("reading body: %w", err)
		}
		return &body{data: buf, size: size}, nil
	}
	f, err := os.CreateTemp(dir, "mailgate-spool-*")
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	b := &body{file: f, size: size}
	if err := os.Remove(f.Name()); err != nil {
		b.path = f.Name() // e.g. Windows: removed on discard instead
	}
	n, err := io.Copy(f, io.LimitReader(lit, size))
	if err == nil && n != size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.discard()
		return nil, fmt.Errorf("spooling body: %w", err)
	}
	return b, nil
}

// memBody wraps cached bytes.
func memBody(data []byte) *body {
	return &body{data: data, size: int64(len(data))}
}

// shareable reports whether several readers may open the body.
func (b *body) shareable() bool { return b.file == nil }

// open returns a reader over the whole body. For a file, closing the reader
// removes the file: open it once.
func (b *body) open() io.ReadCloser {
	if b.file == nil {
		return io.NopCloser(bytes.NewReader(b.data))
	}
	return &spoolReader{SectionReader: io.NewSectionReader(b.file, 0, b.size), b: b}
}

// discard releases the file, if any. It may be called more than once.
func (b *body) discard() {
	if b.file == nil {
		return
	}
	b.once.Do(func() {
		b.file.Close()
		if b.path != "" {
			os.Remove(b.path)
		}
	})
}

type spoolReader struct {
	*io.SectionReader
	b *body
}

func (r *spoolReader) Close() error {
	r.b.discard()
	return nil
}
