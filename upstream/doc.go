// Package upstream talks to backend IMAP servers: it dials them (cleartext,
// STARTTLS or implicit TLS, certificates verified), logs in with the
// client's own credentials, and, for POP3 clients, presents an IMAP mailbox
// as a POP3 maildrop (RFC 1939) with a shared, byte-bounded body cache.
//
// It knows nothing of POP3 wire syntax: gateway/pop3 declares the maildrop it
// needs (Len, Size, UIDL, Retr, Top, Commit, Close) and *Maildrop provides
// it.
//
//	mds := upstream.NewMaildrops(cfg.POP3, log)
//	md, err := mds.Open(ctx, upstream.Target{Name: "store", Address: "10.1.3.1:993", Config: backendCfg},
//		upstream.Timeouts{Dial: 10 * time.Second, Command: time.Minute}, user, pass)
//	if err != nil { ... } // errors.Is: ErrAuthFailed, ErrInUse, ErrUnavailable
//	defer md.Close()      // releases the lock; deletes nothing
//	rc, err := md.Retr(ctx, 1) // the exact BODY[] bytes; ErrMessageGone if expunged meanwhile
//	...
//	err = md.Commit(ctx, []int{1}) // QUIT: UID STORE \Deleted + UID EXPUNGE of exactly these
//
// How POP3 maps onto IMAP:
//   - Numbers: SELECT, then UID FETCH 1:* (UID RFC822.SIZE FLAGS); messages
//     already \Deleted are left out; message i is the i-th UID. Every later
//     command is by UID, so other clients' EXPUNGEs never renumber.
//   - UIDL: pop3.uidl_format over UID and UIDVALIDITY (FormatUIDL).
//   - Bodies: BODY.PEEK[] streamed into a spool (memory, or an unlinked temp
//     file) so a slow POP3 client never holds the backend connection; the
//     cache keeps small bodies for later sessions of the same user; reading
//     in order fetches ahead with pipelined UID FETCHes.
//   - Expunges elsewhere: a body is served only for a message the backend
//     still has (fetch.go: readBody, confirm): \Deleted in the FETCH answer,
//     an EXPUNGE seen since the last check, a body of another length than
//     RFC822.SIZE, or an old last answer (NOOP) lead to one UID SEARCH over
//     the snapshot before +OK; the common cached RETR costs no round trip.
//   - \Seen: RETR (not TOP) marks, batched into one UID STORE at QUIT or at
//     the end of the session.
//   - Lock (lock.go): one per backend and user, case-folded, per pop3.lock
//     (exclusive, takeover, none); Close releases it at once, Commit marks
//     UPDATE so a takeover never cuts it.
//   - Deletions: only at QUIT (Commit), per pop3.delete, never touching a
//     message the session did not delete.
//
// go-imap's client has no timeouts of its own: every exchange here runs
// under a watchdog that closes the connection when Timeouts.Command (or
// Timeouts.Dial while connecting) passes, and reports ErrUnavailable.
package upstream
