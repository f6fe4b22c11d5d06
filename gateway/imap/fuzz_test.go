package imap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

var fuzzSeeds = []string{
	"a1 CAPABILITY\r\n",
	"a LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
	`a LOGIN "al\"ice" "p\\w"` + "\r\n",
	"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
	"a AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n",
	"a AUTHENTICATE PLAIN\r\n*\r\n",
	`a ID ("name" "x" "version" NIL)` + "\r\n",
	"a STARTTLS\r\nb LOGIN x y\r\n",
	"a LOGIN {9000}\r\n",
	"a LOGIN {4+}\r\n\x00\xff\r\n x\r\n",
	"\r\n\n* NOOP\r\n+ x\r\n",
}

// FuzzParseCommand: the pre-auth reader never panics, and what it returns
// stays within the size caps.
func FuzzParseCommand(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rw := &pipeRW{in: strings.NewReader(string(in))}
		w := newWire(rw)
		for i := 0; i < 100; i++ {
			cmd, err := w.readCommand()
			var se *syntaxError
			if errors.As(err, &se) {
				if se.tag != "" && !validTag(se.tag) {
					t.Fatalf("invalid tag %q in error", se.tag)
				}
				continue
			}
			if err != nil {
				return
			}
			if !validTag(cmd.tag) || cmd.name == "" {
				t.Fatalf("bad command %+v", cmd)
			}
			size := 0
			for _, a := range cmd.args {
				size += len(a.val)
			}
			if size > maxCommand {
				t.Fatalf("command of %d octets passed the %d cap", size, maxCommand)
			}
		}
	})
}

// fuzzBackend answers logins by user name: "ok" gets a backend that closes
// at once, "down" is unavailable, anyone else fails.
type fuzzBackend struct{}

func (fuzzBackend) Connect(ctx context.Context, l Login) (Upstream, error) {
	switch l.User {
	case "ok":
		ours, theirs := net.Pipe()
		theirs.Close()
		return Upstream{Conn: ours, Caps: []string{"IMAP4rev1"}, Name: "fuzz"}, nil
	case "down":
		return Upstream{}, fmt.Errorf("%w: down", ErrUnavailable)
	}
	return Upstream{}, fmt.Errorf("%w: no", ErrAuthFailed)
}

// FuzzPreauthSession runs whole sessions over net.Pipe with short deadlines
// (as mox's imapserver fuzz test does): no panic, and Serve always returns.
func FuzzPreauthSession(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("a LOGIN ok x\r\nb SELECT INBOX\r\n"))
	f.Add([]byte("a LOGIN down x\r\na LOGOUT\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		srv := NewServer(Config{
			Backend:            fuzzBackend{},
			AllowPlaintextAuth: true,
			AuthFailureDelay:   -1,
			PreauthTimeout:     200 * time.Millisecond,
			IdleTimeout:        200 * time.Millisecond,
			Logger:             zap.NewNop(),
		})
		srvConn, cliConn := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(context.Background(), srvConn)
		}()
		go io.Copy(io.Discard, cliConn)
		cliConn.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		cliConn.Write(in)
		cliConn.Close() // EOF after the input; the session must wind down
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Fatal("Serve did not return")
		}
	})
}
