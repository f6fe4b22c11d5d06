package imap

import "errors"

// Errors a Backend returns, so that the front answers a refused login with
// the right response code (RFC 5530). Wrapped errors carry the cause for the
// log; the client never sees it.
var (
	// ErrAuthFailed: the credentials were refused. NO [AUTHENTICATIONFAILED].
	ErrAuthFailed = errors.New("authentication failed")
	// ErrInUse: the backend refuses a session while another one holds the
	// mailbox. NO [INUSE].
	ErrInUse = errors.New("mailbox in use")
	// ErrUnavailable: the backend could not be reached or failed; try
	// later. NO [UNAVAILABLE].
	ErrUnavailable = errors.New("backend unavailable")
)

// publicText is implemented by errors whose text was written for the
// client, such as an external authentication service's refusal.
type publicText interface{ PublicText() string }

// responseCoded is implemented by backend refusals that carry the backend's
// RFC 5530 response code.
type responseCoded interface{ ResponseCode() string }

// userCodes are the backend codes of a refused login that are passed on to
// the client as they are: they tell the user what to do (RFC 5530 §3), and
// they say no more than AUTHENTICATIONFAILED about the password.
var userCodes = map[string]bool{
	"AUTHENTICATIONFAILED": true,
	"AUTHORIZATIONFAILED":  true,
	"EXPIRED":              true,
	"CONTACTADMIN":         true,
}

// respError is a tagged reply other than OK.
type respError struct {
	status string // NO or BAD
	code   string // response code, or empty
	text   string
}

func (e *respError) Error() string { return e.status + " " + e.text }

var (
	errNotAuth  = &respError{"BAD", "", "Log in first (LOGIN or AUTHENTICATE)"}
	errPrivacy  = &respError{"NO", "PRIVACYREQUIRED", "Use STARTTLS (or port 993) before logging in"}
	errArgs     = &respError{"BAD", "", "Invalid arguments"}
	errAuthFail = &respError{"NO", "AUTHENTICATIONFAILED", "Authentication failed"}
	errInUse    = &respError{"NO", "INUSE", "Mailbox in use, try again later"}
	errUnavail  = &respError{"NO", "UNAVAILABLE", "Service temporarily unavailable, try again later"}
)

// reply is the one place that turns an error into the tagged reply a client
// sees: our own *respError as it is, the Backend's sentinels to their codes.
// nil means the error is not a reply but the end of the session (the
// connection failed, the client logged out, shutdown).
func reply(err error) *respError {
	var re *respError
	switch {
	case errors.As(err, &re):
		return re
	case errors.Is(err, ErrAuthFailed):
		r := *errAuthFail
		var rc responseCoded
		if errors.As(err, &rc) && userCodes[rc.ResponseCode()] {
			r.code = rc.ResponseCode()
		}
		var pt publicText
		if errors.As(err, &pt) && pt.PublicText() != "" {
			r.text = pt.PublicText()
		}
		return &r
	case errors.Is(err, ErrInUse):
		return errInUse
	case errors.Is(err, ErrUnavailable):
		return errUnavail
	}
	return nil
}
