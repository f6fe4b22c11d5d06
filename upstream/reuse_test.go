package upstream

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// logins counts the login commands the backend received.
func (b *backend) logins() int {
	lines, _ := b.commandLog()
	n := 0
	for _, l := range lines {
		if strings.Contains(l, " AUTHENTICATE ") || strings.Contains(l, " LOGIN ") {
			n++
		}
	}
	return n
}

// waitParked waits until the pool holds n connections (Close parks in the
// background).
func waitParked(t *testing.T, mds *Maildrops, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for mds.reuse.len() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections parked, want %d", mds.reuse.len(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// quit is a session's end with QUIT: Commit, then Close.
func quit(t *testing.T, md *Maildrop, deleted ...int) {
	t.Helper()
	if err := md.Commit(context.Background(), deleted); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	md.Close()
}

// reuseMaildrops is a Maildrops with pop3.reuse of ttl over b.
func reuseMaildrops(t *testing.T, ttl time.Duration) *Maildrops {
	mds := NewMaildrops(testConfig(func(c *MaildropConfig) { c.Reuse = ttl }), testLogger(t))
	t.Cleanup(mds.Wait)
	return mds
}

// pollOnce opens a maildrop, checks its size, ends it with QUIT (deleting
// deleted) and waits until its connection is parked.
func pollOnce(t *testing.T, mds *Maildrops, tgt Target, user, password string, want int, deleted ...int) {
	t.Helper()
	md, err := mds.Open(context.Background(), tgt, fastTimeouts, user, password)
	if err != nil {
		t.Fatal(err)
	}
	if md.Len() != want {
		t.Fatalf("%d messages, want %d", md.Len(), want)
	}
	quit(t, md, deleted...)
	waitParked(t, mds, 1)
}

func reuseTarget(b *backend, client string) Target {
	t := b.target()
	t.ClientAddr = &net.TCPAddr{IP: net.ParseIP(client), Port: 40000}
	return t
}

// pop3.reuse never crosses users, passwords or clients: with alice's
// connection parked after her QUIT, a wrong password for alice goes to the
// backend and fails there, bob logs in with his own login, and alice from
// another address logs in anew; only alice, with her password, from her
// address, gets the parked connection, with a fresh snapshot.
func TestReuseNeverCrossesUsersOrPasswords(t *testing.T) {
	b := newBackend(t, nil)
	alice := b.addUser("alice", "pw", msgs(2, 100)...)
	b.addUser("bob", "pw2", msgs(3, 100)...)
	mds := reuseMaildrops(t, 30*time.Second)
	ctx := context.Background()
	here := reuseTarget(b, "192.0.2.1")

	pollOnce(t, mds, here, "alice", "pw", 2)
	if n := b.logins(); n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}

	// A wrong password: the backend decides, and refuses.
	if _, err := mds.Open(ctx, here, fastTimeouts, "alice", "wrong"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("alice with a wrong password: %v, want ErrAuthFailed", err)
	}
	if n := b.logins(); n != 2 {
		t.Fatalf("%d logins after the wrong password, want 2 (it must reach the backend)", n)
	}
	// Another user: his own login and his own mailbox.
	md, err := mds.Open(ctx, here, fastTimeouts, "bob", "pw2")
	if err != nil {
		t.Fatal(err)
	}
	if md.Len() != 3 || b.logins() != 3 {
		t.Fatalf("bob: %d messages after %d logins, want 3 after 3", md.Len(), b.logins())
	}
	md.Close() // without QUIT: not parked
	// Alice from another client address.
	md, err = mds.Open(ctx, reuseTarget(b, "192.0.2.99"), fastTimeouts, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if b.logins() != 4 {
		t.Fatalf("alice from another address: %d logins, want 4", b.logins())
	}
	md.Close()
	if mds.reuse.len() != 1 {
		t.Fatalf("%d parked, want alice's first connection only", mds.reuse.len())
	}

	// Alice again, right password, same address: no login, and the
	// snapshot is fresh (a message appended and one expunged meanwhile by
	// another client).
	alice.Append("INBOX", strings.NewReader(msgs(1, 120)[0]), &imap.AppendOptions{})
	other := b.client("alice", "pw")
	if err := other.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.UIDExpunge(imap.UIDSetNum(1)).Collect(); err != nil {
		t.Fatal(err)
	}
	loginsBefore := b.logins() // the other client's LOGIN included
	md, err = mds.Open(ctx, here, fastTimeouts, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if n := b.logins(); n != loginsBefore {
		t.Fatalf("alice's second session logged in again (%d logins, want %d): the parked connection was not reused", n, loginsBefore)
	}
	if mds.reuse.len() != 0 {
		t.Fatal("the reused connection is still parked")
	}
	if md.Len() != 2 || md.UID(1) != 2 || md.UID(2) != 3 {
		t.Fatalf("reused snapshot: %d messages, UIDs %d %d; want UIDs 2 and 3", md.Len(), md.UID(1), md.UID(2))
	}
	if got := readAll(t)(md.Retr(ctx, 2)); len(got) == 0 {
		t.Fatal("RETR on the reused connection returned nothing")
	}
}

// pop3.reuse saves the login of every poll but the first; a session that
// ended without QUIT is not parked, and the parked connection is logged out
// when its time is up.
func TestReuseSavesLogins(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 100)...)
	mds := reuseMaildrops(t, 30*time.Second)
	ctx := context.Background()
	here := reuseTarget(b, "192.0.2.1")
	for range 5 {
		pollOnce(t, mds, here, "alice", "pw", 3)
	}
	if n := b.logins(); n != 1 {
		t.Fatalf("5 polls cost %d backend logins, want 1", n)
	}
	// A DELE'd message is gone for the next poll, which reuses the
	// connection still.
	pollOnce(t, mds, here, "alice", "pw", 3, 1)
	md, err := mds.Open(ctx, here, fastTimeouts, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if md.Len() != 2 || b.logins() != 1 {
		t.Fatalf("after DELE 1: %d messages, %d logins; want 2, 1", md.Len(), b.logins())
	}
	md.Close() // no QUIT: the connection is logged out, not parked
	mds.Wait()
	if mds.reuse.len() != 0 {
		t.Fatal("a session that ended without QUIT was parked")
	}

	// Expiry: a short pop3.reuse logs the parked connection out.
	short := reuseMaildrops(t, 50*time.Millisecond)
	pollOnce(t, short, here, "alice", "pw", 2)
	waitParked(t, short, 0)
	short.Wait() // its LOGOUT, in the background
	lines, _ := b.commandLog()
	if last := lines[len(lines)-1]; !strings.HasSuffix(last, " LOGOUT") {
		t.Fatalf("the expired connection's last command is %q, want LOGOUT", last)
	}
}

// A parked connection that died is not reused: the check fails and the
// session logs in anew.
func TestReuseDeadConnectionLogsIn(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(1, 100)...)
	mds := reuseMaildrops(t, 30*time.Second)
	here := reuseTarget(b, "192.0.2.1")
	pollOnce(t, mds, here, "alice", "pw", 1)
	mds.reuse.mu.Lock()
	for _, pk := range mds.reuse.byKey {
		pk.raw.Close() // the backend hung up
	}
	mds.reuse.mu.Unlock()
	md, err := mds.Open(context.Background(), here, fastTimeouts, "alice", "pw")
	if err != nil {
		t.Fatalf("Open after the parked connection died: %v", err)
	}
	defer md.Close()
	if md.Len() != 1 || b.logins() != 2 {
		t.Fatalf("%d messages after %d logins, want 1 after 2", md.Len(), b.logins())
	}
}
