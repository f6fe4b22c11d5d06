package upstream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The maildrop follows the backend: a body is served only for a message the
// backend still has, with the size the snapshot announced.

// commandCount is how many commands the backend has received.
func (b *backend) commandCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.commands)
}

// expungeElsewhere removes uid as another IMAP client would.
func expungeElsewhere(t *testing.T, b *backend, uid imap.UID) {
	t.Helper()
	other := b.client("alice", "pw")
	if err := other.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.UIDExpunge(imap.UIDSetNum(uid)).Collect(); err != nil {
		t.Fatal(err)
	}
}

// TOP n (the body is now cached), another client expunges n, RETR n: -ERR,
// and the session goes on. The backend reports the expunge only in answer to
// a command, so the body, older than staleAfter, costs a NOOP first.
func TestCachedBodyOfExpungedMessageIsGone(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 200)...)
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }))
	mds.staleAfter = 50 * time.Millisecond
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Top(context.Background(), 2, 0))
	expungeElsewhere(t, b, 2)
	time.Sleep(100 * time.Millisecond)
	for _, read := range []func(context.Context, int) (interface{ Close() error }, error){
		func(ctx context.Context, n int) (interface{ Close() error }, error) { return md.Retr(ctx, n) },
		func(ctx context.Context, n int) (interface{ Close() error }, error) { return md.Top(ctx, n, 0) },
	} {
		if rc, err := read(context.Background(), 2); !errors.Is(err, ErrMessageGone) {
			if rc != nil {
				rc.Close()
			}
			t.Fatalf("cached body of an expunged message: err = %v, want ErrMessageGone", err)
		}
	}
	if got := string(readAll(t)(md.Retr(context.Background(), 3))); got != msg(3, 200) {
		t.Error("message 3: wrong body after the expunge of 2")
	}
}

// A body fetched ahead before another client expunged its message is not
// served.
func TestFetchedAheadBodyOfExpungedMessageIsGone(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(4, 2000)...)
	// No cache: the bodies fetched ahead stay with the fetcher.
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.Cache.MaxBytes = size(0) }))
	mds.staleAfter = 50 * time.Millisecond
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Retr(context.Background(), 1))
	deadline := time.Now().Add(2 * time.Second)
	for b.fetchesOf(2) == 0 || b.fetchesOf(3) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("messages 2 and 3 were not fetched ahead")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the answers are in
	expungeElsewhere(t, b, 2)
	time.Sleep(100 * time.Millisecond)
	if _, err := md.Retr(context.Background(), 2); !errors.Is(err, ErrMessageGone) {
		t.Fatalf("body fetched ahead of an expunged message: err = %v, want ErrMessageGone", err)
	}
	if got := string(readAll(t)(md.Retr(context.Background(), 3))); got != msg(3, 2000) {
		t.Error("message 3: wrong body")
	}
	if n := b.fetchesOf(3); n != 1 {
		t.Errorf("message 3 fetched %d times, want once (ahead)", n)
	}
}

// An EXPUNGE that arrives with the answer to another command is enough: the
// next body is confirmed with one UID SEARCH, without waiting for staleAfter.
func TestExpungeNotificationTriggersCheck(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 200)...)
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }))
	mds.staleAfter = time.Hour
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Top(context.Background(), 1, 0)) // cached
	expungeElsewhere(t, b, 1)
	// The FETCH of 3 carries the EXPUNGE of 1 (imapmemserver reports it
	// then); 3 is still there and is served.
	if got := string(readAll(t)(md.Retr(context.Background(), 3))); got != msg(3, 200) {
		t.Fatal("message 3: wrong body")
	}
	if _, err := md.Retr(context.Background(), 1); !errors.Is(err, ErrMessageGone) {
		t.Fatalf("cached body after an EXPUNGE notification: err = %v, want ErrMessageGone", err)
	}
}

// A message another client flagged \Deleted (Cyrus answers the UID FETCH of
// an expunged message with its body and \Deleted) is gone.
func TestDeletedFlagInFetchIsGone(t *testing.T) {
	for _, flagsFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("flagsFirst=%v", flagsFirst), func(t *testing.T) {
			testDeletedFlagInFetchIsGone(t, &backendOptions{flagsFirst: flagsFirst})
		})
	}
}

// Cyrus sends FLAGS before UID: the \Deleted still counts.
func testDeletedFlagInFetchIsGone(t *testing.T, opts *backendOptions) {
	b, mds, md := openAlice(t, opts, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }), msgs(2, 200)...)
	other := b.client("alice", "pw")
	if err := other.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := md.Retr(context.Background(), 2); !errors.Is(err, ErrMessageGone) {
		t.Fatalf("RETR of a message flagged \\Deleted: err = %v, want ErrMessageGone", err)
	}
	if _, ok := mds.cache.peek(md.key(2)); ok {
		t.Error("the body of a \\Deleted message went to the cache")
	}
	readAll(t)(md.Retr(context.Background(), 1))
	mds.topWhole = -1 << 40 // TOP in parts
	if _, err := md.Top(context.Background(), 2, 3); !errors.Is(err, ErrMessageGone) {
		t.Fatalf("TOP in parts of a message flagged \\Deleted: err = %v, want ErrMessageGone", err)
	}
}

// The common cached RETR makes no backend round trip: a body cached by TOP,
// no EXPUNGE seen, its size as announced, a recent answer. Counted as the
// commands the backend received.
func TestCachedRetrNoRoundTrip(t *testing.T) {
	b, _, md := openAlice(t, nil, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }), msgs(3, 200)...)
	readAll(t)(md.Top(context.Background(), 2, 0))
	before := b.commandCount()
	readAll(t)(md.Retr(context.Background(), 2))
	readAll(t)(md.Top(context.Background(), 2, 0))
	if n := b.commandCount() - before; n != 0 {
		t.Errorf("a cached RETR and TOP sent %d backend commands, want 0", n)
	}
}

// A body whose length differs from RFC822.SIZE is re-checked (NOOP, UID
// SEARCH) before +OK; a message still there is served, the mismatch logged
// at warn with its UID.
func TestSizeMismatchRechecksThenServes(t *testing.T) {
	b := newBackend(t, &backendOptions{sizeLie: 7})
	b.addUser("alice", "pw", msgs(2, 200)...)
	core, logs := observer.New(zap.WarnLevel)
	mds := NewMaildrops(testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }), zap.New(core))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	if got := string(readAll(t)(md.Retr(context.Background(), 1))); got != msg(1, 200) {
		t.Fatal("wrong body")
	}
	if !b.sawCommand(regexpMust(`^\S+ NOOP`)) || !b.sawCommand(regexpMust(`^\S+ UID SEARCH`)) {
		t.Error("a size mismatch was not re-checked with NOOP and UID SEARCH")
	}
	warned := logs.FilterMessageSnippet("RFC822.SIZE differs").FilterField(zap.Uint32("uid", 1)).Len()
	if warned != 1 {
		t.Errorf("%d warnings with the UID for the mismatch, want 1", warned)
	}
	// Confirmed once: the cached body is then served without a check.
	before := b.commandCount()
	readAll(t)(md.Retr(context.Background(), 1))
	if n := b.commandCount() - before; n != 0 {
		t.Errorf("second RETR of a confirmed message sent %d commands", n)
	}
}
