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
