// Package uidlstoretest is the conformance suite of the UIDL map's stores
// (upstream.UIDLStore with the operator's Drop and Stats): the embedded
// store (upstream.UIDLBolt) and the cluster's (gateway/cluster.UIDLStore)
// run the same checks.
//
//	uidlstoretest.Run(t, func(t *testing.T, maxBytes int64) []uidlstoretest.Store {
//		return []uidlstoretest.Store{openStore(t, maxBytes)}
//	})
package uidlstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"mailgate/upstream"
)

// Store is what the suite checks: the sessions' interface and the
// operator's commands (mailgate uidl-drop, uidl-stats).
type Store interface {
	upstream.UIDLStore
	Drop(user string) (int, error)
	Stats() (upstream.UIDLStoreStats, error)
}

// Open returns a new, empty store bounded by maxBytes (0: unbounded), as one
// or more instances that share its content (the instances of a cluster on
// one Redis; one for the embedded store). The suite spreads its writers
// over them.
type Open func(t *testing.T, maxBytes int64) []Store

// Run runs the suite, one subtest a behaviour.
func Run(t *testing.T, open Open) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, open Open)
	}{
		{"Basics", testBasics},
		{"RealRecords", testRealRecords},
		{"Full", testFull},
		{"Concurrent", testConcurrent},
		{"OneKey", testOneKey},
		{"Cancelled", testCancelled},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// Put sets k's record to v.
func Put(t testing.TB, s upstream.UIDLStore, k upstream.UIDLKey, v string) {
	t.Helper()
	if err := s.Update(context.Background(), k, func([]byte) ([]byte, error) { return []byte(v), nil }); err != nil {
		t.Fatal(err)
	}
}

// checkBytes checks what Stats says the records weigh: the count the bound
// checks and, where the store measures apart, the measure.
func checkBytes(t *testing.T, s Store, want int64) {
	t.Helper()
	st, err := s.Stats()
	if err != nil || st.Bytes != want || st.Measured >= 0 && st.Measured != want {
		t.Fatalf("Stats = %+v, %v; want %d bytes", st, err, want)
	}
}

func testBasics(t *testing.T, open Open) {
	ctx := context.Background()
	ss := open(t, 0)
	s := ss[0]
	k := upstream.UIDLKey{User: "alice@example.org", Mailbox: "INBOX"}
	if b, err := s.Load(ctx, k); b != nil || err != nil {
		t.Fatalf("empty store: %q, %v", b, err)
	}
	Put(t, s, k, "one")
	Put(t, s, upstream.UIDLKey{User: k.User, Mailbox: "Other"}, "two")
	Put(t, s, upstream.UIDLKey{User: "bob", Mailbox: "INBOX"}, "three")
	if b, _ := ss[len(ss)-1].Load(ctx, k); string(b) != "one" {
		t.Fatalf("Load = %q", b)
	}
	// fn sees the current record; its error aborts, and nothing is written.
	boom := errors.New("boom")
	err := s.Update(ctx, k, func(old []byte) ([]byte, error) {
		if string(old) != "one" {
			t.Errorf("fn got %q", old)
		}
		return []byte("never"), boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	if b, _ := s.Load(ctx, k); string(b) != "one" {
		t.Fatalf("after an aborted Update: %q", b)
	}
	// fn gets nil for a key without a record; an empty user is refused.
	carol := upstream.UIDLKey{User: "carol", Mailbox: "INBOX"}
	err = s.Update(ctx, carol, func(old []byte) ([]byte, error) {
		if old != nil {
			t.Errorf("fn got %q for a new key", old)
		}
		return []byte("four"), nil
	})
	if b, lerr := s.Load(ctx, carol); err != nil || string(b) != "four" || lerr != nil {
		t.Fatalf("new key: Update %v, Load %q, %v", err, b, lerr)
	}
	if err := s.Update(ctx, upstream.UIDLKey{Mailbox: "INBOX"}, func([]byte) ([]byte, error) { return []byte("x"), nil }); err == nil {
		t.Fatal("Update of an empty user succeeded")
	}
	if n, err := s.Drop("carol"); n != 1 || err != nil {
		t.Fatalf("Drop(carol) = %d, %v", n, err)
	}

	n, err := s.Drop(k.User)
	if err != nil || n != 2 {
		t.Fatalf("Drop = %d, %v; want 2 maps", n, err)
	}
	if b, _ := s.Load(ctx, k); b != nil {
		t.Fatalf("dropped user still has %q", b)
	}
	if n, err := s.Drop(k.User); n != 0 || err != nil {
		t.Fatalf("Drop again = %d, %v; want 0", n, err)
	}
	st, err := s.Stats()
	if err != nil || st.Users != 1 || st.Maps != 1 || st.Corrupt != 1 {
		t.Fatalf("Stats = %+v, %v; want 1 user with 1 corrupt map", st, err)
	}
	checkBytes(t, s, int64(len("INBOX")+len("three")))
}

// Records as upstream writes them: Stats decodes them and counts their
// messages.
func testRealRecords(t *testing.T, open Open) {
	ctx := context.Background()
	s := open(t, 0)[0]
	msgs := []upstream.UIDLImportMessage{
		{UIDL: "old-1", Size: 10, Header: []byte("Subject: a\r\n\r\n")},
		{UIDL: "old-2", Size: 20, Header: []byte("Subject: b\r\n\r\n")},
		{UIDL: "old-3", Size: 30, Header: []byte("Subject: c\r\n\r\n")},
	}
	k := upstream.UIDLKey{User: "dave", Mailbox: "INBOX"}
	if _, err := upstream.ImportUIDLs(ctx, s, k, msgs, false); err != nil {
		t.Fatal(err)
	}
	if _, err := upstream.ImportUIDLs(ctx, s, k, msgs[:1], false); !errors.Is(err, upstream.ErrUIDLMapExists) {
		t.Fatalf("a second import without replace: %v, want ErrUIDLMapExists", err)
	}
	if _, err := upstream.ImportUIDLs(ctx, s, upstream.UIDLKey{User: "erin", Mailbox: "INBOX"}, msgs[1:], false); err != nil {
		t.Fatal(err)
	}
	rec, _ := s.Load(ctx, k)
	if st, err := s.Stats(); err != nil || st.Users != 2 || st.Maps != 2 || st.Messages != 5 || st.Corrupt != 0 {
		t.Fatalf("Stats = %+v, %v; want 2 users, 2 maps, 5 messages", st, err)
	}
	if _, err := upstream.ImportUIDLs(ctx, s, k, msgs[:1], true); err != nil {
		t.Fatal(err)
	}
	now, _ := s.Load(ctx, k)
	if len(now) >= len(rec) {
		t.Fatalf("replaced record %d bytes, was %d", len(now), len(rec))
	}
	if st, _ := s.Stats(); st.Messages != 3 {
		t.Fatalf("after the replace: %+v", st)
	}
	other, _ := s.Load(ctx, upstream.UIDLKey{User: "erin", Mailbox: "INBOX"})
	checkBytes(t, s, int64(2*len("INBOX")+len(now)+len(other)))
}

// At max_bytes no new map is made; existing maps still change; Drop makes
// room.
func testFull(t *testing.T, open Open) {
	ctx := context.Background()
	s := open(t, 20)[0]
	k := upstream.UIDLKey{User: "alice", Mailbox: "INBOX"}
	set := func(k upstream.UIDLKey, n int) error {
		return s.Update(ctx, k, func([]byte) ([]byte, error) { return bytes.Repeat([]byte("x"), n), nil })
	}
	if err := set(k, 10); err != nil {
		t.Fatal(err)
	}
	if err := set(upstream.UIDLKey{User: "bob", Mailbox: "INBOX"}, 10); !errors.Is(err, upstream.ErrUIDLStoreFull) {
		t.Fatalf("new map over the bound: %v, want ErrUIDLStoreFull", err)
	}
	if err := set(upstream.UIDLKey{User: "alice", Mailbox: "Other"}, 10); !errors.Is(err, upstream.ErrUIDLStoreFull) {
		t.Fatalf("a user's new mailbox over the bound: %v, want ErrUIDLStoreFull", err)
	}
	if err := set(k, 40); err != nil {
		t.Fatalf("an existing map must go on: %v", err)
	}
	checkBytes(t, s, 45)
	if n, _ := s.Drop("alice"); n != 1 {
		t.Fatal("Drop")
	}
	if err := set(upstream.UIDLKey{User: "bob", Mailbox: "INBOX"}, 10); err != nil {
		t.Fatalf("after Drop there is room: %v", err)
	}
	checkBytes(t, s, 15)
}

// Concurrent sessions of many users (and of one user), spread over the
// instances.
func testConcurrent(t *testing.T, open Open) {
	ctx := context.Background()
	ss := open(t, 0)
	var wg sync.WaitGroup
	for u := range 8 {
		for g := range 4 {
			wg.Go(func() {
				s := ss[g%len(ss)]
				k := upstream.UIDLKey{User: fmt.Sprintf("user%d", u), Mailbox: "INBOX"}
				for range 25 {
					err := s.Update(ctx, k, func(old []byte) ([]byte, error) { return append(slices.Clone(old), 'x'), nil })
					if err != nil {
						t.Error(err)
						return
					}
					if _, err := s.Load(ctx, k); err != nil {
						t.Error(err)
					}
				}
			})
		}
	}
	wg.Wait()
	for u := range 8 {
		if b, _ := ss[0].Load(ctx, upstream.UIDLKey{User: fmt.Sprintf("user%d", u), Mailbox: "INBOX"}); len(b) != 100 {
			t.Errorf("user%d: %d updates survived, want 100", u, len(b))
		}
	}
	if st, err := ss[len(ss)-1].Stats(); err != nil || st.Users != 8 {
		t.Errorf("Stats = %+v, %v; want 8 users", st, err)
	}
	checkBytes(t, ss[0], 8*(100+int64(len("INBOX"))))
}

// Writers on one key, spread over the instances, each update adding a token
// of its own: every token is in the final record, once (no update lost,
// none applied twice).
func testOneKey(t *testing.T, open Open) {
	ctx := context.Background()
	ss := open(t, 0)
	k := upstream.UIDLKey{User: "shared", Mailbox: "INBOX"}
	var wg sync.WaitGroup
	const writers, updates = 6, 20
	for w := range writers {
		wg.Go(func() {
			for i := range updates {
				tok := fmt.Sprintf("%d.%d;", w, i)
				err := ss[w%len(ss)].Update(ctx, k, func(old []byte) ([]byte, error) {
					return append(slices.Clone(old), tok...), nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b, err := ss[0].Load(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	toks := strings.Split(strings.TrimSuffix(string(b), ";"), ";")
	if len(toks) != writers*updates {
		t.Fatalf("%d tokens in the record, want %d", len(toks), writers*updates)
	}
	seen := map[string]bool{}
	for _, tok := range toks {
		if seen[tok] {
			t.Fatalf("token %s applied twice", tok)
		}
		seen[tok] = true
	}
}

// A cancelled context: Load and Update fail with the cancellation, fn does
// not run, nothing is written.
func testCancelled(t *testing.T, open Open) {
	s := open(t, 0)[0]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	k := upstream.UIDLKey{User: "heidi", Mailbox: "INBOX"}
	if _, err := s.Load(ctx, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Load under a cancelled context: %v", err)
	}
	ran := false
	err := s.Update(ctx, k, func([]byte) ([]byte, error) { ran = true; return []byte("v"), nil })
	if !errors.Is(err, context.Canceled) || ran {
		t.Errorf("Update under a cancelled context: %v (fn ran: %v)", err, ran)
	}
	if b, _ := s.Load(context.Background(), k); b != nil {
		t.Errorf("a cancelled Update wrote %q", b)
	}
}
