package pop3

// session.go is the POP3 state machine (RFC 1939 §3) and the TRANSACTION
// commands.
//
// Invariants kept here:
//   - Only the dispatcher changes s.state, and it checks the command table's
//     allowed states before a handler runs.
//   - Maildrop.Commit is called from one place, update(), reached only by
//     QUIT in TRANSACTION state. Every other end of a session (drop, idle
//     timeout, shutdown, error, too many bad commands) calls only Close
//     (RFC 1939 §6: no UPDATE state without QUIT).
//   - Message numbers are fixed for the session; a number marked deleted may
//     not be referenced, and STAT/LIST/UIDL leave deleted messages out.
//   - A message body is followed by the terminating "." only if it was read
//     whole from the backend; otherwise the connection is closed.

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway/internal/connlog"
	"mailgate/gateway/internal/preauth"
)

// state is the RFC 1939 §3 session state. The values are bits so that a
// command's allowed states form a set.
type state uint8

const (
	stateAuthorization state = 1 << iota
	stateTransaction
	stateUpdate
)

func (st state) String() string {
	switch st {
	case stateAuthorization:
		return "AUTHORIZATION"
	case stateTransaction:
		return "TRANSACTION"
	case stateUpdate:
		return "UPDATE"
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}

// transition is what a handler asks of the dispatcher after it ran.
type transition uint8

const (
	stay          transition = iota
	toTransaction            // authenticated: s.md is open (RFC 1939 §4)
	toUpdate                 // QUIT in TRANSACTION (RFC 1939 §6)
	hangUp                   // reply (if any) then close: QUIT in AUTHORIZATION, limits reached
	abort                    // close without another word: the connection is unusable
)

// cmdSpec is one row of the command table.
type cmdSpec struct {
	states  state // where the command is allowed
	minArgs int
	maxArgs int // -1: any
	run     func(s *session, cmd command) (transition, error)
}

// commands is the command table. LAST and APOP are not offered.
var commands map[string]cmdSpec

func init() {
	const (
		auth  = stateAuthorization
		trans = stateTransaction
	)
	commands = map[string]cmdSpec{
		"CAPA": {auth | trans, 0, 0, (*session).cmdCAPA},
		"QUIT": {auth | trans, 0, 0, (*session).cmdQUIT},
		"NOOP": {trans, 0, 0, (*session).cmdNOOP},
		"STLS": {auth, 0, 0, (*session).cmdSTLS},
		"USER": {auth, 1, 1, (*session).cmdUSER},
		"PASS": {auth, 1, -1, (*session).cmdPASS}, // the password is the rest of the line
		"AUTH": {auth, 0, 2, (*session).cmdAUTH},
		"STAT": {trans, 0, 0, (*session).cmdSTAT},
		"LIST": {trans, 0, 1, (*session).cmdLIST},
		"UIDL": {trans, 0, 1, (*session).cmdUIDL},
		"RETR": {trans, 1, 1, (*session).cmdRETR},
		"TOP":  {trans, 2, 2, (*session).cmdTOP},
		"DELE": {trans, 1, 1, (*session).cmdDELE},
		"RSET": {trans, 0, 0, (*session).cmdRSET},
	}
}

// session is one client connection.
type session struct {
	cfg  *Config
	ctx  context.Context
	conn net.Conn
	w    *wire
	log  *zap.Logger

	state  state
	tls    bool
	banner string

	loggedPlaintextRefusal bool // the first login refused for lack of TLS was logged
	started                time.Time

	// AUTHORIZATION
	pendingUser  string // from USER, waiting for PASS; forgotten at STLS
	authFailures int

	// TRANSACTION
	user    string
	md      Maildrop
	deleted []bool // index: message number

	takenOver atomic.Bool   // a newer session took the maildrop lock
	stopWatch chan struct{} // closed at the end: stops watchTakeover

	commands    int
	badCommands int
	result      connlog.Result // how the session ended, for the "session end" log line
}

// run is the session from greeting to close.
func (s *session) run() {
	defer s.conn.Close()
	stop := context.AfterFunc(s.ctx, s.w.interrupt)
	defer stop()
	defer s.end()
	defer func() {
		// A bug in a handler or a backend ends this session, not the process.
		if r := recover(); r != nil {
			s.log.Error("panic in session", zap.Any("panic", r), zap.StackSkip("stack", 2))
			s.result = connlog.Panic
		}
	}()

	if tc, ok := s.conn.(*tls.Conn); ok && s.cfg.ImplicitTLS {
		err := s.w.handshake(tc, s.cfg.TLSHandshakeTimeout)
		s.cfg.Observer.TLSHandshake(err)
		if err != nil {
			s.log.Info("TLS handshake failed", zap.Error(err))
			s.result = connlog.TLSFailed
			return
		}
		s.tls = true
	} else if s.cfg.ImplicitTLS {
		s.log.Error("implicit TLS listener handed a connection without TLS")
		s.result = connlog.Error
		return
	}

	// RFC 1939 §4. The banner is unique per connection, for logs and
	// support, but not in the form of an APOP timestamp (RFC 1939 §7: a
	// msg-id "<...@...>"): APOP is not offered, and a client that sees one
	// (curl) tries APOP and fails.
	s.w.writeOK("mailgate ready, session " + s.banner)
	for {
		s.waiting(true)
		cmd, err := s.w.readCommand()
		s.waiting(false)
		if err != nil {
			var se syntaxError
			switch {
			case errors.Is(err, errLineTooLong):
				if s.bad("line too long") {
					return
				}
				continue
			case errors.As(err, &se):
				if s.bad(string(se)) {
					return
				}
				continue
			}
			s.readFailed(err)
			return
		}
		s.commands++
		if s.dispatch(cmd) {
			return
		}
		// A command boundary: honour a shutdown even if more commands are
		// buffered.
		if s.ctx.Err() != nil {
			s.readFailed(errShutdown)
			return
		}
	}
}

// waiting tells the maildrop's lock whether the session waits for a command.
func (s *session) waiting(w bool) {
	if lh, ok := s.md.(lockHolder); ok {
		lh.Waiting(w)
	}
}

// watchTakeover ends the session, without UPDATE (RFC 1939 §6) and without
// another word, when a newer session of the user takes the maildrop lock
// over (pop3.lock: takeover). That happens only while the session waits for
// a command, so the interrupted read is where it ends.
func (s *session) watchTakeover() {
	lh, ok := s.md.(lockHolder)
	if !ok {
		return
	}
	taken := lh.TakenOver()
	if taken == nil {
		return // nothing can take this maildrop over: no goroutine to watch it
	}
	s.stopWatch = make(chan struct{})
	stop := s.stopWatch
	go func() {
		select {
		case <-taken:
			s.takenOver.Store(true)
			s.w.interrupt()
		case <-stop:
		}
	}()
}

// wasTakenOver reports whether a newer session took the maildrop lock over,
// whether or not the watcher has seen it yet.
func (s *session) wasTakenOver() bool {
	if s.takenOver.Load() {
		return true
	}
	lh, ok := s.md.(lockHolder)
	if !ok {
		return false
	}
	select {
	case <-lh.TakenOver(): // a nil channel (no takeover possible) never fires
		return true
	default:
		return false
	}
}

// readFailed ends the session after a failed read.
func (s *session) readFailed(err error) {
	switch {
	case s.takenOver.Load():
		s.result = connlog.TakenOver
		s.log.Info("maildrop taken over by a newer session of the user")
	case errors.Is(err, errShutdown):
		s.result = connlog.Shutdown
		s.w.out.timeout = shutdownWriteTimeout
		s.w.writeErr(CodeSysTemp, "server shutting down, try again later")
		s.w.flush()
	case isTimeout(err) && s.state == stateAuthorization && !s.w.readBy.IsZero() && !time.Now().Before(s.w.readBy):
		// PreauthTimeout: not logged in in time. Like the autologout,
		// no response.
		s.result = connlog.PreauthTimeout
		s.log.Info("pop3 client did not log in in time", zap.Duration("preauth_timeout", s.cfg.PreauthTimeout))
	case isTimeout(err):
		// RFC 1939 §3 autologout: no response, no UPDATE.
		s.result = connlog.IdleTimeout
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrClosedPipe):
		s.result = connlog.Dropped
	default:
		s.result = connlog.Dropped
		s.log.Debug("read failed", zap.Error(err))
	}
}

// badCommandLimit is the bad-command allowance of the session's state.
func (s *session) badCommandLimit() int {
	if s.state == stateAuthorization {
		return s.cfg.PreauthBadCommandLimit
	}
	return s.cfg.BadCommandLimit
}

// bad answers a bad command and reports whether the bad command limit is
// reached (the session ends).
func (s *session) bad(text string) bool {
	s.cfg.Observer.Error("")
	s.badCommands++
	if s.badCommands >= s.badCommandLimit() {
		s.w.writeErr("", text+"; too many invalid commands, closing connection")
		s.w.flush()
		s.result = connlog.TooManyBadCommands
		s.log.Info("too many invalid commands")
		return true
	}
	s.w.writeErr("", text)
	return false
}

// dispatch runs one command and applies the state transition it asks for. It
// reports whether the session is over.
func (s *session) dispatch(cmd command) (done bool) {
	spec, ok := commands[cmd.name]
	switch {
	case cmd.name == "PROXY":
		// A PROXY protocol v1 header from a peer the listener does not
		// trust (listeners[].proxy_protocol): refused, never honoured.
		s.log.Warn("PROXY header from an untrusted peer refused")
		s.w.writeErr("", "PROXY protocol not accepted from this address")
		s.w.flush()
		s.result = connlog.ProxyRefused
		return true
	case s.state == stateAuthorization && preauth.IsHTTPMethod(cmd.name):
		// An HTTP request line (a browser, or an ALPACA-style
		// cross-protocol attack): closed at once, without an answer another
		// protocol's client could take for its own.
		s.log.Info("pop3 client spoke HTTP: connection closed")
		s.result = connlog.ProtocolMismatch
		return true
	case !ok:
		return s.bad("unknown command")
	case s.state&spec.states == 0:
		return s.bad("command not valid in " + s.state.String() + " state")
	case len(cmd.args) < spec.minArgs || (spec.maxArgs >= 0 && len(cmd.args) > spec.maxArgs):
		return s.bad("wrong number of arguments")
	}
	s.log.Debug("command", zap.String("cmd", cmd.name)) // never the arguments: PASS, AUTH
	s.cfg.Observer.Command(cmd.name)
	tr, err := spec.run(s, cmd)
	if err != nil && tr != abort {
		code, text, logCause := reply(err)
		s.cfg.Observer.Error(code)
		if logCause {
			s.log.Warn("command failed", zap.String("cmd", cmd.name), zap.Error(err))
		}
		var se syntaxError
		if errors.As(err, &se) && tr == stay {
			return s.bad(text)
		}
		s.w.writeErr(code, text)
	}
	switch tr {
	case stay:
		return false
	case toTransaction:
		s.state = stateTransaction
		s.w.readBy = time.Time{} // logged in: only the autologout timer from now on
		s.watchTakeover()
		return false
	case toUpdate:
		s.state = stateUpdate
		s.update()
		return true
	case hangUp:
		s.w.flush()
		return true
	default: // abort
		if err != nil {
			s.log.Debug("connection aborted", zap.String("cmd", cmd.name), zap.Error(err))
		}
		if s.result == "" {
			s.result = connlog.Error
		}
		return true
	}
}

// update is the UPDATE state (RFC 1939 §6): the deletions marked in this
// session are committed, and only these. It runs under a context that a
// shutdown does not cancel: the client's QUIT was received.
func (s *session) update() {
	var del []int
	for n := 1; n < len(s.deleted); n++ {
		if s.deleted[n] {
			del = append(del, n)
		}
	}
	ctx := context.WithoutCancel(s.ctx)
	err := s.md.Commit(ctx, del)
	takenOver := err != nil && s.wasTakenOver()
	// Release the maildrop (and its lock) before answering, so a client
	// that reconnects right after +OK is not told [IN-USE].
	s.closeMaildrop()
	var ne notExpunged
	switch {
	case errors.As(err, &ne) && ne.NotExpunged():
		// Honest, and +OK: the messages are flagged \Deleted, so no later
		// POP3 session lists them again, which is all a POP3 client can
		// observe of a deletion; but the server still holds them (the
		// backend cannot expunge exactly these without UIDPLUS, RFC 4315,
		// and a plain EXPUNGE would remove other clients' \Deleted
		// messages). An -ERR would make clients report a failure, or
		// retry deletions that did take effect for POP3.
		s.log.Warn("messages flagged \\Deleted, not removed: the backend cannot expunge them alone",
			zap.Int("deleted", len(del)), zap.Error(err))
		s.w.writeOK("mailgate signing off (" + strconv.Itoa(len(del)) +
			" messages marked deleted; the server keeps them flagged \\Deleted until it expunges them)")
		s.result = connlog.Quit
	case takenOver:
		// A newer session took the maildrop over between this QUIT's read
		// and its UPDATE: nothing was committed (RFC 1939 §6), and the
		// session ends as taken over, though with an answer.
		s.log.Info("maildrop taken over by a newer session of the user", zap.Int("deleted", len(del)))
		s.w.writeErr(CodeSysTemp, textPartialCommit)
		s.result = connlog.TakenOver
	case err != nil:
		// RFC 1939 §6: "-ERR some deleted messages not removed".
		s.log.Warn("commit failed", zap.Int("deleted", len(del)), zap.Error(err))
		s.w.writeErr(CodeSysTemp, textPartialCommit)
		s.result = connlog.CommitFailed
	default:
		s.w.writeOK("mailgate signing off (" + strconv.Itoa(len(del)) + " messages deleted)")
		s.result = connlog.Quit
		if len(del) > 0 {
			s.log.Info("messages deleted", zap.Int("deleted", len(del)))
		}
	}
	s.w.flush()
}

// closeMaildrop ends the maildrop without changes, once.
func (s *session) closeMaildrop() {
	if s.md == nil {
		return
	}
	if err := s.md.Close(); err != nil {
		s.log.Warn("closing maildrop failed", zap.Error(err))
	}
	s.md = nil
}

// end releases the maildrop and writes the session's log line.
func (s *session) end() {
	if s.stopWatch != nil {
		close(s.stopWatch)
	}
	s.closeMaildrop()
	if s.result == "" {
		s.result = connlog.Error
	}
	// The user is in s.log once known.
	s.log.Info("session end",
		zap.Duration("duration", time.Since(s.started)),
		zap.Int("commands", s.commands),
		zap.Int64("bytes_out", s.w.bytesOut()),
		zap.Bool("tls", s.tls),
		s.result.Field(),
	)
}

// cmdQUIT: in AUTHORIZATION the session just ends (RFC 1939 §4); in
// TRANSACTION the dispatcher enters UPDATE.
func (s *session) cmdQUIT(command) (transition, error) {
	if s.state == stateTransaction {
		return toUpdate, nil
	}
	s.w.writeOK("mailgate signing off")
	s.result = connlog.Quit
	return hangUp, nil
}

// cmdCAPA lists the capabilities (RFC 2449 §5) valid now. After STLS the
// client must ask again (RFC 2595 §4); STLS is then gone from the list.
func (s *session) cmdCAPA(command) (transition, error) {
	s.w.writeOK("capability list follows")
	s.w.writeLine("TOP")
	s.w.writeLine("UIDL")
	s.w.writeLine("RESP-CODES")
	s.w.writeLine("AUTH-RESP-CODE")
	s.w.writeLine("PIPELINING")
	// RFC 2449 §6.7: the server does not delete mail on its own.
	s.w.writeLine("EXPIRE NEVER")
	if s.state == stateAuthorization {
		if s.plaintextAllowed() {
			s.w.writeLine("USER")
			s.w.writeLine("SASL PLAIN LOGIN")
		}
		if s.cfg.TLSConfig != nil && !s.tls {
			s.w.writeLine("STLS")
		}
	}
	s.w.writeLine("IMPLEMENTATION mailgate")
	s.w.writeEnd()
	return stay, nil
}

func (s *session) cmdNOOP(command) (transition, error) {
	s.w.writeOK("")
	return stay, nil
}

// totals counts the messages not marked deleted and their octets (RFC 1939
// §5: deleted messages are not counted).
func (s *session) totals() (count int, octets int64) {
	for n := 1; n <= s.md.Len(); n++ {
		if !s.deleted[n] {
			count++
			octets += s.md.Size(n)
		}
	}
	return count, octets
}

func (s *session) cmdSTAT(command) (transition, error) {
	count, octets := s.totals()
	s.w.writeOK(strconv.Itoa(count) + " " + strconv.FormatInt(octets, 10))
	return stay, nil
}

// msgNumber parses a message-number argument (RFC 1939 §3, §5): decimal,
// 1..Len, not marked deleted.
func (s *session) msgNumber(arg string) (int, error) {
	n, ok := parseNumber(arg)
	if !ok {
		return 0, syntaxError("invalid message number")
	}
	if n < 1 || n > s.md.Len() {
		return 0, &Error{Text: "no such message"}
	}
	if s.deleted[n] {
		return 0, &Error{Text: "message " + strconv.Itoa(n) + " already deleted"}
	}
	return n, nil
}

// parseNumber parses a non-negative decimal number of ASCII digits. Numbers
// too big for an int saturate at the maximum.
func parseNumber(arg string) (int, bool) {
	if arg == "" {
		return 0, false
	}
	n := 0
	const maxInt = int(^uint(0) >> 1)
	for i := 0; i < len(arg); i++ {
		c := arg[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int(c - '0')
		if n > (maxInt-d)/10 {
			n = maxInt
			continue
		}
		n = n*10 + d
	}
	return n, true
}

// cmdLIST: RFC 1939 §5, a message's size in octets.
func (s *session) cmdLIST(cmd command) (transition, error) {
	return s.scanListing(cmd, func() string {
		count, octets := s.totals()
		return strconv.Itoa(count) + " messages (" + strconv.FormatInt(octets, 10) + " octets)"
	}, func(n int) string { return strconv.FormatInt(s.md.Size(n), 10) })
}

// cmdUIDL: RFC 1939 §7. The unique-ids are 0x21-0x7E, so a listing line
// never starts with "." and needs no stuffing.
func (s *session) cmdUIDL(cmd command) (transition, error) {
	return s.scanListing(cmd, func() string { return "unique-id listing follows" }, s.md.UIDL)
}

// scanListing answers LIST and UIDL: with a message number, "+OK n info(n)";
// without, +OK with header() and then "n info(n)" for each message not
// marked deleted (RFC 1939 §5, §7).
func (s *session) scanListing(cmd command, header func() string, info func(n int) string) (transition, error) {
	if len(cmd.args) == 1 {
		n, err := s.msgNumber(cmd.args[0])
		if err != nil {
			return stay, err
		}
		s.w.writeOK(strconv.Itoa(n) + " " + info(n))
		return stay, nil
	}
	s.w.writeOK(header())
	for n := 1; n <= s.md.Len(); n++ {
		if !s.deleted[n] {
			s.w.writeLine(strconv.Itoa(n) + " " + info(n))
		}
	}
	s.w.writeEnd()
	return stay, nil
}

func (s *session) cmdDELE(cmd command) (transition, error) {
	n, err := s.msgNumber(cmd.args[0])
	if err != nil {
		return stay, err
	}
	s.deleted[n] = true // only marked: RFC 1939 §6 removes it in UPDATE
	s.w.writeOK("message " + strconv.Itoa(n) + " deleted")
	return stay, nil
}

func (s *session) cmdRSET(command) (transition, error) {
	clear(s.deleted)
	count, octets := s.totals()
	s.w.writeOK("maildrop has " + strconv.Itoa(count) + " messages (" + strconv.FormatInt(octets, 10) + " octets)")
	return stay, nil
}

func (s *session) cmdRETR(cmd command) (transition, error) {
	n, err := s.msgNumber(cmd.args[0])
	if err != nil {
		return stay, err
	}
	rc, err := s.md.Retr(s.ctx, n)
	if err != nil {
		return stay, err
	}
	return s.sendBody(rc, rc, strconv.FormatInt(s.md.Size(n), 10)+" octets", n)
}

// cmdTOP: RFC 1939 §7, TOP msg n: the header, the blank line and the first
// n lines of the body.
func (s *session) cmdTOP(cmd command) (transition, error) {
	n, err := s.msgNumber(cmd.args[0])
	if err != nil {
		return stay, err
	}
	lines, ok := parseNumber(cmd.args[1])
	if !ok {
		return stay, syntaxError("invalid number of lines")
	}
	rc, err := s.md.Top(s.ctx, n, lines)
	if err != nil {
		return stay, err
	}
	return s.sendBody(newTopReader(rc, lines), rc, "top of message follows", n)
}

// sendBody answers +OK status and streams r dot-stuffed, then closes c. The
// first bytes are read before the +OK, so a message that turns out to be
// gone, or a backend that fails at once, still gets a clean -ERR and the
// session goes on. A failure after the +OK cannot be reported in POP3: the
// connection is closed without the terminating ".", so the client does not
// take a truncated message for a whole one.
func (s *session) sendBody(r io.Reader, c io.Closer, status string, n int) (transition, error) {
	defer c.Close()
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp

	first, rerr := readSome(r, buf)
	if rerr != nil && rerr != io.EOF {
		return stay, rerr
	}
	s.w.writeOK(status)
	dw := s.w.dotWriter()
	if _, err := dw.Write(buf[:first]); err != nil {
		s.result = connlog.Dropped
		return abort, err
	}
	for rerr == nil {
		var k int
		k, rerr = r.Read(buf)
		if k > 0 {
			if _, err := dw.Write(buf[:k]); err != nil {
				s.result = connlog.Dropped
				return abort, err
			}
		}
	}
	if rerr != io.EOF {
		// Logged whatever the error: the client sees a cut connection.
		s.log.Warn("message body failed mid-transfer, closing connection", zap.Int("msg", n), zap.Error(rerr))
		s.result = connlog.BackendError
		s.w.flush() // what was sent so far, without the terminator
		return abort, nil
	}
	if err := dw.Close(); err != nil {
		s.result = connlog.Dropped
		return abort, err
	}
	return stay, nil
}

// readSome reads until it has at least one byte or an error.
func readSome(r io.Reader, buf []byte) (int, error) {
	for range 100 {
		n, err := r.Read(buf)
		if n > 0 || err != nil {
			if n > 0 && err == io.EOF {
				err = nil // the next Read repeats io.EOF
			}
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
