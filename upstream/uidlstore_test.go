package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func openTestBolt(t *testing.T, maxBytes int64) (*UIDLBolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "uidl.db")
	s, err := OpenUIDLBolt(path, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestUIDLBoltStore(t *testing.T) {
	ctx := context.Background()
	s, path := openTestBolt(t, 0)
	k := UIDLKey{User: "alice@example.org", Mailbox: "INBOX"}
	if b, err := s.Load(ctx, k); b != nil || err != nil {
		t.Fatalf("empty store: %q, %v", b, err)
	}
	put := func(k UIDLKey, v string) {
		t.Helper()
		if err := s.Update(ctx, k, func([]byte) ([]byte, error) { return []byte(v), nil }); err != nil {
			t.Fatal(err)
		}
	}
	put(k, "one")
	put(UIDLKey{User: k.User, Mailbox: "Other"}, "two")
	put(UIDLKey{User: "bob", Mailbox: "INBOX"}, "three")
	if b, _ := s.Load(ctx, k); string(b) != "one" {
		t.Fatalf("Load = %q", b)
	}
	// fn sees the current record; its error aborts.
	boom := errors.New("boom")
	err := s.Update(ctx, k, func(old []byte) ([]byte, error) {
		if string(old) != "one" {
			t.Errorf("fn got %q", old)
		}
		return nil, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	// A second process cannot open the file, and says why.
	if _, err := OpenUIDLBolt(path, 0); err == nil || !strings.Contains(err.Error(), "open in another process") {
		t.Fatalf("second open: %v", err)
	}
	n, err := s.Drop(k.User)
	if err != nil || n != 2 {
		t.Fatalf("Drop = %d, %v; want 2 maps", n, err)
	}
	if b, _ := s.Load(ctx, k); b != nil {
		t.Fatalf("dropped user still has %q", b)
	}
	st, err := s.Stats()
	if err != nil || st.Users != 1 || st.Maps != 1 || st.Corrupt != 1 || st.Bytes != int64(len("INBOX")+len("three")) {
		t.Fatalf("Stats = %+v, %v", st, err)
	}
	// The store survives a restart.
	s.Close()
	s2, err := OpenUIDLBolt(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if b, _ := s2.Load(ctx, UIDLKey{User: "bob", Mailbox: "INBOX"}); string(b) != "three" {
		t.Fatalf("after reopening: %q", b)
	}
}

// At max_bytes no new map is made; existing maps still change.
func TestUIDLBoltFull(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestBolt(t, 20)
	k := UIDLKey{User: "alice", Mailbox: "INBOX"}
	set := func(k UIDLKey, n int) error {
		return s.Update(ctx, k, func([]byte) ([]byte, error) { return bytes.Repeat([]byte("x"), n), nil })
	}
	if err := set(k, 10); err != nil {
		t.Fatal(err)
	}
	if err := set(UIDLKey{User: "bob", Mailbox: "INBOX"}, 10); !errors.Is(err, ErrUIDLStoreFull) {
		t.Fatalf("new map over the bound: %v, want ErrUIDLStoreFull", err)
	}
	if err := set(k, 40); err != nil {
		t.Fatalf("an existing map must go on: %v", err)
	}
	if n, _ := s.Drop("alice"); n != 1 {
		t.Fatal("Drop")
	}
	if err := set(UIDLKey{User: "bob", Mailbox: "INBOX"}, 10); err != nil {
		t.Fatalf("after Drop there is room: %v", err)
	}
}

// Concurrent sessions of many users (and of one user) through one store.
func TestUIDLBoltConcurrent(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestBolt(t, 0)
	var wg sync.WaitGroup
	for u := range 8 {
		for range 4 {
			wg.Go(func() {
				k := UIDLKey{User: fmt.Sprintf("user%d", u), Mailbox: "INBOX"}
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
		if b, _ := s.Load(ctx, UIDLKey{User: fmt.Sprintf("user%d", u), Mailbox: "INBOX"}); len(b) != 100 {
			t.Errorf("user%d: %d updates survived, want 100", u, len(b))
		}
	}
}

var headerFetchRE = regexp.MustCompile(`UID FETCH .*BODY\.PEEK\[HEADER\]`)

// The map through a maildrop on the in-memory backend: the first session
// shows FormatUIDL's UIDLs; the next costs no header FETCH; a recreated
// INBOX (new UIDVALIDITY) and a move to another backend with the same
// UIDVALIDITY keep every UIDL; a new message gets one never shown before.
func TestMaildropUIDLMap(t *testing.T) {
	msgs := []string{"Subject: a\r\n\r\none\r\n", "Subject: b\r\n\r\ntwo\r\n", "Subject: a\r\n\r\none\r\n"}
	b := newBackend(t, nil)
	u := b.addUser("alice", "pw", msgs...)
	store, _ := openTestBolt(t, 0)
	open := func(b *backend, name, login string) *Maildrop {
		t.Helper()
		mds := NewMaildrops(testConfig(nil), testLogger(t))
		mds.UseUIDLMap(store)
		tg := b.target()
		tg.Name, tg.Login = name, login
		md, err := mds.Open(context.Background(), tg, fastTimeouts, "alice", "pw")
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { md.Close(); mds.Wait() })
		return md
	}
	list := func(md *Maildrop) []string {
		var out []string
		for n := 1; n <= md.Len(); n++ {
			out = append(out, md.UIDL(n))
		}
		md.Close()
		return out
	}
	first := list(open(b, "one", "Alice"))
	var want []string
	for uid := range uint32(3) {
		s, _ := FormatUIDL("%08Xu%08Xv", uid+1, 1)
		want = append(want, s)
	}
	if !slices.Equal(first, want) {
		t.Fatalf("first session %q, want FormatUIDL's %q", first, want)
	}
	b.mu.Lock()
	b.commands = nil
	b.mu.Unlock()
	if again := list(open(b, "one", "ALICE")); !slices.Equal(again, first) {
		t.Fatalf("second session %q, want %q", again, first)
	}
	if b.sawCommand(headerFetchRE) {
		t.Fatal("a session with UIDVALIDITY unchanged fetched headers")
	}

	// A rebuilt mailbox: same messages, new UIDVALIDITY and UIDs.
	if err := u.Delete("INBOX"); err != nil {
		t.Fatal(err)
	}
	if err := u.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	for _, m := range append([]string{"Subject: new\r\n\r\n"}, msgs...) {
		if _, err := u.Append("INBOX", strings.NewReader(m), &imap.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rebuilt := list(open(b, "one", "alice"))
	if !slices.Equal(rebuilt[1:], first) || slices.Contains(first, rebuilt[0]) {
		t.Fatalf("after the rebuild %q, want a new UIDL then %q", rebuilt, first)
	}
	// Another backend, UIDVALIDITY 1 again, the same four messages.
	b2 := newBackend(t, nil)
	b2.addUser("alice", "pw", append([]string{"Subject: new\r\n\r\n"}, msgs...)...)
	if moved := list(open(b2, "two", "alice")); !slices.Equal(moved, rebuilt) {
		t.Fatalf("after the move %q, want %q", moved, rebuilt)
	}
}
