package pop3

import "errors"

// Errors a Backend and its Maildrop return, so that the session answers with
// the right response code. Wrapped errors carry the cause for the log; the
// client never sees it.
var (
	// ErrAuthFailed: the credentials were refused. -ERR [AUTH].
	ErrAuthFailed = errors.New("authentication failed")
	// ErrInUse: another session holds the maildrop (RFC 1939 §4). -ERR [IN-USE].
	ErrInUse = errors.New("maildrop in use")
	// ErrUnavailable: the backend could not be reached or failed; try
	// later. -ERR [SYS/TEMP].
	ErrUnavailable = errors.New("backend unavailable")
	// ErrMessageGone: the message was expunged by another client; the
	// session goes on. -ERR.
	ErrMessageGone = errors.New("message no longer exists")
	// ErrPartialCommit: some deletions of a QUIT were not applied
	// (RFC 1939 §6). -ERR [SYS/TEMP] some deleted messages not removed.
	ErrPartialCommit = errors.New("some deleted messages not removed")
)

// Response codes of RFC 2449 §8 and RFC 3206, written in brackets after
// -ERR. Clients use them to tell a wrong password ([AUTH]) from a locked
// maildrop ([IN-USE]) or a passing failure ([SYS/TEMP]).
const (
	CodeAuth    = "AUTH"     // RFC 3206 §4: the credentials were rejected
	CodeSysTemp = "SYS/TEMP" // RFC 3206 §3: a temporary failure, try again later
	CodeSysPerm = "SYS/PERM" // RFC 3206 §3: a permanent failure, do not retry
	CodeInUse   = "IN-USE"   // RFC 2449 §8.1.2: the maildrop is locked by another session
)

// Error is a negative reply: -ERR [Code] Text. Err is the cause; it goes to
// the log, never to the client.
type Error struct {
	Code string // a response code, or "" for none
	Text string // client-facing; fixed text, never an internal error message
	Err  error
}

func (e *Error) Error() string {
	s := e.Text
	if e.Code != "" {
		s = "[" + e.Code + "] " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// syntaxError is a malformed or misplaced command. It is answered -ERR and
// counts towards Config.BadCommandLimit.
type syntaxError string

func (e syntaxError) Error() string { return string(e) }

// Fixed client-facing texts.
const (
	textTempFailure   = "temporary server failure, try again later"
	textAuthFailed    = "authentication failed"
	textInUse         = "maildrop is locked by another session"
	textMessageGone   = "message was deleted by another client"
	textPartialCommit = "some deleted messages not removed"
)

// reply maps an error to the -ERR line the client sees: our own *Error and
// syntaxError as they are, the sentinels above to their codes, anything
// else to a generic [SYS/TEMP]. logCause reports whether the error is
// unexpected and its cause must be logged.
func reply(err error) (code, text string, logCause bool) {
	var pe *Error
	var se syntaxError
	switch {
	case errors.As(err, &pe):
		return pe.Code, pe.Text, pe.Err != nil && pe.Code == CodeSysTemp
	case errors.As(err, &se):
		return "", string(se), false
	case errors.Is(err, ErrAuthFailed):
		return CodeAuth, textAuthFailed, false
	case errors.Is(err, ErrInUse):
		return CodeInUse, textInUse, false
	case errors.Is(err, ErrMessageGone):
		return "", textMessageGone, false
	case errors.Is(err, ErrPartialCommit):
		return CodeSysTemp, textPartialCommit, true
	default: // ErrUnavailable and anything unexpected
		return CodeSysTemp, textTempFailure, true
	}
}
