package pop3

// Fuzz targets. Their seed corpora live in testdata/fuzz, so a plain
// `go test` runs them; `go test -fuzz=FuzzSession ./gateway/pop3` explores.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// FuzzReadCommand: the command reader never panics, never returns a line
// over the limit, keeps its buffer bounded and consumes its input.
func FuzzReadCommand(f *testing.F) {
	f.Add([]byte("USER alice\r\nPASS x y\r\nSTAT\nLIST 1\r\n"))
	f.Add([]byte(strings.Repeat("A", 300) + "\r\nNOOP\r\n"))
	f.Add([]byte("\r\n\n \r\nTOP 1 2\r"))
	f.Fuzz(func(t *testing.T, data []byte) {
		w, _ := newMemWire(string(data))
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatal("more commands than input lines")
			}
			cmd, err := w.readCommand()
			if err == io.EOF {
				return
			}
			var se syntaxError
			switch {
			case errors.Is(err, errLineTooLong), errors.As(err, &se):
				continue
			case err != nil:
				t.Fatalf("unexpected error %v", err)
			}
			if cmd.name == "" || len(cmd.name)+len(cmd.rest) > maxCommandLine {
				t.Fatalf("bad command %+v", cmd)
			}
			if strings.ContainsAny(cmd.name, "abcdefghijklmnopqrstuvwxyz \n") {
				t.Fatalf("keyword %q", cmd.name)
			}
			for _, a := range cmd.args {
				if a == "" || strings.ContainsAny(a, " \n") {
					t.Fatalf("argument %q", a)
				}
			}
			if cap(w.line) > maxSASLLine+readBufferSize {
				t.Fatalf("line buffer grew to %d", cap(w.line))
			}
		}
	})
}

// FuzzDotStuff: stuffing then unstuffing gives the CRLF-normalised input
// with a final CRLF, whatever the write boundaries.
func FuzzDotStuff(f *testing.F) {
	f.Add([]byte(".\r\n..\n.a\rb\r\r\n"), uint8(1))
	f.Add([]byte("Subject: x\r\n\r\nbody"), uint8(7))
	f.Add([]byte(""), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		dw := newDotWriter(bw)
		size := int(chunk) + 1
		for p := data; len(p) > 0; {
			n := min(size, len(p))
			if _, err := dw.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		dw.Close()
		bw.Flush()
		got, err := unstuff(out.Bytes())
		if err != nil {
			t.Fatalf("%v in %q", err, out.Bytes())
		}
		if want := wireForm(string(data)); string(got) != want {
			t.Fatalf("round trip of %q: got %q, want %q", data, got, want)
		}
	})
}

// FuzzSession runs a whole session over net.Pipe with the input as the
// client's bytes, like mox's imapserver/fuzz_test.go: the server must not
// panic, must end, and must release the maildrop; only a QUIT commits.
func FuzzSession(f *testing.F) {
	f.Add([]byte("CAPA\r\nUSER " + testUser + "\r\nPASS " + testPass + "\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 2\r\nTOP 3 1\r\nDELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n"))
	f.Add([]byte("AUTH PLAIN\r\nAGFsaWNlQGV4YW1wbGUub3JnAHMzY3IzdC1QYTU1d29yZA==\r\nLIST 9\r\nTOP 1 0\r\nNOOP\r\n"))
	f.Add([]byte("AUTH LOGIN\r\nYWxpY2VAZXhhbXBsZS5vcmc=\r\n*\r\nSTLS\r\n" + strings.Repeat("X", 400) + "\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newFakeBackend()
		srv := NewServer(Config{
			Listener:           "fuzz",
			Backend:            b,
			AllowPlaintextAuth: true,
			AuthFailureDelay:   -1,
			IdleTimeout:        200 * time.Millisecond,
			Logger:             zap.NewNop(),
		})
		server, cl := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(context.Background(), server)
		}()
		go io.Copy(io.Discard, cl) // the client reads everything
		cl.SetWriteDeadline(time.Now().Add(time.Second))
		cl.Write(data)
		cl.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("session did not end")
		}
		commits, closes := b.counts()
		if len(commits) > 1 || closes > 1 {
			t.Fatalf("commits %v closes %d", commits, closes)
		}
		if len(commits) == 1 && !bytes.Contains(bytes.ToUpper(data), []byte("QUIT")) {
			t.Fatalf("committed %v without a QUIT", commits)
		}
	})
}
