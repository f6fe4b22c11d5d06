// Package imape2e holds the end-to-end tests of mailgate's IMAP front: the
// whole gateway in process (test/harness) in front of a real Dovecot
// (test/dovecot), driven by raw IMAP transcripts, go-imap's imapclient, curl
// and Python's imaplib.
//
//	go test -race ./test/imap/
//
// One Dovecot (with TLS, signed by its own test CA) serves the whole package;
// every test starts its own gateway and its own users. The gateway routes a
// user by domain to one of several backend entries that all reach that
// Dovecot differently (cleartext, STARTTLS, implicit TLS, an untrusted
// certificate, a recording tap, a refused port, a silent listener), so one
// configuration covers every backend mode.
//
// Without Dovecot (or without root) the tests skip loudly; with CI=true they
// fail instead. A client program that is missing (curl, python3) skips its
// test the same way. The load tool for IMAP is test/imapbench.
package imape2e
