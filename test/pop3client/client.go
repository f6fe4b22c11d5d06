// Package pop3client is a small, strict POP3 client (RFC 1939) for end-to-end
// tests and the load tool. It checks the wire as it reads: every line of a
// multi-line response must end in CRLF, and dot-stuffing is undone exactly
// (RFC 1939 §3), so a test comparing Retr's result with the backend's bytes
// tests the server's framing too.
//
//	c, err := pop3client.Dial("127.0.0.1:1110", 10*time.Second)
//	err = c.Login("alice@a.test", "secret")
//	body, err := c.Retr(1)
//	err = c.Quit()
//
// For transcripts, Cmd sends one line and returns the status line; ReadLine
// and MultiLine read what follows.
package pop3client

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Client is one POP3 connection. It is not safe for concurrent use.
type Client struct {
	conn     net.Conn
	r        *bufio.Reader
	Timeout  time.Duration // deadline for each write and each read; set by Dial
	Greeting string        // the server's greeting line, without +OK
}

// ErrCode is the response code (RFC 2449: "IN-USE", "SYS/TEMP", or "") of
// the -ERR answer err wraps; ok is false when err is no -ERR answer.
func ErrCode(err error) (code string, ok bool) {
	var re *ReplyError
	if !errors.As(err, &re) {
		return "", false
	}
	return re.Code(), true
}

// ReplyError is a -ERR answer.
type ReplyError struct {
	Cmd  string // the command keyword (arguments left out: they may be secret)
	Text string // everything after "-ERR ", response code included
}

func (e *ReplyError) Error() string { return e.Cmd + ": -ERR " + e.Text }

// Code returns the RFC 2449 response code ("IN-USE", "SYS/TEMP"), or "".
func (e *ReplyError) Code() string {
	if strings.HasPrefix(e.Text, "[") {
		if i := strings.IndexByte(e.Text, ']'); i > 0 {
			return e.Text[1:i]
		}
	}
	return ""
}

// Dial connects in cleartext and reads the greeting.
func Dial(addr string, timeout time.Duration) (*Client, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return NewClient(conn, timeout)
}

// DialLogin connects in cleartext and logs in with USER/PASS; on any error
// the connection is closed.
func DialLogin(addr, user, password string, timeout time.Duration) (*Client, error) {
	c, err := Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, password); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// DialTLS connects with implicit TLS (POP3S, RFC 8314) and reads the greeting.
func DialTLS(addr string, cfg *tls.Config, timeout time.Duration) (*Client, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return NewClient(conn, timeout)
}

// NewClient reads the greeting on an open connection.
func NewClient(conn net.Conn, timeout time.Duration) (*Client, error) {
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), Timeout: timeout}
	line, err := c.ReadLine()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(line, "+OK") {
		conn.Close()
		return nil, fmt.Errorf("greeting %q", line)
	}
	c.Greeting = strings.TrimSpace(strings.TrimPrefix(line, "+OK"))
	return c, nil
}

// Conn returns the underlying connection.
func (c *Client) Conn() net.Conn { return c.conn }

// Close closes the connection without QUIT: the session must not enter the
// UPDATE state (RFC 1939 §6).
func (c *Client) Close() error { return c.conn.Close() }

// Send writes one command line (CRLF appended) without reading anything.
func (c *Client) Send(line string) error {
	return c.SendRaw([]byte(line + "\r\n"))
}

// SendRaw writes bytes as they are (for pipelining and hostile input).
func (c *Client) SendRaw(b []byte) error {
	c.conn.SetWriteDeadline(time.Now().Add(c.Timeout))
	_, err := c.conn.Write(b)
	return err
}

// ReadLine reads one line and returns it without its CRLF. A line that ends
// in a bare LF is an error: POP3 lines end in CRLF.
func (c *Client) ReadLine() (string, error) {
	b, err := c.readLine()
	if err != nil {
		return "", err
	}
	return string(b[:len(b)-2]), nil
}

// readLine returns the line with its CRLF; the slice is valid until the next
// read.
func (c *Client) readLine() ([]byte, error) {
	// The deadline is renewed whenever the buffer is drained, not for every
	// line: a multi-line body is thousands of lines, and a deadline per line
	// costs the load tool more CPU than the servers it measures.
	if c.r.Buffered() == 0 {
		c.conn.SetReadDeadline(time.Now().Add(c.Timeout))
	}
	b, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// A long line: collect it whole.
		buf := append([]byte(nil), b...)
		for err == bufio.ErrBufferFull {
			c.conn.SetReadDeadline(time.Now().Add(c.Timeout))
			b, err = c.r.ReadSlice('\n')
			buf = append(buf, b...)
		}
		b = buf
	}
	if err != nil {
		return nil, err
	}
	if len(b) < 2 || b[len(b)-2] != '\r' {
		return nil, fmt.Errorf("line %q ends in a bare LF, not CRLF", truncate(b))
	}
	return b, nil
}

// Cmd sends line and reads the status line. It returns the text after +OK,
// or a *ReplyError for -ERR.
func (c *Client) Cmd(line string) (string, error) {
	if err := c.Send(line); err != nil {
		return "", err
	}
	return c.Status(keyword(line))
}

// Status reads one status line for the command named cmd.
func (c *Client) Status(cmd string) (string, error) {
	line, err := c.ReadLine()
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	switch {
	case line == "+OK" || strings.HasPrefix(line, "+OK "):
		return strings.TrimPrefix(strings.TrimPrefix(line, "+OK"), " "), nil
	case line == "-ERR" || strings.HasPrefix(line, "-ERR "):
		return "", &ReplyError{Cmd: cmd, Text: strings.TrimPrefix(strings.TrimPrefix(line, "-ERR"), " ")}
	}
	return "", fmt.Errorf("%s: status line %q is neither +OK nor -ERR", cmd, line)
}

// MultiLine reads the rest of a multi-line response up to the terminating
// ".CRLF" and returns its content with dot-stuffing undone: exactly the
// octets the server meant to deliver, CRLFs included.
func (c *Client) MultiLine() ([]byte, error) {
	var out bytes.Buffer
	_, err := c.MultiLineTo(&out)
	return out.Bytes(), err
}

// MultiLineTo is MultiLine writing into w (for large messages and the load
// tool); it returns the number of octets written.
func (c *Client) MultiLineTo(w io.Writer) (int64, error) {
	var n int64
	for {
		b, err := c.readLine()
		if err != nil {
			return n, err
		}
		if b[0] == '.' {
			if len(b) == 3 {
				return n, nil // ".CRLF"
			}
			b = b[1:] // RFC 1939 §3: a stuffed dot
		}
		m, err := w.Write(b)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
}

// Login sends USER and PASS.
func (c *Client) Login(user, password string) error {
	if _, err := c.Cmd("USER " + user); err != nil {
		return err
	}
	if err := c.Send("PASS " + password); err != nil {
		return err
	}
	_, err := c.Status("PASS")
	return err
}

// LoginRetry dials with dial and logs in, dialling again every 20ms while the
// answer is -ERR [IN-USE] (RFC 2449 §8.1.2: another session still holds the
// maildrop's lock, as right after the previous session's client closed),
// for up to within. Any other error ends it at once. Safe in any goroutine.
func LoginRetry(dial func() (*Client, error), user, password string, within time.Duration) (*Client, error) {
	deadline := time.Now().Add(within)
	for {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		err = c.Login(user, password)
		if err == nil {
			return c, nil
		}
		c.Close()
		if code, _ := ErrCode(err); code != "IN-USE" || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// STLS upgrades the connection (RFC 2595 §4).
func (c *Client) STLS(cfg *tls.Config) error {
	if _, err := c.Cmd("STLS"); err != nil {
		return err
	}
	if c.r.Buffered() > 0 {
		return errors.New("STLS: the server sent bytes after its +OK, before TLS")
	}
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(c.Timeout))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("STLS handshake: %w", err)
	}
	tc.SetDeadline(time.Time{})
	c.conn = tc
	c.r.Reset(tc)
	return nil
}

// Capa returns the CAPA lines (RFC 2449 §5).
func (c *Client) Capa() ([]string, error) {
	if _, err := c.Cmd("CAPA"); err != nil {
		return nil, err
	}
	b, err := c.MultiLine()
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n"), nil
}

// Stat returns the message count and total size.
func (c *Client) Stat() (count int, size int64, err error) {
	text, err := c.Cmd("STAT")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(text)
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("STAT: malformed %q", text)
	}
	count, err1 := strconv.Atoi(f[0])
	size, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("STAT: malformed %q", text)
	}
	return count, size, nil
}

// Item is one line of a LIST or UIDL listing.
type Item struct {
	N    int
	Size int64  // LIST
	UIDL string // UIDL
}

// List returns the scan listing (RFC 1939 §5), in the server's order.
func (c *Client) List() ([]Item, error) {
	return c.listing("LIST", func(it *Item, arg string) error {
		var err error
		it.Size, err = strconv.ParseInt(arg, 10, 64)
		return err
	})
}

// UIDL returns the unique-id listing (RFC 1939 §7), in the server's order.
//
// A unique-id must be 1 to 70 characters in 0x21-0x7E (RFC 1939 §7); a
// line with any other is an error.
func (c *Client) UIDL() ([]Item, error) {
	return c.listing("UIDL", func(it *Item, arg string) error {
		if len(arg) > 70 || arg == "" || strings.ContainsFunc(arg, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			return errors.New("not a unique-id")
		}
		it.UIDL = arg
		return nil
	})
}

// UIDLsQuit lists the unique-ids alone, in message order, then ends the
// session with QUIT (no DELE: nothing changes, RFC 1939 §6): what a test
// compares across sessions.
func (c *Client) UIDLsQuit() ([]string, error) {
	items, err := c.UIDL()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.UIDL
	}
	return out, c.Quit()
}

func (c *Client) listing(cmd string, parse func(*Item, string) error) ([]Item, error) {
	if _, err := c.Cmd(cmd); err != nil {
		return nil, err
	}
	b, err := c.MultiLine()
	if err != nil {
		return nil, err
	}
	var items []Item
	for _, line := range strings.Split(string(b), "\r\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, " ")
		if len(f) != 2 {
			return nil, fmt.Errorf("%s: malformed line %q", cmd, line)
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("%s: malformed line %q", cmd, line)
		}
		it := Item{N: n}
		if err := parse(&it, f[1]); err != nil {
			return nil, fmt.Errorf("%s: malformed line %q", cmd, line)
		}
		items = append(items, it)
	}
	return items, nil
}

// Retr returns message n as delivered, dot-stuffing undone.
func (c *Client) Retr(n int) ([]byte, error) {
	if _, err := c.Cmd("RETR " + strconv.Itoa(n)); err != nil {
		return nil, err
	}
	return c.MultiLine()
}

// RetrTo writes message n into w and returns its size as delivered.
func (c *Client) RetrTo(n int, w io.Writer) (int64, error) {
	if _, err := c.Cmd("RETR " + strconv.Itoa(n)); err != nil {
		return 0, err
	}
	return c.MultiLineTo(w)
}

// Top returns the header and the first lines of message n's body.
func (c *Client) Top(n, lines int) ([]byte, error) {
	if _, err := c.Cmd(fmt.Sprintf("TOP %d %d", n, lines)); err != nil {
		return nil, err
	}
	return c.MultiLine()
}

// Dele marks message n deleted.
func (c *Client) Dele(n int) error {
	_, err := c.Cmd("DELE " + strconv.Itoa(n))
	return err
}

// Rset unmarks every deleted message.
func (c *Client) Rset() error {
	_, err := c.Cmd("RSET")
	return err
}

// Noop does nothing.
func (c *Client) Noop() error {
	_, err := c.Cmd("NOOP")
	return err
}

// Quit ends the session (entering UPDATE when in TRANSACTION) and closes the
// connection.
func (c *Client) Quit() error {
	defer c.conn.Close()
	_, err := c.Cmd("QUIT")
	return err
}

func keyword(line string) string {
	if i := strings.IndexByte(line, ' '); i >= 0 {
		return strings.ToUpper(line[:i])
	}
	return strings.ToUpper(line)
}

func truncate(b []byte) []byte {
	if len(b) > 60 {
		return b[:60]
	}
	return b
}
