package upstream

// The one way to log in to a backend. Both fronts use it: the IMAP front
// splices the connection it returns to its client, and the POP3 maildrop
// drives the same connection with go-imap's client. go-imap's client cannot
// give its connection back (it owns the socket through a private
// bufio.Reader and goroutine), and the splice needs it, so this file speaks
// just enough IMAP by hand: greeting, STARTTLS, CAPABILITY, ID and one login
// command, then hands the socket over with every byte the backend sent after
// the login reply.
//
// Invariants:
//   - Every read and write happens under one deadline (Timeouts.Dial from the
//     start of the dial) and is cut short when ctx is cancelled.
//   - The password is never part of an error, a log line or a panic value.
//   - No byte the backend sent is lost: what the reader buffered after the
//     last tagged reply is served first by the returned connection.
//   - The returned connection has no deadline set.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Session is a backend IMAP connection in the authenticated state
// (RFC 9051 §3.2).
type Session struct {
	// Conn is the backend connection. Its first reads return whatever the
	// backend sent after the tagged login reply (untagged data some servers
	// push right after login), then the socket's bytes. It is a
	// *net.TCPConn or *tls.Conn when nothing was read ahead, which keeps
	// the kernel splice path open for cleartext backends.
	Conn net.Conn
	// Caps are the backend's capabilities after login, as it spelled them
	// (from the [CAPABILITY ...] code of its tagged OK, else from a
	// CAPABILITY command).
	Caps []string
}

// Limits on what the backend may send before login; a server exceeding them
// is broken or hostile.
const (
	maxResponseLine  = 64 << 10 // one line of a response
	maxLiteralDrain  = 1 << 20  // literals inside one response, discarded
	maxNonSyncLitLen = 4096     // RFC 7888 §5: LITERAL- accepts {n+} up to 4096
)

// Login dials t, secures the connection as t.Config.TLS says, logs in as
// user with password and returns the authenticated connection. Connect plus
// login must finish within to.Dial.
//
// With t.Config.ForwardClientIP and a backend that advertises ID (RFC 2971),
// the client's addresses go first, as Dovecot's proxy sends them:
// ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "50123"
// "x-connected-ip" "198.51.100.1" "x-connected-port" "995"), so the backend
// can log and rate-limit the real client (it must trust mailgate's address,
// e.g. Dovecot's login_trusted_networks).
//
// Login is AUTHENTICATE PLAIN (RFC 4616; in one line with SASL-IR, RFC 4959)
// when the backend offers AUTH=PLAIN, else LOGIN with quoted strings or
// literals. A refusal is a *LoginError (see loginOutcomes); every other
// failure wraps ErrUnavailable (unreachable: ErrUnreachable). Their text
// names the backend and is meant for logs only.
func Login(ctx context.Context, t Target, to Timeouts, user, password string) (*Session, error) {
	return login(ctx, t, to, user, password, nil)
}

// behind writes commands into w that go out in the same write as the login
// command, right behind it (RFC 9051 §5.5: a client may send a command
// without waiting for the previous one's completion), and returns how many
// tagged replies they will get. The backend runs them in order, so they run
// logged in if the login succeeded; if it failed, each gets NO or BAD
// (RFC 9051 §6: not valid in the not authenticated state), and login reads
// and discards those replies before it closes the connection.
type behind func(w io.Writer) (commands int)

// login is Login, with the commands of pipe sent behind the login command
// when the login is one line: AUTHENTICATE PLAIN with its initial response
// (SASL-IR, RFC 4959) or a LOGIN without synchronizing literals (RFC 9051
// §6.2.3, §4.3). Otherwise pipe is never called, and the login is the
// ordinary exchange. When pipe was called the returned Session's Caps are
// only those the backend sent with its login reply: asking for them with
// CAPABILITY would read the pipelined commands' replies, which belong to the
// caller; nil means the caller must ask.
func login(ctx context.Context, t Target, to Timeouts, user, password string, pipe behind) (*Session, error) {
	if strings.ContainsRune(user, 0) || strings.ContainsRune(password, 0) {
		// Neither PLAIN (RFC 4616 §2) nor an IMAP string can carry NUL.
		return nil, &LoginError{Kind: ErrAuthFailed, Server: t.Address, Text: "credentials contain NUL"}
	}
	timeout := to.withDefaults().Dial // zero means the default, never unbounded
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	raw, err := dialConn(ctx, t, timeout)
	if err != nil {
		return nil, err
	}
	// Cancellation unblocks any read or write at once; the deadline bounds
	// the whole exchange.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	if err := raw.SetDeadline(deadline); err != nil {
		stop()
		raw.Close()
		return nil, fmt.Errorf("%w: %s: set deadline: %v", ErrUnavailable, t.Address, err)
	}
	b := &backendConn{conn: raw, br: bufio.NewReader(raw), bw: bufio.NewWriter(raw), addr: t.Address, pipe: pipe, deadline: deadline}
	s, err := b.login(ctx, t, user, password)
	if !stop() && err == nil {
		// Cancelled or out of time just as the login finished.
		err = fmt.Errorf("%w: %s: %v", ErrUnavailable, t.Address, ctx.Err())
	}
	if err == nil {
		if err = raw.SetDeadline(time.Time{}); err != nil {
			err = fmt.Errorf("%w: %s: clear deadline: %v", ErrUnavailable, t.Address, err)
		}
	}
	if err != nil {
		b.conn.Close()
		return nil, err
	}
	return s, nil
}

// backendConn is the hand-written client side of the pre-login exchange.
type backendConn struct {
	conn net.Conn // raw TCP, then *tls.Conn after STARTTLS
	br   *bufio.Reader
	bw   *bufio.Writer
	addr string // for error messages
	n    int    // tag counter

	ignoreTag   string   // a pipelined command whose reply does not matter (ID)
	untaggedCap []string // the last untagged CAPABILITY seen

	deadline time.Time // of the whole exchange

	pipe     behind // commands to send behind a one-line login command; nil for none
	pipeNext bool   // the next command is that login: pipe goes behind it
	piped    int    // how many tagged replies pipe's commands are owed (0: pipe not called)
}

// response is one server response, reduced to what the login needs.
type response struct {
	tag    string // "*", "+" or a command tag
	status string // OK, NO, BAD, BYE, PREAUTH, or the untagged data name (CAPABILITY)
	code   string // the response code without brackets: "CAPABILITY IMAP4rev1 ..."
	text   string // the rest of the line; for untagged data, its arguments
}

func (b *backendConn) unavailable(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, b.addr, fmt.Sprintf(format, args...))
}

func (b *backendConn) login(ctx context.Context, t Target, user, password string) (*Session, error) {
	greeting, err := b.read()
	if err != nil {
		return nil, err
	}
	if greeting.tag != "*" {
		return nil, b.unavailable("greeting is not untagged")
	}
	switch greeting.status {
	case "OK":
	case "PREAUTH":
		// RFC 9051 §7.1.4: the connection is already authenticated as some
		// user chosen by the server; it cannot become this user.
		return nil, b.unavailable("backend greeted with PREAUTH")
	case "BYE":
		return nil, b.unavailable("backend refused the connection: %q", greeting.text)
	default:
		return nil, b.unavailable("unexpected greeting %q", greeting.status)
	}
	caps := capsFromCode(greeting.code)

	if t.Config.TLS == TLSStartTLS {
		// RFC 9051 §6.2.1; capabilities learnt before TLS are discarded.
		if err := b.startTLS(ctx, t); err != nil {
			return nil, err
		}
		caps = nil
	}
	if caps == nil {
		if caps, err = b.capability(); err != nil {
			return nil, err
		}
	}
	if t.Config.ForwardClientIP && t.ClientAddr != nil && hasCap(caps, "ID") {
		b.writeID(t.ClientAddr, t.LocalAddr) // pipelined with the login, flushed by it
	}

	tag := b.nextTag()
	var parts [][]byte
	switch {
	case hasCap(caps, "AUTH=PLAIN"):
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
		if hasCap(caps, "SASL-IR") {
			parts = [][]byte{[]byte(tag + " AUTHENTICATE PLAIN " + ir + "\r\n")}
		} else {
			// The second part goes after the server's empty challenge "+ ".
			parts = [][]byte{[]byte(tag + " AUTHENTICATE PLAIN\r\n"), []byte(ir + "\r\n")}
		}
	case hasCap(caps, "LOGINDISABLED"):
		return nil, b.unavailable("backend offers neither AUTH=PLAIN nor LOGIN (LOGINDISABLED); check its tls setting")
	default:
		nonSync := 0
		if hasCap(caps, "LITERAL+") {
			nonSync = -1
		} else if hasCap(caps, "LITERAL-") {
			nonSync = maxNonSyncLitLen
		}
		parts = loginCommand(tag, user, password, nonSync)
	}
	b.untaggedCap = nil // from here, only what comes with the login reply
	// Only a login of one line can have commands behind it: with a
	// synchronizing literal or a SASL challenge, the server must answer
	// before the rest of the login goes.
	b.pipeNext = b.pipe != nil && len(parts) == 1 && pipelineSafe(t.Config.PipelineLogin, greeting.text)
	res, err := b.command(tag, parts)
	if err != nil {
		return nil, err
	}
	if err := loginResult(res, b.addr); err != nil {
		b.discardPiped()
		return nil, err
	}

	post := capsFromCode(res.code)
	if post == nil {
		post = b.untaggedCap // e.g. "* CAPABILITY ..." before the tagged OK
	}
	if post == nil && b.piped == 0 {
		if post, err = b.capability(); err != nil {
			return nil, err
		}
	}
	return &Session{Conn: b.handOver(), Caps: post}, nil
}

// pipelineSafe reports whether commands may follow the login in its write.
// RFC 9051 §5.5 lets a client send a command before the previous one
// completes, and a login is no exception in the protocol; but servers that
// hand the connection from a login process to a mail process after the
// login lose or misread what came behind it. Seen: Courier 5.0's imaplogin
// execs imapd and the pipelined commands are never answered; Cyrus 3.6
// answers SELECT but first re-reads the AUTHENTICATE line ("BAD Already
// authenticated"). Dovecot's login processes pass the unread input on to
// the imap process. So auto means: when the greeting names Dovecot (its
// login_greeting, "Dovecot ready." or "Dovecot (Debian) ready." by
// default); a Dovecot with another greeting can say pipeline_login: on.
func pipelineSafe(setting, greeting string) bool {
	switch setting {
	case PipelineOn:
		return true
	case PipelineOff:
		return false
	}
	return strings.Contains(greeting, "Dovecot")
}

// pipedReplyWait bounds the wait for the replies to pipelined commands after
// a refused login: they follow the refusal at once, and the refusal is what
// the client waits for.
const pipedReplyWait = time.Second

// discardPiped reads the replies owed to the commands pipelined behind a
// refused login (each a NO or BAD) and drops them, so that the connection
// closes with nothing unread; the caller then closes it and sends nothing
// more. A backend that hangs up instead (Dovecot ends the connection after
// too many commands it rejects before login) or takes too long ends it
// early: the refusal is already known.
func (b *backendConn) discardPiped() {
	if b.piped == 0 {
		return
	}
	if dl := time.Now().Add(pipedReplyWait); dl.Before(b.deadline) && b.conn.SetReadDeadline(dl) != nil {
		return
	}
	for owed := b.piped; owed > 0; {
		res, err := b.read()
		if err != nil {
			return
		}
		if res.tag != "*" && res.tag != "+" {
			owed--
		}
	}
}

func (b *backendConn) nextTag() string {
	b.n++
	return "mg" + strconv.Itoa(b.n)
}

// startTLS runs STARTTLS and the TLS handshake, verifying the backend's
// certificate with t.Config.TLSConfig.
func (b *backendConn) startTLS(ctx context.Context, t Target) error {
	tag := b.nextTag()
	res, err := b.command(tag, [][]byte{[]byte(tag + " STARTTLS\r\n")})
	if err != nil {
		return err
	}
	if res.status != "OK" {
		return b.unavailable("STARTTLS refused: %s %q", res.status, res.text)
	}
	if b.br.Buffered() > 0 {
		// Bytes after the OK but before TLS would be trusted as if they had
		// come over TLS: the STARTTLS injection attack, mirrored.
		return b.unavailable("backend sent data after the STARTTLS reply")
	}
	tc := tls.Client(b.conn, t.Config.TLSConfig(t.Address))
	if err := tc.HandshakeContext(ctx); err != nil {
		return handshakeError(t, "TLS handshake after STARTTLS", err)
	}
	b.conn = tc
	b.br.Reset(tc)
	b.bw.Reset(tc)
	return nil
}

// capability asks for the capability list.
func (b *backendConn) capability() ([]string, error) {
	b.untaggedCap = nil
	tag := b.nextTag()
	res, err := b.command(tag, [][]byte{[]byte(tag + " CAPABILITY\r\n")})
	if err != nil {
		return nil, err
	}
	if res.status != "OK" || b.untaggedCap == nil {
		return nil, b.unavailable("CAPABILITY failed: %s %q", res.status, res.text)
	}
	return b.untaggedCap, nil
}

// writeID buffers an ID command carrying the client's addresses (RFC 2971;
// field names as Dovecot's proxy sends them: the client's address and port,
// and the address and port it connected to). Its reply is ignored: a backend
// that does not trust us answers OK and ignores the fields.
func (b *backendConn) writeID(client, local net.Addr) {
	var fields []string
	add := func(ipKey, portKey string, a net.Addr) {
		if a == nil {
			return
		}
		host, port, err := net.SplitHostPort(a.String())
		if err != nil {
			host, port = a.String(), ""
		}
		fields = append(fields, quote(ipKey), quote(host))
		if port != "" {
			fields = append(fields, quote(portKey), quote(port))
		}
	}
	add("x-originating-ip", "x-originating-port", client)
	add("x-connected-ip", "x-connected-port", local)
	tag := b.nextTag()
	b.ignoreTag = tag
	b.bw.WriteString(tag + " ID (" + strings.Join(fields, " ") + ")\r\n")
}

// command sends a command made of parts; each part but the last ends where
// the server must answer with a continuation request ("+") before the next
// part goes (a synchronizing literal, or the SASL response). It returns the
// tagged reply; it is an error for the server to ask for more than parts
// holds, in which case the command is cancelled with "*".
func (b *backendConn) command(tag string, parts [][]byte) (response, error) {
	for i, part := range parts {
		if _, err := b.bw.Write(part); err != nil {
			return response{}, b.unavailable("write: %v", err)
		}
		if b.pipeNext {
			// One write: the login and what goes behind it (RFC 9051 §5.5).
			b.pipeNext = false
			b.piped = b.pipe(b.bw)
		}
		if err := b.bw.Flush(); err != nil {
			return response{}, b.unavailable("write: %v", err)
		}
		last := i == len(parts)-1
		for {
			res, err := b.read()
			if err != nil {
				return response{}, err
			}
			switch {
			case res.tag == "+" && !last:
			case res.tag == "+":
				// A challenge we cannot answer (RFC 9051 §6.2.2: "*" cancels).
				if _, err := b.bw.WriteString("*\r\n"); err != nil {
					return response{}, b.unavailable("write: %v", err)
				}
				if err := b.bw.Flush(); err != nil {
					return response{}, b.unavailable("write: %v", err)
				}
				continue
			case res.tag == tag:
				return res, nil
			default:
				continue // untagged data, or the reply to the pipelined ID
			}
			break // continuation received: send the next part
		}
	}
	panic("unreachable: the last part returns from the loop")
}

// read reads one response. Untagged CAPABILITY data is remembered; untagged
// BYE ends the exchange (RFC 9051 §7.1.5); the reply to b.ignoreTag is
// passed over by command because its tag does not match.
func (b *backendConn) read() (response, error) {
	line, err := b.readLine()
	if err != nil {
		return response{}, err
	}
	res := parseResponse(line)
	if res.tag == "*" {
		switch res.status {
		case "CAPABILITY":
			b.untaggedCap = strings.Fields(res.text)
		case "BYE":
			return response{}, b.unavailable("backend closed the connection: %q", res.text)
		}
	}
	return res, nil
}

// readLine reads one response line without its CRLF. Literals ({n} at the end
// of a line, RFC 9051 §4.3) are read and discarded along with the rest of the
// response: nothing before login needs their content.
func (b *backendConn) readLine() (string, error) {
	var first string
	drained := int64(0)
	for {
		line, err := readCappedLine(b.br, maxResponseLine)
		if err != nil {
			return "", b.unavailable("read: %v", err)
		}
		if first == "" {
			first = line
		}
		n, ok := trailingLiteral(line)
		if !ok {
			return first, nil
		}
		drained += n
		if drained > maxLiteralDrain {
			return "", b.unavailable("response literal too large")
		}
		if _, err := io.CopyN(io.Discard, b.br, n); err != nil {
			return "", b.unavailable("read: %v", err)
		}
	}
}

// handOver returns the connection, with the bytes read ahead in front.
func (b *backendConn) handOver() net.Conn {
	n := b.br.Buffered()
	if n == 0 {
		return b.conn
	}
	ahead, _ := b.br.Peek(n) // cannot fail: n bytes are buffered
	return &readAheadConn{Conn: b.conn, ahead: bytes.Clone(ahead)}
}

// readAheadConn serves bytes read ahead during login before the socket's.
type readAheadConn struct {
	net.Conn
	ahead []byte
}

func (c *readAheadConn) Read(p []byte) (int, error) {
	if len(c.ahead) > 0 {
		n := copy(p, c.ahead)
		c.ahead = c.ahead[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying connection when it can.
func (c *readAheadConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// readCappedLine reads a line ending in LF (CRLF or bare LF) and returns it
// without the line end; longer lines than limit are an error.
func readCappedLine(br *bufio.Reader, limit int) (string, error) {
	var long []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if err == nil {
			if long != nil {
				chunk = append(long, chunk...)
			}
			if len(chunk) > limit {
				return "", errors.New("line too long")
			}
			chunk = bytes.TrimSuffix(chunk[:len(chunk)-1], []byte("\r"))
			return string(chunk), nil
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
		if len(long)+len(chunk) > limit {
			return "", errors.New("line too long")
		}
		long = append(long, chunk...)
	}
}

// trailingLiteral reports whether line ends with a literal announcement
// "{n}" (or "{n+}"), and n.
func trailingLiteral(line string) (int64, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	digits := strings.TrimSuffix(line[i+1:len(line)-1], "+")
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 || digits == "" || digits[0] == '+' {
		return 0, false
	}
	return n, true
}

// parseResponse splits a response line into tag, status, code and text.
func parseResponse(line string) response {
	var res response
	res.tag, line, _ = strings.Cut(line, " ")
	if res.tag == "+" {
		res.text = line
		return res
	}
	res.status, line, _ = strings.Cut(line, " ")
	res.status = strings.ToUpper(res.status)
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			res.code = line[1:end]
			line = strings.TrimPrefix(line[end+1:], " ")
		}
	}
	res.text = line
	return res
}

// capsFromCode returns the capabilities of a "CAPABILITY ..." response code,
// or nil for any other code.
func capsFromCode(code string) []string {
	name, rest, _ := strings.Cut(code, " ")
	if !strings.EqualFold(name, "CAPABILITY") {
		return nil
	}
	caps := strings.Fields(rest)
	if caps == nil {
		caps = []string{}
	}
	return caps
}

func hasCap(caps []string, c string) bool {
	for _, have := range caps {
		if strings.EqualFold(have, c) {
			return true
		}
	}
	return false
}

// LoginError is a backend's refusal of a login: its tagged NO or BAD, with
// the RFC 5530 response code if it gave one. errors.Is matches Kind
// (ErrAuthFailed, ErrInUse or ErrUnavailable). Text is the backend's own
// words, for logs only: never show it to a client.
type LoginError struct {
	Kind   error  // ErrAuthFailed, ErrInUse or ErrUnavailable
	Server string // the backend server's address
	Status string // NO or BAD
	Code   string // the response code's name, upper case; "" for none
	Text   string
}

func (e *LoginError) Error() string {
	s := e.Kind.Error() + ": " + e.Server + ": login"
	if e.Status != "" {
		s += ": " + e.Status
	}
	if e.Code != "" {
		s += " [" + e.Code + "]"
	}
	return s + " " + strconv.Quote(e.Text)
}

func (e *LoginError) Unwrap() error { return e.Kind }

// ResponseCode is the backend's RFC 5530 code, so a front can pass a code
// meant for the user (EXPIRED, CONTACTADMIN...) on to its client.
func (e *LoginError) ResponseCode() string { return e.Code }

// loginOutcomes is the one table of what a refused login means, by the
// response code of the backend's tagged NO (RFC 5530 §3). A wrong password
// (ErrAuthFailed) counts against the client's failed-login budget; the
// others do not: they say nothing about whether the client knows the
// password.
var loginOutcomes = map[string]error{
	// The credentials are not good for this account, now or ever.
	"AUTHENTICATIONFAILED": ErrAuthFailed, // wrong user name or password
	"AUTHORIZATIONFAILED":  ErrAuthFailed, // authenticated, but may not be this user
	"EXPIRED":              ErrAuthFailed, // the password (or account) has expired
	"CONTACTADMIN":         ErrAuthFailed, // the account needs the administrator
	"NOPERM":               ErrAuthFailed, // this user may not log in here
	// Not the user's doing: the backend cannot take the session now.
	"INUSE":           ErrInUse,       // another session holds what this one needs
	"UNAVAILABLE":     ErrUnavailable, // a subsystem is down: try later
	"LIMIT":           ErrUnavailable, // too many sessions or connections
	"OVERQUOTA":       ErrUnavailable, // the account is over its quota
	"SERVERBUG":       ErrUnavailable,
	"CORRUPTION":      ErrUnavailable,
	"CANNOT":          ErrUnavailable,
	"EXPUNGEISSUED":   ErrUnavailable, // meaningless at login: the server is confused
	"CLIENTBUG":       ErrUnavailable, // the backend thinks mailgate erred
	"PRIVACYREQUIRED": ErrUnavailable, // the backend wants TLS: a configuration problem
}

// loginResult maps the tagged reply to a login command through
// loginOutcomes. A NO without a known code is a wrong password: servers
// without RFC 5530 say only NO. BAD means the backend did not understand us,
// which is not the user's fault.
func loginResult(res response, server string) error {
	if res.status == "OK" {
		return nil
	}
	code, _, _ := strings.Cut(res.code, " ")
	code = strings.ToUpper(code)
	e := &LoginError{Kind: ErrUnavailable, Server: server, Status: res.status, Code: code, Text: res.text}
	if res.status == "NO" {
		e.Kind = ErrAuthFailed
		if k, ok := loginOutcomes[code]; ok {
			e.Kind = k
		}
	}
	return e
}

// loginCommand builds "tag LOGIN user password" (RFC 9051 §6.2.3) as parts
// split after each synchronizing literal. nonSync is the largest literal that
// may be sent without waiting (LITERAL+: -1 for any size, LITERAL-: 4096,
// neither: 0).
func loginCommand(tag, user, password string, nonSync int) [][]byte {
	var parts [][]byte
	cur := []byte(tag + " LOGIN")
	for _, s := range []string{user, password} {
		cur = append(cur, ' ')
		if quotable(s) {
			cur = append(cur, quote(s)...)
			continue
		}
		if nonSync < 0 || len(s) <= nonSync {
			cur = append(cur, "{"+strconv.Itoa(len(s))+"+}\r\n"...)
			cur = append(cur, s...)
			continue
		}
		cur = append(cur, "{"+strconv.Itoa(len(s))+"}\r\n"...)
		parts = append(parts, cur)
		cur = []byte(s)
	}
	return append(parts, append(cur, "\r\n"...))
}

// quotable reports whether s can be a quoted string: 7-bit, no CR, LF or NUL
// (RFC 9051 §4.3; 8-bit text goes in a literal for IMAP4rev1 servers).
func quotable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return false
		}
	}
	return true
}

// quote returns s as a quoted string; s must be quotable.
func quote(s string) string {
	var sb strings.Builder
	sb.Grow(len(s) + 2)
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			sb.WriteByte('\\')
		}
		sb.WriteByte(s[i])
	}
	sb.WriteByte('"')
	return sb.String()
}
