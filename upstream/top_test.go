package upstream

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/pop3client"
)

// topOf is the reference TOP (pop3client.TopOf) on strings.
func topOf(m string, k int) string { return string(pop3client.TopOf([]byte(m), k)) }

// cut applies topOf to what Top returned, as the session does: Top may
// return more than the k lines, never other bytes.
func cut(t *testing.T, got []byte, full string, k int) string {
	t.Helper()
	if !strings.HasPrefix(full, string(got)) {
		t.Fatalf("TOP %d returned bytes that are not a prefix of the message:\n%q", k, got)
	}
	return topOf(string(got), k)
}

func TestTopOfReference(t *testing.T) {
	for _, c := range []struct {
		m    string
		k    int
		want string
	}{
		{"A: 1\r\n\r\nx\r\ny\r\n", 0, "A: 1\r\n\r\n"},
		{"A: 1\r\n\r\nx\r\ny\r\n", 1, "A: 1\r\n\r\nx\r\n"},
		{"A: 1\r\n\r\nx\r\ny\r\n", 9, "A: 1\r\n\r\nx\r\ny\r\n"},
		{"A: 1\r\n\r\nx\r\ny", 2, "A: 1\r\n\r\nx\r\ny"},
		{"A: 1\r\n", 0, "A: 1\r\n"},
	} {
		if got := topOf(c.m, c.k); got != c.want {
			t.Errorf("topOf(%q, %d) = %q, want %q", c.m, c.k, got, c.want)
		}
	}
}

// bigText is a message of about size bytes whose lines are lineLen long.
func bigText(size, lineLen int) string {
	var b strings.Builder
	b.WriteString("From: sender@example.org\r\nSubject: big\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n")
	line := strings.Repeat("QUJD", lineLen/4+1)[:lineLen] + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// TOP n 0 of a 10 MB message moves the header, not the message: counted as
// the bytes the backend sent for the TOP, and no BODY.PEEK[] was asked for.
func TestTopHeaderOnlyMovesFewBytes(t *testing.T) {
	b := newBackend(t, nil)
	big := bigText(10<<20, 76)
	b.addUser("alice", "pw", big)
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }))
	md := openMaildrop(t, mds, b, "alice", "pw")
	for _, k := range []int{0, 10} {
		before := b.sent.Load()
		got := readAll(t)(md.Top(context.Background(), 1, k))
		moved := b.sent.Load() - before
		if c := cut(t, got, big, k); c != topOf(big, k) {
			t.Fatalf("TOP 1 %d: wrong bytes", k)
		}
		t.Logf("TOP 1 %d of a %d-byte message: the backend sent %d bytes", k, len(big), moved)
		if moved > 8<<10 {
			t.Errorf("TOP 1 %d of a 10 MB message: the backend sent %d bytes, want a few KB", k, moved)
		}
	}
	if n := b.fetchesOf(1); n != 0 {
		t.Errorf("TOP sent %d BODY.PEEK[] fetches, want none", n)
	}
	if s := mds.Cache().Stats(); s.Items != 0 {
		t.Errorf("a partial body entered the cache: %+v", s)
	}
}

// The edge cases of TOP n k over parts (topWhole 0: every message in
// parts), each against the reference and RETR's bytes; a partial never
// enters the cache, and RETR afterwards is whole.
func TestTopPartsEdgeCases(t *testing.T) {
	long := strings.Repeat("x", 3000)
	cases := []struct {
		name string
		m    string
	}{
		{"short body", "Subject: a\r\n\r\none\r\ntwo\r\nthree\r\n"},
		{"no final CRLF", "Subject: b\r\n\r\none\r\ntwo\r\nlast line without CRLF"},
		{"leading dots", "Subject: c\r\n\r\n.\r\n..\r\n.leading dot\r\n.\r\nend\r\n"},
		{"header only", "Subject: d\r\nX-Empty: body\r\n\r\n"},
		{"long lines", "Subject: e\r\n\r\n" + strings.Repeat(long+"\r\n", 40)},
		{"many lines", msg(6, 200<<10)},
	}
	b := newBackend(t, nil)
	var raw []string
	for _, c := range cases {
		raw = append(raw, c.m)
	}
	b.addUser("alice", "pw", raw...)
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }))
	mds.topWhole = -1 << 40 // no message is small enough to be fetched whole
	md := openMaildrop(t, mds, b, "alice", "pw")
	for i, c := range cases {
		n := i + 1
		for _, k := range []int{0, 1, 2, 3, 5, 25, 1000} {
			got := readAll(t)(md.Top(context.Background(), n, k))
			if cut(t, got, c.m, k) != topOf(c.m, k) {
				t.Errorf("%s: TOP %d %d = %q, want %q", c.name, n, k, cut(t, got, c.m, k), topOf(c.m, k))
			}
		}
		if f := b.fetchesOf(md.UID(n)); f != 0 {
			t.Errorf("%s: TOP fetched the whole body %d times", c.name, f)
		}
	}
	if s := mds.Cache().Stats(); s.Items != 0 {
		t.Errorf("partial bodies entered the cache: %+v", s)
	}
	for i, c := range cases {
		if got := string(readAll(t)(md.Retr(context.Background(), i+1))); got != c.m {
			t.Errorf("%s: RETR after TOP: %d bytes, want %d", c.name, len(got), len(c.m))
		}
	}
	if !b.sawCommand(regexpMust(`^\S+ UID FETCH \d+ \(.*BODY\.PEEK\[TEXT\]<\d+\.\d+>`)) {
		t.Error("no partial TEXT fetch seen")
	}
	// Long lines: 4 KB first holds one line; TOP 5 2 needs a second round.
	if !b.sawCommand(regexpMust(`BODY\.PEEK\[TEXT\]<[1-9]\d*\.\d+>`)) {
		t.Error("a short partial was not followed by a fetch of more text")
	}
}

// TOP of a message whose body is cached makes no backend round trip.
func TestTopFromCachedBodyNoRoundTrip(t *testing.T) {
	b := newBackend(t, nil)
	m := msg(1, 100<<10)
	b.addUser("alice", "pw", m)
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }))
	md := openMaildrop(t, mds, b, "alice", "pw")
	readAll(t)(md.Retr(context.Background(), 1))
	before := b.commandCount()
	for _, k := range []int{0, 3} {
		if got := readAll(t)(md.Top(context.Background(), 1, k)); cut(t, got, m, k) != topOf(m, k) {
			t.Errorf("TOP 1 %d from the cache: wrong bytes", k)
		}
	}
	if n := b.commandCount() - before; n != 0 {
		t.Errorf("TOP of a cached body sent %d backend commands, want 0", n)
	}
}

// TOP in parts of a message expunged by another client, or flagged
// \Deleted, answers ErrMessageGone; the maildrop goes on.
func TestTopPartsOfGoneMessage(t *testing.T) {
	b, _, md := openAlice(t, nil, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }), msg(1, 50<<10), msg(2, 50<<10), msg(3, 50<<10))
	expungeElsewhere(t, b, 1)
	other := b.client("alice", "pw")
	if err := other.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		for _, k := range []int{0, 4} {
			if rc, err := md.Top(context.Background(), n, k); !errors.Is(err, ErrMessageGone) {
				if rc != nil {
					rc.Close()
				}
				t.Errorf("TOP %d %d of a message gone: err = %v, want ErrMessageGone", n, k, err)
			}
		}
	}
	m3 := msg(3, 50<<10)
	if got := readAll(t)(md.Top(context.Background(), 3, 2)); cut(t, got, m3, 2) != topOf(m3, 2) {
		t.Error("TOP 3 2 after the others went: wrong bytes")
	}
}

// Parts that do not add up to the message (a server whose RFC822.SIZE is
// off) are not served as TOP: the whole body is fetched, and checked as for
// RETR.
func TestTopPartsDisagreeFallsBackToWhole(t *testing.T) {
	b := newBackend(t, &backendOptions{sizeLie: 7})
	m := "Subject: s\r\n\r\n" + strings.Repeat("a short body line\r\n", 3)
	b.addUser("alice", "pw", m)
	mds := newMaildrops(t, testConfig(func(c *MaildropConfig) { c.FetchAhead = size(0) }))
	mds.topWhole = -1 << 40
	md := openMaildrop(t, mds, b, "alice", "pw")
	got := readAll(t)(md.Top(context.Background(), 1, 10))
	if string(got) != m {
		t.Fatalf("TOP 1 10 = %q, want the whole message", got)
	}
	if b.fetchesOf(1) != 1 {
		t.Errorf("%d whole-body fetches, want 1 (the fallback)", b.fetchesOf(1))
	}
}
