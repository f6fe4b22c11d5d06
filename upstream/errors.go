package upstream

import (
	"errors"
	"fmt"
)

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

// NotExpungedError is Commit's answer when the deleted messages were flagged
// \Deleted but not removed, because removing exactly them needs UID EXPUNGE
// (UIDPLUS, RFC 4315) and a plain EXPUNGE would also remove other clients'
// \Deleted messages. They are out of every later POP3 session's maildrop
// (the snapshot leaves \Deleted messages out); the backend's own expiry or
// an IMAP client's EXPUNGE removes them. The fronts tell the client what
// happened (NotExpunged).
type NotExpungedError struct {
	UIDs string // the UIDs left flagged
}

func (e *NotExpungedError) Error() string {
	return "backend lacks UIDPLUS: deleted messages flagged \\Deleted, not expunged: UIDs " + e.UIDs
}

// NotExpunged marks the error for gateway/pop3, which cannot import this
// package.
func (e *NotExpungedError) NotExpunged() bool { return true }

// ErrUnreachable: the server refused or did not answer the TCP connection. It
// is an ErrUnavailable; routing takes such a server out of its pool for a
// while, which it must not do for other failures (a wrong password, a
// locked maildrop) that say nothing about the server's health.
var ErrUnreachable = fmt.Errorf("%w: server unreachable", ErrUnavailable)
