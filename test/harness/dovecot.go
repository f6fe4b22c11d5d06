package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"mailgate/test/dovecot"
)

// backend is the one Dovecot of the package whose TestMain is Main.
var backend dovecot.Shared

// Main is the TestMain of an end-to-end package whose tests share one
// Dovecot, started with opts by the first test that calls Dovecot: it runs
// the tests, stops the Dovecot if one was started, removes the shared CA's
// files and exits with the tests' status.
//
//	func TestMain(m *testing.M) { harness.Main(m, dovecot.Options{}) }
func Main(m *testing.M, opts dovecot.Options) {
	backend.Options = opts
	code := backend.Run(m)
	RemoveCAFiles()
	os.Exit(code)
}

// Dovecot returns the package's Dovecot (see Main), starting it on first
// use. When it cannot start, t is skipped or failed as by
// dovecot.SkipOrFail.
func Dovecot(t testing.TB) *dovecot.Server {
	t.Helper()
	return backend.Get(t)
}

// Account is a user of the package's Dovecot that one test made for itself.
type Account struct{ User, Pass string }

var userSeq atomic.Int64

// NewAccount adds to the package's Dovecot a user of the test's own,
// prefix + a sequence number and random letters + "@" + domain, with a
// random password registered with Secret.
func NewAccount(t testing.TB, prefix, domain string) Account {
	t.Helper()
	dc := Dovecot(t)
	var rnd [8]byte
	rand.Read(rnd[:])
	a := Account{User: fmt.Sprintf("%s%d-%s@%s", prefix, userSeq.Add(1), hex.EncodeToString(rnd[:3]), domain),
		Pass: "pw-" + hex.EncodeToString(rnd[:])}
	Secret(a.Pass)
	if err := dc.AddUser(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	return a
}

// Inbox reads the account's INBOX straight from the package's Dovecot, with
// the messages' bodies when bodies.
func (a Account) Inbox(t testing.TB, bodies bool) *dovecot.MailboxState {
	t.Helper()
	st, err := Dovecot(t).Mailbox(a.User, a.Pass, "INBOX", bodies)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
