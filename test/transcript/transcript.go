// Package transcript is the line-level client the POP3 and IMAP tests talk
// to servers with: send a line, expect a reply, read a POP3 multi-line
// response or an IMAP command's responses up to its tagged status, and check
// that the server hangs up. Every read and write runs under a deadline, and
// every failure ends the test (t.Helper, t.Fatalf), so a transcript reads
// like the RFC's examples:
//
//	c := transcript.Dial(t, addr)
//	c.Expect("+OK")                       // the greeting
//	c.Command("USER alice", "+OK")
//	c.Command("PASS secret", "+OK")
//	c.Command("LIST", "+OK")
//	sizes := c.Lines()                    // up to ".", unstuffed
//	c.Command("QUIT", "+OK")
//	c.ExpectClosed()
//
//	c := transcript.Dial(t, addr)
//	c.Expect("* OK")
//	untagged, status := c.Tagged("a1", "LOGIN alice secret")
//
// A Conn belongs to the test's goroutine (t.Fatalf must be called there).
// It is for tests only; product code never imports it.
package transcript

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DefaultTimeout bounds each read and write unless Conn.Timeout says
// otherwise.
const DefaultTimeout = 5 * time.Second

// Conn is one side of a line-oriented connection under test.
type Conn struct {
	// Timeout bounds each read and each write; zero means DefaultTimeout.
	Timeout time.Duration

	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// New wraps conn; the connection is closed when the test ends.
func New(t testing.TB, conn net.Conn) *Conn {
	t.Cleanup(func() { conn.Close() })
	return &Conn{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// Dial connects to addr over TCP and wraps the connection.
func Dial(t testing.TB, addr string) *Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, DefaultTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return New(t, conn)
}

// NetConn is the connection underneath (after StartTLS, the TLS one).
func (c *Conn) NetConn() net.Conn { return c.conn }

// Reader is the buffered reader every read goes through, for tests that
// read bytes themselves; set a read deadline first (SetReadDeadline).
func (c *Conn) Reader() *bufio.Reader { return c.br }

// SetReadDeadline sets the next reads' deadline to Timeout from now.
func (c *Conn) SetReadDeadline() {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout()))
}

func (c *Conn) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// Send writes line and CRLF.
func (c *Conn) Send(line string) {
	c.t.Helper()
	c.SendRaw(line + "\r\n")
}

// SendRaw writes s as it is: partial lines, bare LFs, literals.
func (c *Conn) SendRaw(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout()))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %.60q: %v", s, err)
	}
}

// Line reads one line, which must end in CRLF, and returns it without.
func (c *Conn) Line() string {
	c.t.Helper()
	c.SetReadDeadline()
	s, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// Expect reads one line and checks that it starts with prefix.
func (c *Conn) Expect(prefix string) string {
	c.t.Helper()
	l := c.Line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

// ExpectMatch reads one line, checks it against the regular expression
// pattern and returns the submatches.
func (c *Conn) ExpectMatch(pattern string) []string {
	c.t.Helper()
	l := c.Line()
	m := regexp.MustCompile(pattern).FindStringSubmatch(l)
	if m == nil {
		c.t.Fatalf("got %q, want a match for %s", l, pattern)
	}
	return m
}

// Command sends line and reads the one-line reply; when want is not empty
// the reply must start with it.
func (c *Conn) Command(line, want string) string {
	c.t.Helper()
	c.Send(line)
	return c.Expect(want)
}

// Lines reads the rest of a POP3 multi-line response (RFC 1939 §3) up to its
// terminating ".", which it drops, and returns the lines unstuffed.
func (c *Conn) Lines() []string {
	c.t.Helper()
	var out []string
	for {
		l := c.Line()
		if l == "." {
			return out
		}
		out = append(out, strings.TrimPrefix(l, "."))
	}
}

// Body reads the rest of a POP3 multi-line response as it came, still
// dot-stuffed, terminator included.
func (c *Conn) Body() []byte {
	c.t.Helper()
	var raw bytes.Buffer
	for {
		l := c.Line()
		raw.WriteString(l + "\r\n")
		if l == "." {
			return raw.Bytes()
		}
	}
}

var literalAtEnd = regexp.MustCompile(`\{(\d+)\+?\}$`)

// Response reads one IMAP response: a line and, when it announces a literal
// (RFC 9051 §4.3), the literal and the rest of the response, all in one
// string (line ends inside are kept; the final CRLF is not).
func (c *Conn) Response() string {
	c.t.Helper()
	var sb strings.Builder
	for {
		line := c.Line()
		sb.WriteString(line)
		m := literalAtEnd.FindStringSubmatch(line)
		if m == nil {
			return sb.String()
		}
		n, _ := strconv.Atoi(m[1])
		sb.WriteString("\r\n")
		c.SetReadDeadline()
		if _, err := io.CopyN(&sb, c.br, int64(n)); err != nil {
			c.t.Fatalf("read literal: %v (got %q)", err, sb.String())
		}
	}
}

// Tagged sends the IMAP command "tag text" and returns the untagged and
// continuation responses and the tagged status line.
func (c *Conn) Tagged(tag, text string) (untagged []string, status string) {
	c.t.Helper()
	c.Send(tag + " " + text)
	return c.Until(tag)
}

// Until reads IMAP responses up to the tagged one for tag.
func (c *Conn) Until(tag string) (untagged []string, status string) {
	c.t.Helper()
	for {
		l := c.Response()
		if strings.HasPrefix(l, tag+" ") {
			return untagged, l
		}
		untagged = append(untagged, l)
	}
}

// ExpectClosed checks that the server closes the connection, within
// Timeout, without sending anything more.
func (c *Conn) ExpectClosed() {
	c.t.Helper()
	c.SetReadDeadline()
	rest, err := io.ReadAll(c.br)
	if err != nil && !closedErr(err) {
		c.t.Fatalf("waiting for close: %v (got %q)", err, rest)
	}
	if len(rest) > 0 {
		c.t.Fatalf("got %q before close, want nothing", rest)
	}
}

// DrainUntilClosed reads whatever the server still sends until it closes the
// connection, which it must within d, and returns those lines.
func (c *Conn) DrainUntilClosed(d time.Duration) []string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	var lines []string
	for {
		l, err := c.br.ReadString('\n')
		if l != "" {
			lines = append(lines, strings.TrimRight(l, "\r\n"))
		}
		if err == nil {
			continue
		}
		if isTimeout(err) {
			c.t.Fatalf("connection still open after %v; last lines %q", d, lines)
		}
		return lines
	}
}

// StartTLS runs the client side of a TLS handshake over the connection,
// after the server's go-ahead to STLS or STARTTLS; later lines go over TLS.
// The server must not have sent anything after its go-ahead.
func (c *Conn) StartTLS(cfg *tls.Config) {
	c.t.Helper()
	if n := c.br.Buffered(); n > 0 {
		c.t.Fatalf("server sent %d bytes after its TLS go-ahead", n)
	}
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(c.timeout()))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.conn = tc
	c.br = bufio.NewReader(tc)
}

// closedErr reports whether err is how a read sees the peer hang up.
func closedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		strings.Contains(err.Error(), "connection reset")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
