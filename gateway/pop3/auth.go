package pop3

// auth.go is the AUTHORIZATION state: USER/PASS (RFC 1939 §7), AUTH (RFC
// 5034) with PLAIN and LOGIN, and STLS (RFC 2595 §4).
//
// Credentials are never logged: not the PASS argument, not a SASL line, not
// a decoded response. Logs carry the user name and the mechanism only.

import (
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway/internal/connlog"
	"mailgate/gateway/internal/preauth"
	"mailgate/gateway/internal/saslserver"
)

// plaintextAllowed: RFC 2595 §2.3 and RFC 8314 — passwords travel only over
// TLS unless the listener allows cleartext.
func (s *session) plaintextAllowed() bool { return s.tls || s.cfg.AllowPlaintextAuth }

// refusePlaintext answers USER/PASS/AUTH on a cleartext connection. It
// counts as a bad command, so a client cannot loop on it forever.
// The first refusal of a session is logged with the user it named (if any)
// and why: otherwise an operator sees only a session that ended without a
// login.
func (s *session) refusePlaintext(user, cmd string) (transition, error) {
	hint := "plaintext authentication disallowed on an unencrypted connection; use a TLS connection"
	if s.cfg.TLSConfig != nil {
		hint = "plaintext authentication disallowed on an unencrypted connection; use STLS first"
	}
	if !s.loggedPlaintextRefusal {
		s.loggedPlaintextRefusal = true
		s.log.Warn("login refused: no TLS", zap.String("user", user), zap.String("reason", cmd+" before TLS"), zap.String("hint", hint))
	}
	s.badCommands++
	if s.badCommands >= s.badCommandLimit() {
		s.result = connlog.TooManyBadCommands
		return hangUp, &Error{Code: CodeAuth, Text: hint}
	}
	return stay, &Error{Code: CodeAuth, Text: hint}
}

func (s *session) cmdUSER(cmd command) (transition, error) {
	if !s.plaintextAllowed() {
		return s.refusePlaintext(cmd.args[0], "USER")
	}
	// Whether the mailbox exists is not revealed: PASS fails the same way.
	s.pendingUser = cmd.args[0]
	s.w.writeOK("send PASS")
	return stay, nil
}

// cmdPASS takes the rest of the line as the password: RFC 1939 §7 allows
// spaces in it.
func (s *session) cmdPASS(cmd command) (transition, error) {
	if !s.plaintextAllowed() {
		return s.refusePlaintext("", "PASS")
	}
	if s.pendingUser == "" {
		return stay, syntaxError("USER first")
	}
	user := s.pendingUser
	s.pendingUser = "" // RFC 1939 §7: after a failed PASS the client starts again with USER
	return s.login("USER", user, cmd.rest)
}

// cmdAUTH: RFC 5034. Without an argument it lists the mechanisms (the
// pre-RFC form many clients still send). "AUTH mech [initial-response]",
// where "=" is an empty initial response; a client line "*" cancels.
// RFC 5034 §4: the AUTH line itself stays within the 255-octet command limit
// (a client whose initial response does not fit must leave it out), while
// the base64 response lines that follow may be longer (maxSASLLine).
func (s *session) cmdAUTH(cmd command) (transition, error) {
	if len(cmd.args) == 0 {
		s.w.writeOK("SASL mechanisms follow")
		if s.plaintextAllowed() {
			s.w.writeLine("PLAIN")
			s.w.writeLine("LOGIN")
		}
		s.w.writeEnd()
		return stay, nil
	}
	if !s.plaintextAllowed() {
		return s.refusePlaintext("", "AUTH")
	}
	s.pendingUser = ""
	mech := strings.ToUpper(cmd.args[0])
	creds, srv := saslserver.New(mech)
	if srv == nil {
		return stay, syntaxError("unsupported authentication mechanism")
	}
	var resp []byte // nil: no initial response
	if len(cmd.args) == 2 {
		var err error
		if resp, err = saslserver.Decode(cmd.args[1], true); err != nil {
			return s.authFailed(mech, "", err)
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			return s.authFailed(mech, preauth.LogUser(creds.User), err)
		}
		if done {
			break
		}
		s.w.writeChallenge(saslserver.Encode(challenge))
		line, err := s.w.readSASLLine()
		switch {
		case errors.Is(err, errLineTooLong):
			return s.authFailed(mech, preauth.LogUser(creds.User), err)
		case err != nil:
			s.readFailed(err)
			return abort, nil
		case line == "*":
			// RFC 5034 §4: the server MUST reject the AUTH command.
			return stay, &Error{Text: "authentication cancelled"}
		}
		if resp, err = saslserver.Decode(line, false); err != nil {
			return s.authFailed(mech, preauth.LogUser(creds.User), err)
		}
	}
	return s.login(mech, creds.User, creds.Pass)
}

// login opens the user's maildrop with the credentials the client gave.
func (s *session) login(mech, user, pass string) (transition, error) {
	if preauth.UserTooLong(user) {
		// Refused before routing and the limiters see it: a hostile name
		// costs no memory in their tables (issue 11, finding 5).
		return s.authFailed(mech, preauth.LogUser(user), errors.New("user name too long"))
	}
	if user == "" || pass == "" || strings.ContainsAny(user, "\x00\r\n") {
		return s.authFailed(mech, user, errors.New("empty or malformed credentials"))
	}
	md, err := s.cfg.Backend.Open(s.ctx, Login{User: user, Password: pass, Remote: s.conn.RemoteAddr(), Local: s.conn.LocalAddr(), Attempt: s.authFailures + 1})
	if err != nil {
		code, _, logCause := reply(err)
		if code == CodeAuth {
			return s.authFailed(mech, user, err)
		}
		if !logCause { // else the dispatcher logs it
			s.log.Info("login refused", zap.String("user", user), zap.String("mech", mech), zap.Error(err))
		}
		return stay, err
	}
	s.md = md
	s.user = user
	s.deleted = make([]bool, md.Len()+1)
	s.log = s.log.With(zap.String("user", user))
	if nm, ok := md.(namedMaildrop); ok {
		s.log = s.log.With(zap.String("backend", nm.Backend()))
	}
	count, octets := s.totals()
	s.log.Info("logged in", zap.String("mech", mech), zap.Int("messages", count), zap.Int64("octets", octets))
	s.w.writeOK("maildrop has " + itoa(int64(count)) + " messages (" + itoa(octets) + " octets)")
	return toTransaction, nil
}

// authFailed delays, counts the failure and answers -ERR [AUTH] (RFC 3206
// §4); after maxAuthFailures the connection is closed.
func (s *session) authFailed(mech, user string, cause error) (transition, error) {
	s.authFailures++
	s.log.Info("authentication failed",
		zap.String("user", user), zap.String("mech", mech),
		zap.Int("failures", s.authFailures), zap.Error(cause))
	if d := s.cfg.AuthFailureDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
		}
	}
	text := textAuthFailed
	var pt publicText
	if errors.As(cause, &pt) && pt.PublicText() != "" {
		text = pt.PublicText()
	}
	if s.authFailures >= maxAuthFailures {
		s.result = connlog.TooManyAuthFailures
		return hangUp, &Error{Code: CodeAuth, Text: text + "; too many failures, closing connection"}
	}
	return stay, &Error{Code: CodeAuth, Text: text}
}

// cmdSTLS: RFC 2595 §4. Refused if the client pipelined anything after STLS:
// those bytes were sent in cleartext and must not be taken as sent over TLS
// (the STARTTLS command-injection attack). After the handshake every
// pre-TLS state is forgotten and the client must send CAPA again.
func (s *session) cmdSTLS(command) (transition, error) {
	switch {
	case s.cfg.TLSConfig == nil:
		return stay, &Error{Text: "STLS not available"}
	case s.tls:
		return stay, &Error{Text: "TLS already active"}
	case s.w.buffered():
		s.log.Warn("STLS refused: commands pipelined after STLS")
		return stay, &Error{Text: "STLS must be the last command sent before the TLS handshake"}
	}
	s.w.writeOK("begin TLS negotiation")
	err := s.w.startTLS(s.cfg.TLSConfig, s.cfg.TLSHandshakeTimeout)
	s.cfg.Observer.TLSHandshake(err)
	if err != nil {
		s.log.Info("TLS handshake failed", zap.Error(err))
		s.result = connlog.TLSFailed
		return abort, nil
	}
	s.tls = true
	s.pendingUser = ""
	return stay, nil
}
