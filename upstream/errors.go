package upstream

import "errors"

// Errors returned by this package, so the protocol fronts can answer with the
// right response code (POP3 [AUTH], [IN-USE], [SYS/TEMP]; IMAP
// AUTHENTICATIONFAILED, UNAVAILABLE). Wrapped errors carry the cause for logs;
// the fronts never show the cause to a client.
var (
	// ErrAuthFailed: the backend rejected the user's credentials.
	ErrAuthFailed = errors.New("authentication failed")
	// ErrInUse: another session of this user holds the maildrop lock.
	ErrInUse = errors.New("maildrop in use")
	// ErrUnavailable: the backend could not be reached or failed; try later.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrMessageGone: the message was expunged by another client.
	ErrMessageGone = errors.New("message no longer exists")
	// ErrPartialCommit: some deletions of a QUIT were not applied.
	ErrPartialCommit = errors.New("some deleted messages not removed")
)
