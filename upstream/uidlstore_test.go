package upstream

import (
	"context"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
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

// What only the embedded store does: one process at a time opens the file,
// and the maps survive a restart. The rest is uidlstoretest's suite
// (TestUIDLBoltConformance).
func TestUIDLBoltFile(t *testing.T) {
	ctx := context.Background()
	s, path := openTestBolt(t, 0)
	k := UIDLKey{User: "bob", Mailbox: "INBOX"}
	if err := s.Update(ctx, k, func([]byte) ([]byte, error) { return []byte("three"), nil }); err != nil {
		t.Fatal(err)
	}
	// A second process cannot open the file, and says why.
	if _, err := OpenUIDLBolt(path, 0); err == nil || !strings.Contains(err.Error(), "open in another process") {
		t.Fatalf("second open: %v", err)
	}
	s.Close()
	s2, err := OpenUIDLBolt(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if b, _ := s2.Load(ctx, k); string(b) != "three" {
		t.Fatalf("after reopening: %q", b)
	}
	if st, err := s2.Stats(); err != nil || st.Bytes != int64(len("INBOX")+len("three")) || st.Measured != -1 || st.FileBytes == 0 {
		t.Fatalf("Stats after reopening = %+v, %v", st, err)
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
