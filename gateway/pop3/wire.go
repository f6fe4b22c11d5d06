package pop3

// wire.go is the only place that reads commands from and writes responses to
// the client. Handlers never touch bufio or the net.Conn directly.
//
// Invariants kept here:
//   - A command line is at most maxCommandLine octets including CRLF (RFC 2449
//     §4); a longer line is answered -ERR and skipped up to its end without
//     being buffered whole, so a hostile client costs bounded memory.
//   - SASL continuation lines (RFC 5034 §4) have their own, larger cap.
//   - Every read is preceded by a read deadline (the idle timeout, RFC 1939 §3)
//     and every write to the network by a write deadline.
//   - Responses are buffered and flushed once per command, or once per batch of
//     pipelined commands (RFC 2449 §6.6): flushing waits until the read buffer
//     holds no further complete command line.
//   - Multi-line responses are dot-stuffed with CRLF line ends and end with
//     CRLF.CRLF (RFC 1939 §3); the terminating "." is written only by
//     dotWriter.Close, i.e. only after a body was delivered whole.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxCommandLine is RFC 2449 §4's limit for a command line, CRLF included.
	maxCommandLine = 255
	// maxSASLLine caps a base64 SASL response line (RFC 5034 §4: the 255-octet
	// limit does not apply to them). 16 KiB carries any PLAIN or LOGIN response.
	maxSASLLine = 16 << 10

	readBufferSize  = 4 << 10
	writeBufferSize = 16 << 10 // one full TLS record per flush while streaming
	copyBufferSize  = 32 << 10
)

var (
	// errLineTooLong: the client sent a line over the limit. The line has
	// been consumed; the connection is still in sync.
	errLineTooLong = errors.New("line too long")
	// errShutdown: the server is shutting down (Serve's ctx was cancelled).
	errShutdown = errors.New("server shutting down")
)

// command is one parsed command line.
type command struct {
	name string   // keyword, upper-cased (keywords are case-insensitive, RFC 1939 §3)
	args []string // space-separated arguments
	rest string   // everything after the keyword and one SP, verbatim (PASS allows spaces, RFC 1939 §7)
}

// parseCommand splits a line (without its line end) into keyword and
// arguments. RFC 1939 §3 separates them by a single SP; runs of SP are
// accepted too. It allocates at most the line's size.
func parseCommand(line []byte) (command, error) {
	if len(line) == 0 {
		return command{}, syntaxError("empty command")
	}
	kw, rest, _ := bytes.Cut(line, []byte{' '})
	if len(kw) == 0 {
		return command{}, syntaxError("command must start with a keyword")
	}
	cmd := command{name: upperASCII(kw), rest: string(rest)}
	for f := range strings.SplitSeq(cmd.rest, " ") {
		if f != "" {
			cmd.args = append(cmd.args, f)
		}
	}
	return cmd, nil
}

// upperASCII upper-cases ASCII letters only: a keyword is ASCII, and other
// octets must keep their length (strings.ToUpper turns invalid UTF-8 into
// three-octet replacement characters).
func upperASCII(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}

// wire is a client connection's reader and writer.
type wire struct {
	ctx  context.Context // cancelled: reads fail with errShutdown
	raw  net.Conn        // the accepted connection: deadlines are set on it (a *tls.Conn forwards them here anyway)
	conn net.Conn        // raw, or the *tls.Conn over it
	br   *bufio.Reader
	bw   *bufio.Writer // from writers while the session writes; nil while it waits for its client (readLine)
	out  *deadlineWriter

	readTimeout  time.Duration
	writeTimeout time.Duration
	// readBy, when set, is a deadline no read or handshake may pass,
	// whatever readTimeout says: the end of the pre-auth phase.
	readBy time.Time

	line []byte // reused line buffer, at most maxSASLLine
}

func newWire(ctx context.Context, conn net.Conn, readTimeout, writeTimeout time.Duration) *wire {
	w := &wire{
		ctx:          ctx,
		raw:          conn,
		conn:         conn,
		readTimeout:  readTimeout,
		writeTimeout: writeTimeout,
	}
	w.out = &deadlineWriter{w: conn, raw: conn, timeout: writeTimeout}
	w.br = bufio.NewReaderSize(conn, readBufferSize)
	return w
}

// writers holds the write buffers of sessions that wait for their client:
// an idle session holds none (see release).
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufferSize) }}

// writer is the write buffer, taken from writers when the session has none.
func (w *wire) writer() *bufio.Writer {
	if w.bw == nil {
		w.bw = writers.Get().(*bufio.Writer)
		w.bw.Reset(w.out)
	}
	return w.bw
}

// release gives an empty write buffer back to writers; readLine calls it
// once everything is flushed, before it waits for the client.
func (w *wire) release() {
	if w.bw != nil && w.bw.Buffered() == 0 {
		w.bw.Reset(nil)
		writers.Put(w.bw)
		w.bw = nil
	}
}

// interrupt makes a blocked or future read return at once, and bounds every
// write from now on by shutdownWriteTimeout: a body still streaming to a
// slow client when the shutdown grace is over either completes within it or
// is cut without its terminating dot. It is called from another goroutine
// when the session's context is cancelled.
func (w *wire) interrupt() {
	w.out.cut.Store(true)
	w.raw.SetReadDeadline(time.Now())
	w.raw.SetWriteDeadline(time.Now().Add(shutdownWriteTimeout))
}

// readCommand reads and parses the next command, flushing pending responses
// first unless another complete command is already buffered (pipelining).
// errLineTooLong and syntax errors leave the connection usable; any other
// error ends the session.
func (w *wire) readCommand() (command, error) {
	line, err := w.readLine(maxCommandLine)
	if err != nil {
		return command{}, err
	}
	return parseCommand(line)
}

// readSASLLine reads one client response of a SASL exchange (RFC 5034 §4).
// The pending challenge is flushed first.
func (w *wire) readSASLLine() (string, error) {
	line, err := w.readLine(maxSASLLine)
	if err != nil {
		return "", err
	}
	return string(line), nil
}

// readLine returns the next line without its CRLF or bare LF. The result is
// valid until the next read. A line longer than limit octets (line end
// included) is consumed up to its LF and reported as errLineTooLong; only one
// bufio buffer of it is in memory at a time.
func (w *wire) readLine(limit int) ([]byte, error) {
	if !w.hasCompleteLine() {
		if err := w.flush(); err != nil {
			return nil, err
		}
		w.release()
	}
	// Set the deadline, then look at the context: a cancellation that comes
	// after this check moves the deadline into the past (interrupt), one that
	// came before is seen here.
	if err := w.raw.SetReadDeadline(w.deadline(w.readTimeout)); err != nil {
		return nil, err
	}
	if w.ctx.Err() != nil {
		return nil, errShutdown
	}
	w.line = w.line[:0]
	tooLong := false
	for {
		frag, err := w.br.ReadSlice('\n')
		if !tooLong {
			if len(w.line)+len(frag) > limit {
				tooLong = true
				w.line = w.line[:0]
			} else {
				w.line = append(w.line, frag...)
			}
		}
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if w.ctx.Err() != nil && isTimeout(err) {
			return nil, errShutdown
		}
		return nil, err
	}
	if tooLong {
		return nil, errLineTooLong
	}
	line := w.line[:len(w.line)-1] // the LF
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// hasCompleteLine reports whether a whole command line is already buffered,
// so answering it can share one flush with the responses before it.
func (w *wire) hasCompleteLine() bool {
	n := w.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := w.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// buffered reports whether the client sent bytes that have not been read as
// a command yet.
func (w *wire) buffered() bool { return w.br.Buffered() > 0 }

// flush writes the buffered responses under the write deadline.
func (w *wire) flush() error {
	if w.bw == nil {
		return nil
	}
	return w.bw.Flush()
}

// writeOK buffers "+OK text".
func (w *wire) writeOK(text string) {
	w.writer().WriteString("+OK")
	if text != "" {
		w.writer().WriteByte(' ')
		w.writer().WriteString(text)
	}
	w.writer().WriteString("\r\n")
}

// writeErr buffers "-ERR [CODE] text" (RFC 2449 §8 response codes; code may
// be empty).
func (w *wire) writeErr(code, text string) {
	w.writer().WriteString("-ERR ")
	if code != "" {
		w.writer().WriteByte('[')
		w.writer().WriteString(code)
		w.writer().WriteString("] ")
	}
	w.writer().WriteString(text)
	w.writer().WriteString("\r\n")
}

// writeLine buffers one line of a multi-line response that cannot begin
// with "." (scan listings, capability names).
func (w *wire) writeLine(s string) {
	w.writer().WriteString(s)
	w.writer().WriteString("\r\n")
}

// writeEnd buffers the terminator of a multi-line response built with
// writeLine.
func (w *wire) writeEnd() { w.writer().WriteString(".\r\n") }

// writeChallenge buffers a SASL server challenge, "+ " base64 (RFC 5034 §4).
func (w *wire) writeChallenge(b64 string) {
	w.writer().WriteString("+ ")
	w.writer().WriteString(b64)
	w.writer().WriteString("\r\n")
}

// dotWriter starts the body of a multi-line response.
func (w *wire) dotWriter() *dotWriter { return newDotWriter(w.writer()) }

// startTLS upgrades the connection (RFC 2595 §4). The caller has checked that
// nothing is buffered after the STLS line and has buffered the +OK. Every
// pre-TLS buffer is dropped; the handshake runs under its own deadline.
func (w *wire) startTLS(cfg *tls.Config, timeout time.Duration) error {
	if err := w.flush(); err != nil {
		return err
	}
	return w.handshake(tls.Server(w.conn, cfg), timeout)
}

// deadline is now+d, or readBy if that comes first.
func (w *wire) deadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if !w.readBy.IsZero() && w.readBy.Before(t) {
		return w.readBy
	}
	return t
}

// handshake runs a TLS server handshake under timeout and switches reading
// and writing to the TLS connection.
func (w *wire) handshake(tc *tls.Conn, timeout time.Duration) error {
	if err := w.raw.SetDeadline(w.deadline(timeout)); err != nil {
		return err
	}
	if err := tc.HandshakeContext(w.ctx); err != nil {
		return err
	}
	if err := w.raw.SetDeadline(time.Time{}); err != nil {
		return err
	}
	w.conn = tc
	w.out.w = tc
	w.br.Reset(tc)
	if w.bw != nil {
		w.bw.Reset(w.out)
	}
	return nil
}

// bytesOut is the number of octets written to the client (before TLS).
func (w *wire) bytesOut() int64 { return w.out.n }

// deadlineWriter sets the write deadline before each write, so every flush of
// the bufio.Writer (explicit or while streaming a body) is bounded.
type deadlineWriter struct {
	w       io.Writer // conn or the *tls.Conn over it
	raw     net.Conn
	timeout time.Duration
	n       int64
	cut     atomic.Bool // set by interrupt: the deadline no longer moves
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if !d.cut.Load() {
		if err := d.raw.SetWriteDeadline(time.Now().Add(d.timeout)); err != nil {
			return 0, err
		}
	}
	n, err := d.w.Write(p)
	d.n += int64(n)
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dotWriter writes the body of a multi-line response (RFC 1939 §3): line ends
// become CRLF (a bare LF gets its CR; a CR not followed by LF is data), a line
// starting with "." gets another ".", and Close adds a CRLF where the data did
// not end with a line end, then the terminating ".\r\n". Data written through
// it may be split anywhere. An empty body yields just ".\r\n".
type dotWriter struct {
	w   *bufio.Writer
	bol bool // at the beginning of a line
	cr  bool // the last byte written was a CR
}

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w, bol: true} }

// Write stuffs p. It returns len(p) or an error from the underlying writer.
func (d *dotWriter) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		if d.bol && p[0] == '.' {
			if err := d.w.WriteByte('.'); err != nil {
				return done, err
			}
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if _, err := d.w.Write(p); err != nil {
				return done, err
			}
			d.bol = false
			d.cr = p[len(p)-1] == '\r'
			return done + len(p), nil
		}
		hasCR := d.cr
		if i > 0 {
			hasCR = p[i-1] == '\r'
		}
		if _, err := d.w.Write(p[:i]); err != nil {
			return done, err
		}
		if !hasCR {
			d.w.WriteByte('\r')
		}
		if err := d.w.WriteByte('\n'); err != nil {
			return done, err
		}
		d.bol, d.cr = true, false
		done += i + 1
		p = p[i+1:]
	}
	return done, nil
}

// Close ends the body: a final CRLF where the data lacks one, then ".\r\n".
// It must be called only when the whole body was written: a client takes
// everything before the "." as the complete message.
func (d *dotWriter) Close() error {
	if !d.bol {
		d.w.WriteString("\r\n")
		d.bol = true
	}
	_, err := d.w.WriteString(".\r\n")
	return err
}

var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}

// topReader passes a message's header, the blank line that ends it and then
// at most n lines of its body (RFC 1939 §7, TOP), and reports io.EOF after
// that without reading further. A message with fewer body lines, or without
// a blank line, passes whole. Lines end at LF (CRLF or bare LF).
type topReader struct {
	r       io.Reader
	inBody  bool
	left    int  // body lines still to pass
	lineLen int  // octets of the current line so far
	firstCR bool // the current line starts with CR
	done    bool
}

func newTopReader(r io.Reader, n int) *topReader { return &topReader{r: r, left: n} }

func (t *topReader) Read(p []byte) (int, error) {
	if t.done {
		return 0, io.EOF
	}
	if t.inBody && t.left == 0 {
		t.done = true
		return 0, io.EOF
	}
	n, err := t.r.Read(p)
	for i := 0; i < n; i++ {
		c := p[i]
		if c != '\n' {
			if t.lineLen == 0 {
				t.firstCR = c == '\r'
			}
			t.lineLen++
			continue
		}
		blank := t.lineLen == 0 || (t.lineLen == 1 && t.firstCR)
		t.lineLen = 0
		switch {
		case !t.inBody:
			if blank {
				t.inBody = true
			}
		default:
			t.left--
		}
		if t.inBody && t.left == 0 {
			t.done = true
			return i + 1, nil
		}
	}
	return n, err
}
