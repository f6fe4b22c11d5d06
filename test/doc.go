// Package test holds mailgate's end-to-end tests: the whole gateway, in
// process, in front of a real Dovecot started from a generated configuration
// (package test/dovecot), driven by raw POP3 transcripts (test/pop3client) and
// by real clients (curl, fetchmail, Python's poplib).
//
//	go test -race ./test/...
//
// Each test names the invariant it proves (TestInvariant1_...):
//
//  1. Only messages that a session DELEted, and that session reached UPDATE
//     (QUIT in TRANSACTION), are ever removed (RFC 1939 §6).
//  2. RETR sends the backend's bytes exactly: CRLF line ends, dot-stuffed on
//     the wire, a final CRLF added only where the message lacks one (RFC 1939
//     §3); LIST's size equals what RETR delivers (RFC 1939 §11).
//  3. A message's UIDL never changes while its UIDVALIDITY holds; UIDLs are
//     unique in a maildrop, 1-70 characters of 0x21-0x7E (RFC 1939 §7).
//  4. One user's cached body is never served to another user's session.
//  5. Credentials never appear in logs, metrics or error messages.
//
// Other packages prove the rest: a bad or hostile client costs bounded
// memory, gets a clear error and never disturbs other sessions (test/hostile);
// a slow, failing or vanishing backend costs the session concerned alone,
// within the configured timeout (test/faults).
//
// Without Dovecot (or without root) the tests skip loudly; with CI=true they
// fail instead, so CI can never pass by skipping. The load tool lives in
// test/mailbench.
package test
