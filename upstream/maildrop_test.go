package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// maildrop is the contract of gateway/pop3.Maildrop, copied here because
// upstream must not import the gateway. If this stops compiling, the two
// have drifted apart.
type maildrop interface {
	Len() int
	Size(n int) int64
	UIDL(n int) string
	Retr(ctx context.Context, n int) (io.ReadCloser, error)
	Top(ctx context.Context, n, lines int) (io.ReadCloser, error)
	Commit(ctx context.Context, deleted []int) error
	Close() error
}

var _ maildrop = (*Maildrop)(nil)

// msg is a realistic message of about size bytes, number i, with a line
// that starts with a dot (dot-stuffing territory).
func msg(i, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: sender@example.org\r\nTo: alice@example.org\r\nSubject: message %d\r\n"+
		"Message-ID: <%d@example.org>\r\n\r\n", i, i)
	b.WriteString(".a line that starts with a dot\r\n")
	for line := 0; b.Len() < size; line++ {
		fmt.Fprintf(&b, "message %d, line %d: the quick brown fox jumps over the lazy dog\r\n", i, line)
	}
	return b.String()
}

func msgs(n, size int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, msg(i, size))
	}
	return out
}

// flagsOf reads a message's flags through another IMAP session.
func flagsOf(t *testing.T, b *backend, user, password string, uid imap.UID) []imap.Flag {
	t.Helper()
	c := b.client(user, password)
	bufs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(bufs) != 1 {
		t.Fatalf("UID %d: %d FETCH responses", uid, len(bufs))
	}
	return bufs[0].Flags
}

// uidsIn lists a mailbox through another IMAP session.
func uidsIn(t *testing.T, b *backend, user, password, mailbox string) []imap.UID {
	t.Helper()
	c := b.client(user, password)
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	data, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	return data.AllUIDs()
}

func setFlag(t *testing.T, b *backend, user, password string, uid imap.UID, flag imap.Flag) {
	t.Helper()
	c := b.client(user, password)
	err := c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{flag}}, nil).Close()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotNumbersByUIDAndSkipsDeleted(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(5, 200)...)
	setFlag(t, b, "alice", "pw", 2, imap.FlagDeleted) // another client's pending deletion
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	if md.Len() != 4 {
		t.Fatalf("Len = %d, want 4 (UID 2 is \\Deleted)", md.Len())
	}
	want := []imap.UID{1, 3, 4, 5}
	for i, uid := range want {
		if got := md.UID(i + 1); got != uid {
			t.Errorf("message %d is UID %d, want %d", i+1, got, uid)
		}
		data := readAll(t)(md.Retr(context.Background(), i+1))
		if string(data) != msg(int(uid), 200) {
			t.Errorf("message %d: wrong body", i+1)
		}
	}
	if md.UID(0) != 0 || md.UIDL(5) != "" || md.Size(-1) != 0 {
		t.Error("out-of-range numbers must give zero values")
	}
	if _, err := md.Retr(context.Background(), 5); err == nil {
		t.Error("Retr(5) of 4 messages succeeded")
	}
}

func TestEmptyMailbox(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw")
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	if md.Len() != 0 {
		t.Fatalf("Len = %d", md.Len())
	}
	if err := md.Commit(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}

func TestUIDL(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 100)...)
	for _, format := range []string{"%08Xu%08Xv", "%u.%v", "x%xu"} {
		mds := NewMaildrops(testConfig(func(c *MaildropConfig) { c.UIDLFormat = format }), testLogger(t))
		t.Cleanup(mds.Wait)
		md := openMaildrop(t, mds, b, "alice", "pw")
		seen := map[string]bool{}
		for n := 1; n <= md.Len(); n++ {
			want, err := FormatUIDL(format, uint32(md.UID(n)), md.uidValidity)
			if err != nil {
				t.Fatal(err)
			}
			if got := md.UIDL(n); got != want || seen[got] {
				t.Errorf("%s: UIDL(%d) = %q, want unique %q", format, n, got, want)
			}
			seen[md.UIDL(n)] = true
		}
		md.Close()
	}
	// Dovecot's default for UID 1, UIDVALIDITY 1.
	if got, _ := FormatUIDL("%08Xu%08Xv", 1, 1); got != "0000000100000001" {
		t.Errorf("default format gives %q", got)
	}
}

// RETR delivers the backend's bytes exactly, whatever they are.
func TestRetrExactBytes(t *testing.T) {
	odd := []string{
		"Subject: no final CRLF\r\n\r\nlast line without CRLF",
		"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n",
		"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße, ℌ𝔢𝔩𝔩𝔬 \xff\x00 binary\r\n",
		"Subject: empty body\r\n\r\n",
		msg(5, 300<<10), // spooled to a file (spool_memory is 64KiB below)
	}
	b := newBackend(t, nil)
	b.addUser("alice", "pw", odd...)
	cfg := testConfig(func(c *MaildropConfig) { c.SpoolMemory = 64 << 10; c.Cache.MaxMessageBytes = 32 << 10 })
	mds := NewMaildrops(cfg, testLogger(t))
	t.Cleanup(mds.Wait)
	mds.spoolDir = t.TempDir()
	md := openMaildrop(t, mds, b, "alice", "pw")
	for n := 1; n <= md.Len(); n++ {
		for _, top := range []bool{false, true} {
			var data []byte
			if top {
				// More lines than any of them has: the whole message.
				data = readAll(t)(md.Top(context.Background(), n, 1<<20))
			} else {
				data = readAll(t)(md.Retr(context.Background(), n))
			}
			if !bytes.Equal(data, []byte(odd[n-1])) {
				t.Errorf("message %d (top=%v): got %d bytes, want %d exactly", n, top, len(data), len(odd[n-1]))
			}
			if md.Size(n) != int64(len(data)) {
				t.Errorf("message %d: Size = %d, body is %d", n, md.Size(n), len(data))
			}
		}
	}
	if ents, _ := os.ReadDir(mds.spoolDir); len(ents) != 0 {
		t.Errorf("spool files left behind: %v", ents)
	}
}

// The body is authoritative: when RFC822.SIZE is wrong, Size reports the
// body's length once it has been fetched.
func TestSizeFollowsTheBody(t *testing.T) {
	b := newBackend(t, &backendOptions{sizeLie: 7})
	b.addUser("alice", "pw", msg(1, 500), msg(2, 500))
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	want := int64(len(msg(1, 500)))
	if md.Size(1) != want+7 {
		t.Fatalf("before RETR Size = %d, want the backend's %d", md.Size(1), want+7)
	}
	data := readAll(t)(md.Retr(context.Background(), 1))
	if int64(len(data)) != want || md.Size(1) != want {
		t.Errorf("after RETR: body %d bytes, Size %d; want both %d", len(data), md.Size(1), want)
	}
	md.Close()
	// The next session knows the exact size from the cache at once.
	md = openMaildrop(t, mds, b, "alice", "pw")
	if md.Size(1) != want {
		t.Errorf("next session: Size = %d, want the cached body's %d", md.Size(1), want)
	}
}

func TestSeenOnRetrNotTop(t *testing.T) {
	for _, end := range []string{"close", "commit"} {
		t.Run(end, func(t *testing.T) {
			b := newBackend(t, nil)
			b.addUser("alice", "pw", msgs(3, 200)...)
			cfg := testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) })
			mds := NewMaildrops(cfg, testLogger(t))
			t.Cleanup(mds.Wait)
			md := openMaildrop(t, mds, b, "alice", "pw")
			readAll(t)(md.Top(context.Background(), 1, 0))
			readAll(t)(md.Retr(context.Background(), 2))
			// Batched: nothing is sent before QUIT or the end.
			if slices.Contains(flagsOf(t, b, "alice", "pw", 2), imap.FlagSeen) {
				t.Error("\\Seen sent at RETR: should be batched")
			}
			if end == "commit" {
				if err := md.Commit(context.Background(), nil); err != nil {
					t.Fatal(err)
				}
			}
			if err := md.Close(); err != nil {
				t.Fatal(err)
			}
			mds.Wait() // the \Seen batch is sent in Close's background clean-up
			if slices.Contains(flagsOf(t, b, "alice", "pw", 1), imap.FlagSeen) {
				t.Error("TOP set \\Seen")
			}
			if !slices.Contains(flagsOf(t, b, "alice", "pw", 2), imap.FlagSeen) {
				t.Error("RETR did not set \\Seen")
			}
			if slices.Contains(flagsOf(t, b, "alice", "pw", 3), imap.FlagSeen) {
				t.Error("an unread message got \\Seen")
			}
		})
	}
}

func TestMarkSeenOff(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(2, 200)...)
	off := false
	mds := NewMaildrops(testConfig(func(c *MaildropConfig) { c.MarkSeen = &off }), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Retr(context.Background(), 1))
	md.Close()
	mds.Wait()
	if slices.Contains(flagsOf(t, b, "alice", "pw", 1), imap.FlagSeen) {
		t.Error("mark_seen: false, yet RETR set \\Seen")
	}
}

// A message expunged by another client gives ErrMessageGone; the session
// goes on, with its numbers unchanged.
func TestExpungedElsewhere(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(4, 200)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")

	other := b.client("alice", "pw")
	if err := other.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.UIDExpunge(imap.UIDSetNum(2)).Collect(); err != nil {
		t.Fatal(err)
	}

	if _, err := md.Retr(context.Background(), 2); !errors.Is(err, ErrMessageGone) {
		t.Fatalf("Retr of an expunged message: err = %v, want ErrMessageGone", err)
	}
	for _, n := range []int{3, 1, 4} {
		data := readAll(t)(md.Retr(context.Background(), n))
		if string(data) != msg(int(md.UID(n)), 200) {
			t.Errorf("message %d: wrong body after another client's EXPUNGE", n)
		}
	}
	// Deleting the gone message as well is not an error.
	if err := md.Commit(context.Background(), []int{2, 3}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	md.Close()
	if got := uidsIn(t, b, "alice", "pw", "INBOX"); !slices.Equal(got, []imap.UID{1, 4}) {
		t.Errorf("left: %v, want [1 4]", got)
	}
}

func TestLockInUse(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(2, 100)...)
	b.addUser("bob", "pw", msgs(2, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md, err := mds.Open(context.Background(), b.target(), fastTimeouts, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mds.Open(context.Background(), b.target(), fastTimeouts, "alice", "pw"); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: err = %v, want ErrInUse", err)
	}
	// A wrong password learns nothing about the lock.
	if _, err := mds.Open(context.Background(), b.target(), fastTimeouts, "alice", "bad"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Open with a bad password while locked: err = %v, want ErrAuthFailed", err)
	}
	// Other users are not affected.
	bob := openMaildrop(t, mds, b, "bob", "pw")
	bob.Close()
	if err := md.Close(); err != nil {
		t.Fatal(err)
	}
	if err := md.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	md = openMaildrop(t, mds, b, "alice", "pw")
	md.Close()
}

func TestCommitExpungeOnlyOurs(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(5, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	// Another client marks UID 5 \Deleted after our snapshot: not ours.
	setFlag(t, b, "alice", "pw", 5, imap.FlagDeleted)
	if err := md.Commit(context.Background(), []int{1, 3}); err != nil {
		t.Fatal(err)
	}
	md.Close()
	if got := uidsIn(t, b, "alice", "pw", "INBOX"); !slices.Equal(got, []imap.UID{2, 4, 5}) {
		t.Errorf("left: %v, want [2 4 5] (the other client's \\Deleted UID 5 must survive)", got)
	}
	if !b.sawCommand(regexpMust(`UID EXPUNGE 1,3$`)) {
		t.Error("no UID EXPUNGE of exactly 1,3")
	}
	if b.sawCommand(regexpMust(`^\S+ EXPUNGE`)) {
		t.Error("a plain EXPUNGE was sent")
	}
}

// Without UIDPLUS, nothing is expunged: the messages stay \Deleted, and
// Commit says so (*NotExpungedError), so QUIT can tell the client.
func TestCommitExpungeWithoutUIDPlus(t *testing.T) {
	b := newBackend(t, &backendOptions{rev1Only: true})
	b.addUser("alice", "pw", msgs(3, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	var ne *NotExpungedError
	if err := md.Commit(context.Background(), []int{2}); !errors.As(err, &ne) || errors.Is(err, ErrPartialCommit) {
		t.Fatalf("Commit without UIDPLUS: err = %v, want a *NotExpungedError", err)
	}
	if ne.UIDs != "2" {
		t.Errorf("NotExpungedError.UIDs = %q, want 2", ne.UIDs)
	}
	md.Close()
	if got := uidsIn(t, b, "alice", "pw", "INBOX"); !slices.Equal(got, []imap.UID{1, 2, 3}) {
		t.Errorf("left: %v, want all three", got)
	}
	if !slices.Contains(flagsOf(t, b, "alice", "pw", 2), imap.FlagDeleted) {
		t.Error("message 2 not flagged \\Deleted")
	}
	if b.sawCommand(regexpMust(`EXPUNGE`)) {
		t.Error("an EXPUNGE was sent to a backend without UIDPLUS")
	}
}

func TestCommitFlag(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 100)...)
	mds := NewMaildrops(testConfig(func(c *MaildropConfig) { c.Delete = DeleteFlag }), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	if err := md.Commit(context.Background(), []int{1}); err != nil {
		t.Fatal(err)
	}
	md.Close()
	if got := uidsIn(t, b, "alice", "pw", "INBOX"); len(got) != 3 {
		t.Errorf("left: %v, want all three", got)
	}
	if !slices.Contains(flagsOf(t, b, "alice", "pw", 1), imap.FlagDeleted) {
		t.Error("message 1 not flagged \\Deleted")
	}
	if slices.Contains(flagsOf(t, b, "alice", "pw", 2), imap.FlagDeleted) {
		t.Error("message 2 flagged \\Deleted")
	}
}

func TestCommitMove(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rev1        bool
		createTrash bool
	}{
		{"MOVE", false, true},
		{"MOVE, destination created on TRYCREATE", false, false},
		{"COPY without MOVE or UIDPLUS", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, &backendOptions{rev1Only: tc.rev1})
			u := b.addUser("alice", "pw", msgs(3, 100)...)
			if tc.createTrash {
				if err := u.Create("Trash", nil); err != nil {
					t.Fatal(err)
				}
			}
			mds := NewMaildrops(testConfig(func(c *MaildropConfig) { c.Delete = "move:Trash" }), testLogger(t))
			t.Cleanup(mds.Wait)
			md := openMaildrop(t, mds, b, "alice", "pw")
			readAll(t)(md.Retr(context.Background(), 2))
			err := md.Commit(context.Background(), []int{2})
			var ne *NotExpungedError
			if tc.rev1 && !errors.As(err, &ne) {
				t.Fatalf("Commit by COPY without UIDPLUS: err = %v, want a *NotExpungedError", err)
			} else if !tc.rev1 && err != nil {
				t.Fatal(err)
			}
			md.Close()
			trash := uidsIn(t, b, "alice", "pw", "Trash")
			if len(trash) != 1 {
				t.Fatalf("Trash holds %v, want one message", trash)
			}
			inbox := uidsIn(t, b, "alice", "pw", "INBOX")
			if tc.rev1 {
				// Copied and flagged; not expunged without UIDPLUS.
				if !slices.Equal(inbox, []imap.UID{1, 2, 3}) || !slices.Contains(flagsOf(t, b, "alice", "pw", 2), imap.FlagDeleted) {
					t.Errorf("INBOX %v: want UID 2 still there and \\Deleted", inbox)
				}
			} else if !slices.Equal(inbox, []imap.UID{1, 3}) {
				t.Errorf("INBOX holds %v, want [1 3]", inbox)
			}
			c := b.client("alice", "pw")
			if _, err := c.Select("Trash", nil).Wait(); err != nil {
				t.Fatal(err)
			}
			bufs, err := c.Fetch(imap.UIDSetNum(trash[0]), &imap.FetchOptions{Flags: true}).Collect()
			if err != nil || len(bufs) != 1 || !slices.Contains(bufs[0].Flags, imap.FlagSeen) {
				t.Errorf("moved message should arrive \\Seen (RETRed before QUIT): %v %v", bufs, err)
			}
		})
	}
}

func TestCommitBadNumber(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(2, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	if err := md.Commit(context.Background(), []int{1, 3}); !errors.Is(err, ErrPartialCommit) {
		t.Fatalf("err = %v, want ErrPartialCommit", err)
	}
	md.Close()
	if got := uidsIn(t, b, "alice", "pw", "INBOX"); len(got) != 2 {
		t.Errorf("a rejected Commit removed messages: %v left", got)
	}
}

// Close without Commit deletes nothing (RFC 1939 §6).
func TestCloseDeletesNothing(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	for n := 1; n <= 3; n++ {
		readAll(t)(md.Retr(context.Background(), n))
	}
	md.Close()
	mds.Wait()
	if got := uidsIn(t, b, "alice", "pw", "INBOX"); len(got) != 3 {
		t.Errorf("left %v, want all three", got)
	}
	for uid := imap.UID(1); uid <= 3; uid++ {
		if slices.Contains(flagsOf(t, b, "alice", "pw", uid), imap.FlagDeleted) {
			t.Errorf("UID %d flagged \\Deleted without Commit", uid)
		}
	}
}

func TestCacheTopThenRetrOneFetch(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(3, 1000)...)
	cfg := testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) })
	mds := NewMaildrops(cfg, testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	top := readAll(t)(md.Top(context.Background(), 2, 0))
	retr := readAll(t)(md.Retr(context.Background(), 2))
	if !bytes.Equal(top, retr) || string(retr) != msg(2, 1000) {
		t.Fatal("TOP and RETR bodies differ from the message")
	}
	if n := b.fetchesOf(2); n != 1 {
		t.Errorf("TOP then RETR: %d backend FETCHes, want 1", n)
	}
	md.Close()

	// A later session: no FETCH at all.
	md = openMaildrop(t, mds, b, "alice", "pw")
	if string(readAll(t)(md.Retr(context.Background(), 2))) != msg(2, 1000) {
		t.Fatal("wrong body from the cache")
	}
	if n := b.fetchesOf(2); n != 1 {
		t.Errorf("second session's RETR: %d backend FETCHes in all, want still 1", n)
	}
	if s := mds.Cache().Stats(); s.Hits < 2 || s.Items != 1 {
		t.Errorf("cache stats %+v: want >= 2 hits and 1 item", s)
	}
}

// Invariant 4: one user's cached body is never served to another user, even
// with identical UIDs and UIDVALIDITY on the same backend.
func TestCacheNeverCrossesUsers(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", "Subject: for alice\r\n\r\nalice's secret\r\n")
	b.addUser("bob", "pw", "Subject: for bob\r\n\r\nbob's mail\r\n")
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	a := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(a.Retr(context.Background(), 1))
	a.Close()
	bob := openMaildrop(t, mds, b, "bob", "pw")
	if bob.UID(1) != a.UID(1) || bob.uidValidity != a.uidValidity {
		t.Fatalf("test needs equal UID/UIDVALIDITY: %d/%d vs %d/%d", bob.UID(1), bob.uidValidity, a.UID(1), a.uidValidity)
	}
	got := readAll(t)(bob.Retr(context.Background(), 1))
	if strings.Contains(string(got), "alice") {
		t.Fatalf("bob got alice's message: %q", got)
	}
	if b.fetchesOf(1) != 2 {
		t.Errorf("%d FETCHes of UID 1, want one per user", b.fetchesOf(1))
	}
}

// Concurrent readers of one message in one session cause one backend FETCH.
func TestConcurrentReadersOneFetch(t *testing.T) {
	b := newBackend(t, &backendOptions{latency: 30 * time.Millisecond})
	b.addUser("alice", "pw", msgs(2, 2000)...)
	cfg := testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) })
	mds := NewMaildrops(cfg, testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rc io.ReadCloser
			var err error
			if i%2 == 0 {
				rc, err = md.Top(context.Background(), 1, 0)
			} else {
				rc, err = md.Retr(context.Background(), 1)
			}
			if err != nil {
				errs <- err
				return
			}
			data, _ := io.ReadAll(rc)
			rc.Close()
			if string(data) != msg(1, 2000) {
				errs <- fmt.Errorf("reader %d: wrong body", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := b.fetchesOf(1); n != 1 {
		t.Errorf("8 concurrent readers: %d backend FETCHes, want 1", n)
	}
}

// Reading a maildrop in order over a slow link: every body is right, and
// fetch-ahead pipelines the FETCHes, so the client waits for about one
// backend round trip, not one per message.
func TestFetchAhead(t *testing.T) {
	const n = 20
	b := newBackend(t, &backendOptions{latency: 20 * time.Millisecond})
	b.addUser("alice", "pw", msgs(n, 3000)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	start := time.Now()
	for i := 1; i <= n; i++ {
		if got := readAll(t)(md.Retr(context.Background(), i)); string(got) != msg(i, 3000) {
			t.Fatalf("message %d: wrong body", i)
		}
	}
	t.Logf("%d RETRs over a 20ms link: %v, %d FETCH batches", n, time.Since(start), md.fetch.batches.Load())
	if got := b.totalFetches(); got != n {
		t.Errorf("%d body FETCHes for %d messages", got, n)
	}
	if got := md.fetch.batches.Load(); got > 2 {
		t.Errorf("%d FETCH round trips for %d messages in order, want 1 or 2", got, n)
	}
	// Fetch-ahead never set \Seen on its own: only the RETRed ones are.
	md.Close()
	c := b.client("alice", "pw")
	bufs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil || len(bufs) != n {
		t.Fatalf("FETCH FLAGS: %d messages, %v", len(bufs), err)
	}
	for _, buf := range bufs {
		if !slices.Contains(buf.Flags, imap.FlagSeen) {
			t.Errorf("UID %d not \\Seen after RETR", buf.UID)
		}
	}
}

// The budget bounds what is fetched ahead: with room for three messages,
// RETR 1 brings 2, 3 and 4 and no more until the client takes them; reading
// on, every message is fetched once.
func TestFetchAheadBudget(t *testing.T) {
	const n = 20
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(n, 3000)...)
	budget := int64(len(msg(2, 3000)))*3 + 100 // three messages, not four
	cfg := testConfig(func(c *MaildropConfig) { c.FetchAhead = size(Size(budget)) })
	mds := NewMaildrops(cfg, testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Retr(context.Background(), 1))
	deadline := time.Now().Add(2 * time.Second)
	for b.totalFetches() < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room for a wrong fifth
	for uid := imap.UID(2); uid <= 4; uid++ {
		if b.fetchesOf(uid) != 1 {
			t.Errorf("UID %d fetched %d times ahead, want 1", uid, b.fetchesOf(uid))
		}
	}
	if b.fetchesOf(5) != 0 {
		t.Error("UID 5 fetched ahead beyond the budget")
	}
	for i := 2; i <= n; i++ {
		md.fetch.mu.Lock()
		used := md.fetch.aheadBytes
		md.fetch.mu.Unlock()
		if used > budget {
			t.Fatalf("before RETR %d: %d bytes fetched ahead, budget %d", i, used, budget)
		}
		if got := readAll(t)(md.Retr(context.Background(), i)); string(got) != msg(i, 3000) {
			t.Fatalf("message %d: wrong body", i)
		}
	}
	if got := b.totalFetches(); got != n {
		t.Errorf("%d body FETCHes for %d messages", got, n)
	}
}

// A client that stops reading in order stops fetch-ahead; Close with bodies
// fetched ahead and not taken leaks nothing (goleak in TestMain, files in
// the spool directory).
func TestFetchAheadJumpAndClose(t *testing.T) {
	const n = 10
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(n, 100<<10)...)
	cfg := testConfig(func(c *MaildropConfig) {
		c.SpoolMemory = 16 << 10
		c.Cache.MaxMessageBytes = 16 << 10 // nothing cached: every body spooled to a file
	})
	mds := NewMaildrops(cfg, testLogger(t))
	t.Cleanup(mds.Wait)
	mds.spoolDir = t.TempDir()
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Retr(context.Background(), 1))
	readAll(t)(md.Retr(context.Background(), 7)) // a jump
	before := b.totalFetches()
	readAll(t)(md.Retr(context.Background(), 3))
	if got := string(readAll(t)(md.Retr(context.Background(), 2))); got != msg(2, 100<<10) {
		t.Fatal("message 2: wrong body")
	}
	if after := b.totalFetches(); after > before+2 {
		t.Errorf("after a jump: %d FETCHes for 2 RETRs", after-before)
	}
	// Leave bodies fetched ahead behind.
	readAll(t)(md.Retr(context.Background(), 3))
	readAll(t)(md.Retr(context.Background(), 4))
	if err := md.Close(); err != nil {
		t.Fatal(err)
	}
	mds.Wait()
	if ents, _ := os.ReadDir(mds.spoolDir); len(ents) != 0 {
		t.Errorf("spool files left behind: %v", ents)
	}
}

func TestRetrContextCancelled(t *testing.T) {
	b := newBackend(t, &backendOptions{latency: 60 * time.Millisecond})
	b.addUser("alice", "pw", msgs(2, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := md.Retr(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's error", err)
	}
	// The fetch went on; the next RETR takes its result.
	if got := readAll(t)(md.Retr(context.Background(), 1)); string(got) != msg(1, 100) {
		t.Fatal("wrong body after a cancelled RETR")
	}
	if n := b.fetchesOf(1); n != 1 {
		t.Errorf("%d FETCHes of UID 1, want 1", n)
	}
}

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// A backend that sends the body before the UID defeats go-imap's routing of
// FETCH responses: that must be an error, not "message gone".
func TestBodyBeforeUIDIsNotGone(t *testing.T) {
	b := newBackend(t, &backendOptions{bodyFirst: true})
	b.addUser("alice", "pw", msgs(2, 200)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	_, err := md.Retr(context.Background(), 1)
	if errors.Is(err, ErrMessageGone) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable (not ErrMessageGone)", err)
	}
}

// Two sessions reading the same body at the same time fetch it once: the
// singleflight group is shared by the Maildrops. (The maildrop lock keeps two
// sessions of one user apart, so the test releases it by hand.)
func TestSingleflightAcrossSessions(t *testing.T) {
	b := newBackend(t, &backendOptions{latency: 50 * time.Millisecond})
	b.addUser("alice", "pw", msgs(2, 5000)...)
	cfg := testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) })
	mds := NewMaildrops(cfg, testLogger(t))
	t.Cleanup(mds.Wait)
	md1 := openMaildrop(t, mds, b, "alice", "pw")
	md1.lease.Release()
	md2 := openMaildrop(t, mds, b, "alice", "pw")
	var wg sync.WaitGroup
	for _, md := range []*Maildrop{md1, md2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := md.Retr(context.Background(), 2)
			if err != nil {
				t.Error(err)
				return
			}
			defer rc.Close()
			if data, _ := io.ReadAll(rc); string(data) != msg(2, 5000) {
				t.Error("wrong body")
			}
		}()
	}
	wg.Wait()
	if n := b.fetchesOf(2); n != 1 {
		t.Errorf("two sessions: %d backend FETCHes, want 1", n)
	}
}

// Fetch-ahead keeps fetch_ahead bytes in flight, not a fixed number of
// commands: against a backend that has stopped answering, the gateway has
// sent as many body FETCHes as the budget holds (well over the 32 commands
// it was once capped at, which made a far backend idle once per 1.5 MB).
// Asserted on the commands the backend received, not on time.
func TestFetchAheadWindowIsTheBudget(t *testing.T) {
	const n, msgSize = 200, 2000
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(n, msgSize)...)
	const window = 100 // messages the budget holds: exactly those after message 1
	var budget int64
	for i := 2; i <= 1+window; i++ {
		budget += int64(len(msg(i, msgSize)))
	}
	cfg := testConfig(func(c *MaildropConfig) { c.FetchAhead = size(Size(budget)) })
	mds := NewMaildrops(cfg, testLogger(t))
	md := openMaildrop(t, mds, b, "alice", "pw")
	b.opts.stallBody.Store(true) // from the first body FETCH on, nothing is answered
	done := make(chan error, 1)
	go func() {
		rc, err := md.Retr(context.Background(), 1)
		if rc != nil {
			rc.Close()
		}
		done <- err
	}()
	want := 1 + window // RETR 1 itself, then the window behind it
	deadline := time.Now().Add(5 * time.Second)
	for b.totalFetches() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room for a wrong extra one
	if got := b.totalFetches(); got != want {
		t.Fatalf("%d body FETCHes in flight, want %d (1 demanded + %d the budget holds)", got, want, window)
	}
	if err := <-done; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("RETR on a silent backend: %v, want ErrUnavailable", err)
	}
}

// A session that ends without QUIT releases its lock
// within a second, even while a body FETCH is stuck on a silent backend:
// the clean-up (the fetch, \Seen, LOGOUT) runs after the release, in the
// background, and Maildrops.Wait sees it end within its bounds.
func TestCloseReleasesTheLockAtOnce(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msgs(2, 100)...)
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Retr(context.Background(), 2)) // a \Seen to flush
	b.opts.stallBody.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := md.Retr(ctx, 1); err == nil {
		t.Fatal("RETR from a silent backend succeeded")
	}
	// The fetch of message 1 is still under way, for up to the command
	// timeout.
	start := time.Now()
	if err := md.Close(); err != nil {
		t.Fatal(err)
	}
	b.opts.stallBody.Store(false)
	md2, err := mds.Open(context.Background(), b.target(), fastTimeouts, "alice", "pw")
	if err != nil {
		t.Fatalf("Open right after Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the lock was free %v after Close, want < 1s", d)
	}
	md2.Close()
	waited := time.Now()
	mds.Wait()
	if d := time.Since(waited); d > fastTimeouts.Command+closeTimeout+time.Second {
		t.Errorf("the background clean-up took %v", d)
	}
}

// The lock key is the backend identity, case-folded as
// the backend folds the login name: bob, BOB and Bob share one lock (the
// test backend keeps them as three users, as if it folded them to one
// mailbox), other users and other backends do not.
func TestLockKeyFoldsCase(t *testing.T) {
	b := newBackend(t, nil)
	for _, u := range []string{"bob", "BOB", "Bob", "alice"} {
		b.addUser(u, "pw", msgs(1, 100)...)
	}
	mds := NewMaildrops(testConfig(nil), testLogger(t))
	t.Cleanup(mds.Wait)
	md := openMaildrop(t, mds, b, "bob", "pw")
	for _, u := range []string{"BOB", "Bob"} {
		if _, err := mds.Open(context.Background(), b.target(), fastTimeouts, u, "pw"); !errors.Is(err, ErrInUse) {
			t.Errorf("Open as %s while bob is open: err = %v, want ErrInUse", u, err)
		}
	}
	openMaildrop(t, mds, b, "alice", "pw").Close()
	other := b.target()
	other.Name = "other"
	md2, err := mds.Open(context.Background(), other, fastTimeouts, "BOB", "pw")
	if err != nil {
		t.Fatalf("BOB on another backend: %v", err)
	}
	md2.Close()
	md.Close()
	md3, err := mds.Open(context.Background(), b.target(), fastTimeouts, "BOB", "pw")
	if err != nil {
		t.Fatalf("BOB after bob closed: %v", err)
	}
	md3.Close()
}

func TestLockKey(t *testing.T) {
	if newLockKey("store", "Bob@Example.ORG") != newLockKey("store", "bob@example.org") {
		t.Error("the lock key does not fold case")
	}
	if newLockKey("store", "bob") == newLockKey("legacy", "bob") {
		t.Error("one lock key for two backends")
	}
}
