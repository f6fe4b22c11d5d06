package pop3

import (
	"context"
	"io"
	"net"
)

// Backend opens a user's maildrop. The gateway implements it by routing the
// user and logging in to the user's IMAP server.
//
// Errors of Open and of the Maildrop's methods should wrap the sentinels of
// errors.go (ErrAuthFailed, ErrInUse, ErrUnavailable, ErrMessageGone,
// ErrPartialCommit) so the session can answer with the right response code;
// anything else is answered -ERR [SYS/TEMP].
type Backend interface {
	Open(ctx context.Context, login Login) (Maildrop, error)
}

// Login is what the client presented.
type Login struct {
	User     string
	Password string
	Remote   net.Addr // the client (after PROXY protocol)
	Local    net.Addr // the address the client connected to
	Attempt  int      // 1 for the connection's first login attempt, then 2, 3...
}

// namedMaildrop is implemented by maildrops that can name their backend for
// the session's logs.
type namedMaildrop interface{ Backend() string }

// lockHolder is implemented by maildrops whose lock a newer session may take
// over (pop3.lock: takeover): the session reports when it waits for a
// command, and ends when TakenOver is closed. A nil TakenOver means no
// session can take this one over.
type lockHolder interface {
	Waiting(waiting bool)
	TakenOver() <-chan struct{}
}

// notExpunged is implemented by Commit's error when the deleted messages were
// only flagged \Deleted on the backend, not removed (no UIDPLUS): QUIT
// answers +OK, saying so.
type notExpunged interface{ NotExpunged() bool }

// publicText is implemented by errors whose text was written for the
// client, such as an external authentication service's refusal.
type publicText interface{ PublicText() string }

// Maildrop is one session's fixed view of a mailbox (RFC 1939 §4). Message
// numbers are 1..Len(), fixed when the maildrop was opened.
type Maildrop interface {
	Len() int
	// Size is the exact octet count RETR delivers (CRLF line ends, before
	// dot-stuffing).
	Size(n int) int64
	// UIDL is the message's unique-id (RFC 1939 §7).
	UIDL(n int) string
	// Retr returns the message's bytes exactly as the backend stores them; it
	// counts as reading the message (\Seen when configured).
	Retr(ctx context.Context, n int) (io.ReadCloser, error)
	// Top returns the header, the blank line after it and at least the
	// first lines lines of the body, with the same bytes as Retr, without
	// marking the message read (RFC 1939 §7). It may return more, up to the
	// whole message: the session cuts at the lines-th line itself.
	Top(ctx context.Context, n, lines int) (io.ReadCloser, error)
	// Commit applies the deletions of a QUIT in TRANSACTION state (the UPDATE
	// state of RFC 1939 §6). deleted lists message numbers, ascending.
	Commit(ctx context.Context, deleted []int) error
	// Close ends the maildrop without changing anything and releases the
	// lock. It is always called, also after Commit.
	Close() error
}
