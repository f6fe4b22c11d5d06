package pop3

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/zap"
)

// memConn is a net.Conn reading from a fixed input, for parser tests.
type memConn struct {
	io.Reader
	out bytes.Buffer
}

func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

func newMemWire(input string) (*wire, *memConn) {
	c := &memConn{Reader: strings.NewReader(input)}
	return newWire(context.Background(), c, time.Minute, time.Minute), c
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line string
		want command
		err  bool
	}{
		{"STAT", command{name: "STAT"}, false},
		{"list 1", command{name: "LIST", args: []string{"1"}, rest: "1"}, false},
		{"Top  1   5 ", command{name: "TOP", args: []string{"1", "5"}, rest: " 1   5 "}, false},
		{"PASS a b  c", command{name: "PASS", args: []string{"a", "b", "c"}, rest: "a b  c"}, false},
		{"", command{}, true},
		{" STAT", command{}, true},
	}
	for _, tt := range tests {
		got, err := parseCommand([]byte(tt.line))
		if (err != nil) != tt.err {
			t.Fatalf("%q: err %v", tt.line, err)
		}
		if !tt.err && !reflect.DeepEqual(got, tt.want) {
			t.Fatalf("%q: got %+v, want %+v", tt.line, got, tt.want)
		}
	}
}

func TestReadCommandLimits(t *testing.T) {
	ok254 := "USER " + strings.Repeat("a", 255-7)
	in := ok254 + "\r\n" + // 255 octets with CRLF: accepted
		ok254 + "a\r\n" + // 256: too long
		ok254 + "\n" + // 254 with bare LF: accepted
		strings.Repeat("x", 100000) + "\r\n" + // far too long, skipped whole
		"noop\r\n" +
		"half"
	w, _ := newMemWire(in)
	var got []string
	for {
		cmd, err := w.readCommand()
		if err == io.EOF {
			break
		}
		switch {
		case errors.Is(err, errLineTooLong):
			got = append(got, "too long")
		case err != nil:
			t.Fatalf("unexpected error %v", err)
		default:
			got = append(got, cmd.name+" "+cmd.rest[:min(3, len(cmd.rest))])
		}
		if cap(w.line) > maxSASLLine+readBufferSize {
			t.Fatalf("line buffer grew to %d", cap(w.line))
		}
	}
	want := []string{"USER aaa", "too long", "USER aaa", "too long", "NOOP "}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestWriteResponses(t *testing.T) {
	w, c := newMemWire("")
	w.writeOK("")
	w.writeOK("2 320")
	w.writeErr("", "no such message")
	w.writeErr(CodeInUse, "locked")
	w.writeChallenge("")
	w.writeLine("1 120")
	w.writeEnd()
	if c.out.Len() != 0 {
		t.Fatal("written before flush")
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	want := "+OK\r\n+OK 2 320\r\n-ERR no such message\r\n-ERR [IN-USE] locked\r\n+ \r\n1 120\r\n.\r\n"
	if got := c.out.String(); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if w.bytesOut() != int64(len(want)) {
		t.Fatalf("bytesOut %d, want %d", w.bytesOut(), len(want))
	}
}

func TestDotWriter(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ".\r\n"},
		{"a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"a\nb\n", "a\r\nb\r\n.\r\n"},
		{"a\r\nb", "a\r\nb\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{".a\r\n..b\r\nc.\r\n.", "..a\r\n...b\r\nc.\r\n..\r\n.\r\n"},
		{"\n\n", "\r\n\r\n.\r\n"},
		{"a\rb\r\n", "a\rb\r\n.\r\n"},
		{"end\r", "end\r\r\n.\r\n"},
		{"x\r\n.\n.", "x\r\n..\r\n..\r\n.\r\n"},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 2, 3, 1 << 20} {
			var out bytes.Buffer
			bw := bufio.NewWriter(&out)
			dw := newDotWriter(bw)
			for in := tt.in; in != ""; {
				n := min(chunk, len(in))
				if k, err := dw.Write([]byte(in[:n])); k != n || err != nil {
					t.Fatalf("Write = %d, %v", k, err)
				}
				in = in[n:]
			}
			dw.Close()
			bw.Flush()
			if out.String() != tt.want {
				t.Fatalf("%q in chunks of %d: got %q, want %q", tt.in, chunk, out.String(), tt.want)
			}
		}
	}
}

func TestTopReaderStopsReading(t *testing.T) {
	src := &countingReader{r: strings.NewReader("H: 1\r\n\r\nb1\r\nb2\r\n" + strings.Repeat("more\r\n", 100000))}
	got, err := io.ReadAll(newTopReader(iotest.OneByteReader(src), 2))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "H: 1\r\n\r\nb1\r\nb2\r\n" {
		t.Fatalf("got %q", got)
	}
	if src.n > 100 {
		t.Fatalf("read %d octets of the source, want it to stop at the cut", src.n)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestReplyCodes(t *testing.T) {
	if code, text, _ := reply(syntaxError("bad")); code != "" || text != "bad" {
		t.Fatalf("syntax error: %q %q", code, text)
	}
	if code, text, logged := reply(errors.New("db at 10.0.0.1 exploded")); code != CodeSysTemp || text != textTempFailure || !logged {
		t.Fatalf("unexpected error: %q %q %v", code, text, logged)
	}
}

// BenchmarkRetrWrite measures the dot-stuffing writer on a 1 MiB message of
// 76-character lines, a tenth of them starting with ".".
func BenchmarkRetrWrite(b *testing.B) {
	var msg bytes.Buffer
	for i := 0; msg.Len() < 1<<20; i++ {
		if i%10 == 0 {
			msg.WriteByte('.')
		}
		msg.WriteString(strings.Repeat("x", 74))
		msg.WriteString("\r\n")
	}
	data := msg.Bytes()
	bw := bufio.NewWriterSize(io.Discard, writeBufferSize)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		dw := newDotWriter(bw)
		if _, err := dw.Write(data); err != nil {
			b.Fatal(err)
		}
		dw.Close()
		bw.Flush()
	}
}

// Fuzz targets. Their seed corpora live in testdata/fuzz, so a plain
// `go test` runs them; `go test -fuzz=FuzzSession ./gateway/pop3` explores.

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
