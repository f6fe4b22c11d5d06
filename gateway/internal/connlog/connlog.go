// Package connlog is what the POP3 and IMAP fronts write into their
// per-connection logs the same way: the connection id, unique within the
// process across listeners and protocols, and the one vocabulary of the
// "result" field of the "session end" line.
//
//	id := connlog.NextID()
//	log := base.With(zap.Uint64("conn", id), ...)
//	...
//	log.Info("session end", connlog.IdleTimeout.Field(), ...)
package connlog

import (
	"sync/atomic"

	"go.uber.org/zap"
)

var ids atomic.Uint64

// NextID returns a new connection id: 1, 2, 3... for the life of the
// process, shared by every listener of either protocol, so an id names one
// connection in the process's logs.
func NextID() uint64 { return ids.Add(1) }

// Result is how a session ended: the "result" field of its "session end"
// log line. The values are part of the log format users search and alert
// on; add one only for an end none of these describes.
type Result string

// The results, for both fronts unless noted.
const (
	// Quit: POP3 QUIT answered, in AUTHORIZATION or after an UPDATE that
	// removed every message marked deleted (RFC 1939 §6).
	Quit Result = "quit"
	// Logout: IMAP LOGOUT before login (RFC 9051 §6.1.3). After login the
	// gateway relays bytes without reading commands: see ClientClosed and
	// BackendClosed.
	Logout Result = "logout"
	// Dropped: the connection went away or broke without a QUIT or LOGOUT:
	// EOF, reset, a write that failed or a client that stopped reading (in
	// the IMAP relay, a broken connection on either side).
	Dropped Result = "dropped"
	// IdleTimeout: no command (POP3 autologout, RFC 1939 §3), or no byte in
	// either direction (IMAP relay), for the idle timeout.
	IdleTimeout Result = "idle_timeout"
	// PreauthTimeout: the not-authenticated phase outlasted its timeout.
	PreauthTimeout Result = "preauth_timeout"
	// Shutdown: the gateway is shutting down.
	Shutdown Result = "shutdown"
	// TooManyBadCommands: the bad command limit was reached.
	TooManyBadCommands Result = "too_many_bad_commands"
	// TooManyAuthFailures: POP3, too many failed logins on one connection.
	TooManyAuthFailures Result = "too_many_auth_failures"
	// CommandTooLong: IMAP, a command line or literal over the pre-login
	// size caps (POP3 answers a long line -ERR and goes on).
	CommandTooLong Result = "command_too_long"
	// ProtocolMismatch: before login the client spoke another protocol (an
	// HTTP request line: a browser, or an ALPACA-style cross-protocol
	// attack); the connection was ended at once.
	ProtocolMismatch Result = "protocol_mismatch"
	// TLSFailed: the TLS handshake (implicit, STLS or STARTTLS) failed.
	TLSFailed Result = "tls_failed"
	// ProxyRefused: a PROXY protocol header from a peer the listener does
	// not trust.
	ProxyRefused Result = "proxy_refused"
	// BackendError: the backend failed so that the session could not go on
	// (POP3: a message body failed mid-transfer; IMAP relay: the backend
	// stopped reading).
	BackendError Result = "backend_error"
	// CommitFailed: POP3 QUIT in TRANSACTION, but the UPDATE failed: some
	// deleted messages were not removed (RFC 1939 §6).
	CommitFailed Result = "commit_failed"
	// TakenOver: POP3, a newer session of the user took the maildrop lock
	// (pop3.lock: takeover) while this one waited for a command; it ended
	// without UPDATE (RFC 1939 §6).
	TakenOver Result = "taken_over"
	// ClientClosed: IMAP relay, the client closed its side first and the
	// session then ended.
	ClientClosed Result = "client_closed"
	// BackendClosed: IMAP relay, the backend closed the connection (after a
	// LOGOUT, or its own autologout).
	BackendClosed Result = "backend_closed"
	// Error: the gateway could not serve the connection (a configuration
	// or programming error; logged with the cause).
	Error Result = "error"
	// Panic: a handler panicked; the session ended, the process did not.
	Panic Result = "panic"
)

// Field is r as the "result" log field.
func (r Result) Field() zap.Field { return zap.String("result", string(r)) }
