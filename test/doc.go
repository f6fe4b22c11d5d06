// Package test holds mailgate's end-to-end tests: the whole gateway, in
// process, in front of a real Dovecot started from a generated configuration
// (package test/dovecot), driven by raw POP3 transcripts (test/pop3client) and
// by real clients (curl, fetchmail, Python's poplib).
//
//	go test -race ./test/...
//
// Each test names the DESIGN.md invariant it proves (TestInvariant1_...).
// Without Dovecot (or without root) the tests skip loudly; with CI=true they
// fail instead, so CI can never pass by skipping. The load tool lives in
// test/mailbench.
package test
