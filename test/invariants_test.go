package test

// One test (at least) per invariant listed in doc.go, each named after it,
// each against a real Dovecot.

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// Invariant 1: only messages that a session DELEted, and that session reached
// UPDATE, are ever removed.
func TestInvariant1_OnlyDeletedAndQuitRemoves(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	var msgs [][]byte
	for i := 1; i <= 5; i++ {
		msgs = append(msgs, message(fmt.Sprintf("inv1-%d", i), fmt.Sprintf("body %d\r\n", i)))
	}
	uids := seed(t, a, msgs...)

	c := g.login(a)
	dele(t, c, 2, 4)
	// RFC 1939 §5: deleted messages are not counted and not listed.
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Errorf("STAT after two DELEs: %d messages, %v; want 3", n, err)
	}
	if _, err := c.Retr(2); err == nil {
		t.Error("RETR of a deleted message succeeded")
	}
	// Before QUIT, the backend has not been touched: not even \Deleted.
	for _, m := range a.Inbox(t, false).Messages {
		if m.Has(imap.FlagDeleted) {
			t.Errorf("UID %d is flagged \\Deleted before QUIT (another client's EXPUNGE would remove it)", m.UID)
		}
	}
	harness.Quit(t, c)

	st := a.Inbox(t, true)
	if want := []uint32{uids[0], uids[2], uids[4]}; !slices.Equal(st.UIDs(), want) {
		t.Fatalf("after DELE 2, DELE 4, QUIT: backend UIDs %v, want %v", st.UIDs(), want)
	}
	for i, m := range st.Messages {
		want := msgs[[]int{0, 2, 4}[i]]
		if !bytes.Equal(m.Body, want) {
			t.Errorf("surviving UID %d changed: %q, want %q", m.UID, m.Body, want)
		}
		if m.Has(imap.FlagDeleted) {
			t.Errorf("surviving UID %d is flagged \\Deleted", m.UID)
		}
	}
}

// A connection that ends without QUIT never enters UPDATE (RFC 1939 §6), even
// after DELE of every message; and the lock is released for the next session.
func TestInvariant1_DroppedConnectionDeletesNothing(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	uids := seed(t, a, message("drop-1", "one\r\n"), message("drop-2", "two\r\n"), message("drop-3", "three\r\n"))

	c := g.login(a)
	dele(t, c, 1, 2, 3)
	c.Close() // no QUIT

	// A new session (once the old one is gone) sees all three.
	c = g.loginEventually(a)
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Errorf("STAT after a dropped session: %d, %v; want 3 messages", n, err)
	}
	// A connection dropped in the middle of a QUIT-less pipelined burst.
	if err := c.SendRaw([]byte("DELE 1\r\nDELE 2\r\nDELE 3\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c = g.loginEventually(a)
	harness.Quit(t, c) // QUIT without DELE: nothing to remove
	assertUntouched(t, a, uids)
}

// A gateway shutdown cuts sessions; a cut session deletes nothing.
func TestInvariant1_ShutdownDeletesNothing(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	uids := seed(t, a, message("shut-1", "one\r\n"), message("shut-2", "two\r\n"))

	c := g.login(a)
	dele(t, c, 1, 2)
	g.Stop(500 * time.Millisecond) // the client idles in TRANSACTION: cut it
	if err := c.Dele(1); err == nil {
		t.Error("the session still answers after the gateway shut down")
	}
	assertUntouched(t, a, uids)
}

// DELE then RSET then QUIT: UPDATE is reached, with nothing marked.
func TestInvariant1_DeleRsetQuitDeletesNothing(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	uids := seed(t, a, message("rset-1", "one\r\n"), message("rset-2", "two\r\n"))

	c := g.login(a)
	dele(t, c, 1, 2)
	if n, _, _ := c.Stat(); n != 0 {
		t.Errorf("STAT after DELE of both = %d messages, want 0", n)
	}
	if err := c.Rset(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := c.Stat(); n != 2 {
		t.Errorf("STAT after RSET = %d messages, want 2", n)
	}
	if _, err := c.Retr(1); err != nil {
		t.Errorf("RETR 1 after RSET: %v", err)
	}
	harness.Quit(t, c)
	assertUntouched(t, a, uids)
}

// DELE+QUIT removes exactly the session's messages; a message another IMAP
// client flagged \Deleted (without expunging) is not part of the maildrop and
// survives the QUIT, flag and all: the gateway never runs a plain EXPUNGE.
func TestInvariant1_OtherClientsDeletedMessageSurvivesQuit(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	uids := seed(t, a, message("keep-1", "one\r\n"), message("keep-2", "two\r\n"),
		message("keep-3", "three\r\n"), message("flagged-4", "four\r\n"))
	dc := dovecotServer(t)
	if err := dc.Store(a.User, a.Pass, "INBOX", false, []imap.Flag{imap.FlagDeleted}, uids[3]); err != nil {
		t.Fatal(err)
	}

	c := g.login(a)
	// A message already flagged \Deleted at login is left out of the
	// snapshot: it is not this session's to show, nor to remove.
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Fatalf("STAT = %d, %v; want 3 (the \\Deleted message left out)", n, err)
	}
	dele(t, c, 2)
	// Meanwhile another client flags message 3 \Deleted too.
	if err := dc.Store(a.User, a.Pass, "INBOX", false, []imap.Flag{imap.FlagDeleted}, uids[2]); err != nil {
		t.Fatal(err)
	}
	harness.Quit(t, c)

	st := a.Inbox(t, false)
	if want := []uint32{uids[0], uids[2], uids[3]}; !slices.Equal(st.UIDs(), want) {
		t.Fatalf("backend UIDs after DELE 2 + QUIT: %v, want %v", st.UIDs(), want)
	}
	for _, u := range []uint32{uids[2], uids[3]} {
		if m, _ := st.Message(u); !m.Has(imap.FlagDeleted) {
			t.Errorf("UID %d lost the \\Deleted flag another client set", u)
		}
	}
}

// Invariant 2: RETR sends the backend's bytes exactly (CRLF line ends, dot-
// stuffed on the wire, a final CRLF only where missing); LIST size equals
// what RETR delivers.
func TestInvariant2_RetrBytesEqualBackendBody(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	big := bigMessage(10 << 20)
	cases := []struct {
		name string
		raw  []byte
	}{
		{"plain", message("plain", "Hello.\r\nSecond line.\r\n")},
		{"dot lines", message("dots", ".\r\n..\r\n...\r\n.leading\r\n. space\r\nmiddle . dot\r\n.\r\n")},
		{"ends in a dot line", message("dotend", "text\r\n.")},
		{"ends in a dot line with CRLF", message("dotcrlf", "text\r\n.\r\n")},
		{"no final CRLF", message("nofinal", "line one\r\nlast line without CRLF")},
		{"8-bit", message("8bit", "caf\xc3\xa9 na\xc3\xafve \x80\x81\xfe\xff\r\n\xe2\x82\xac 100\r\n")},
		{"bare LF and CR", []byte("Subject: bare\nFrom: x@example.org\n\nlf only\nbare\rCR\r\n")},
		{"header only", []byte("Subject: header only\r\nFrom: x@example.org\r\n")},
		{"header only, no final CRLF", []byte("Subject: header only nofinal")},
		{"long line", message("long", strings.Repeat("x", 5000)+"\r\n."+strings.Repeat("y", 3000)+"\r\n")},
		{"empty lines at the end", message("empties", "a\r\n\r\n\r\n\r\n")},
		{"10 MB", big},
	}
	var raws [][]byte
	for _, c := range cases {
		raws = append(raws, c.raw)
	}
	seed(t, a, raws...)
	st := a.Inbox(t, true) // the backend's BODY[] of each, the reference
	if len(st.Messages) != len(cases) {
		t.Fatalf("backend holds %d messages, want %d", len(st.Messages), len(cases))
	}

	c := g.login(a)
	list, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(cases) {
		t.Fatalf("LIST has %d entries, want %d", len(list), len(cases))
	}
	var total int64
	for i, tc := range cases {
		n := i + 1
		want := expectRetr(st.Messages[i].Body)
		got, err := c.Retr(n)
		if err != nil {
			t.Errorf("%s: RETR %d: %v", tc.name, n, err)
			continue
		}
		if ok, diff := dovecot.Equal(got, want); !ok {
			t.Errorf("%s: RETR %d differs from the backend's BODY[]: %s", tc.name, n, diff)
		}
		// LIST counts the message as stored (as Dovecot's own POP3 does and
		// RFC822.SIZE is defined): for a message without a final CRLF the
		// CRLF RETR adds belongs to the terminator "CRLF.CRLF" (RFC 1939
		// §3), not to the message.
		if size := int64(len(st.Messages[i].Body)); list[i].N != n || list[i].Size != size {
			t.Errorf("%s: LIST says %d %d, the message is %d octets (RETR delivered %d with the terminator's CRLF)",
				tc.name, list[i].N, list[i].Size, size, len(got))
		}
		// LIST n agrees with the scan listing.
		if text, err := c.Cmd(fmt.Sprintf("LIST %d", n)); err != nil || text != fmt.Sprintf("%d %d", n, list[i].Size) {
			t.Errorf("%s: LIST %d = %q, %v; want %q", tc.name, n, text, err, fmt.Sprintf("%d %d", n, list[i].Size))
		}
		total += list[i].Size
	}
	if count, size, err := c.Stat(); err != nil || count != len(cases) || size != total {
		t.Errorf("STAT = %d %d, %v; want %d %d", count, size, err, len(cases), total)
	}
	// A second RETR (from the cache or the spool) delivers the same bytes.
	for _, n := range []int{2, len(cases)} {
		got, err := c.Retr(n)
		if err != nil {
			t.Fatalf("second RETR %d: %v", n, err)
		}
		if ok, diff := dovecot.Equal(got, expectRetr(st.Messages[n-1].Body)); !ok {
			t.Errorf("second RETR %d differs: %s", n, diff)
		}
	}
	harness.Quit(t, c)
}

// bigMessage is a message of about size bytes: base64 lines, a few dot lines
// and 8-bit text, as a large attachment would look.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: big@example.org\r\nSubject: ten megabytes\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	chunk := make([]byte, 57)
	for i := 0; b.Len() < size; i++ {
		for j := range chunk {
			chunk[j] = byte(i*31 + j*7)
		}
		b.WriteString(base64.StdEncoding.EncodeToString(chunk))
		b.WriteString("\r\n")
		if i%5000 == 0 {
			b.WriteString(".dot line " + fmt.Sprint(i) + "\r\n\xc3\xa9t\xc3\xa9\r\n")
		}
	}
	return b.Bytes()
}

// Invariant 3: a message's UIDL never changes while its UIDVALIDITY holds:
// across sessions, across expunges and appends by other clients, across a
// gateway restart; UIDLs are unique and 1-70 characters of 0x21-0x7E; and
// with the default format they equal Dovecot's own POP3 UIDLs, so a client
// moving from Dovecot's POP3 to mailgate downloads nothing twice.
func TestInvariant3_UIDLStableAcrossSessionsAndRestart(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	var msgs [][]byte
	for i := 1; i <= 5; i++ {
		msgs = append(msgs, message(fmt.Sprintf("uidl-%d", i), "same body\r\n"))
	}
	uids := seed(t, a, msgs...)

	byUID := map[uint32]string{}
	session := func(label string) map[uint32]string {
		t.Helper()
		c := g.loginEventually(a)
		defer c.Quit()
		list, err := c.UIDL()
		if err != nil {
			t.Fatalf("%s: UIDL: %v", label, err)
		}
		live := a.Inbox(t, false).UIDs() // numbering is by UID order
		if len(list) != len(live) {
			t.Fatalf("%s: UIDL lists %d messages, the backend holds %d", label, len(list), len(live))
		}
		got := map[uint32]string{}
		seen := map[string]bool{}
		for i, it := range list {
			checkUIDLSyntax(t, label, it.UIDL)
			if seen[it.UIDL] {
				t.Errorf("%s: UIDL %q appears twice", label, it.UIDL)
			}
			seen[it.UIDL] = true
			got[live[i]] = it.UIDL
			// UIDL n agrees with the listing.
			if text, err := c.Cmd(fmt.Sprintf("UIDL %d", it.N)); err != nil || text != fmt.Sprintf("%d %s", it.N, it.UIDL) {
				t.Errorf("%s: UIDL %d = %q, %v; want %q", label, it.N, text, err, fmt.Sprintf("%d %s", it.N, it.UIDL))
			}
		}
		for u, id := range got {
			if old, ok := byUID[u]; ok && old != id {
				t.Errorf("%s: UID %d changed its UIDL from %q to %q", label, u, old, id)
			}
			byUID[u] = id
		}
		return got
	}

	first := session("session 1")
	session("session 2")

	// Another client expunges message 2 and appends one: the others keep
	// their UIDLs, the new one gets a new one.
	if err := dovecotServer(t).Expunge(a.User, a.Pass, "INBOX", uids[1]); err != nil {
		t.Fatal(err)
	}
	newUID := seed(t, a, message("uidl-new", "same body\r\n"))[0]
	third := session("session 3 (after an expunge and an append)")
	for u, id := range third {
		if u == newUID && slices.Contains(mapsValues(first), id) {
			t.Errorf("the new message reuses the UIDL %q of an earlier message", id)
		}
	}

	g.Restart()
	session("session 4 (after a gateway restart)")

	// Dovecot's own POP3 on the same store, same messages, default formats.
	dc := dovecotServer(t)
	p, err := pop3client.Dial(dc.POP3Addr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Login(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	theirs, err := p.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	p.Quit()
	live := a.Inbox(t, false).UIDs()
	if len(theirs) != len(live) {
		t.Fatalf("Dovecot's POP3 lists %d messages, the mailbox holds %d", len(theirs), len(live))
	}
	for i, it := range theirs {
		if ours := byUID[live[i]]; ours != it.UIDL {
			t.Errorf("UID %d: mailgate's UIDL %q, Dovecot's own POP3 says %q (pop3_uidl_format %%08Xu%%08Xv)",
				live[i], ours, it.UIDL)
		}
	}
}

// checkUIDLSyntax applies RFC 1939 §7: 1 to 70 characters in 0x21-0x7E.
func checkUIDLSyntax(t *testing.T, label, id string) {
	t.Helper()
	if len(id) < 1 || len(id) > 70 {
		t.Errorf("%s: UIDL %q has %d characters, want 1-70", label, id, len(id))
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			t.Errorf("%s: UIDL %q has byte 0x%02x outside 0x21-0x7E", label, id, id[i])
		}
	}
}

func mapsValues(m map[uint32]string) []string {
	var v []string
	for _, s := range m {
		v = append(v, s)
	}
	return v
}

// Invariant 4: one user's cached body is never served to another user's
// session. Two users whose INBOXes were created in the same second have the
// same UIDVALIDITY on Dovecot, so their messages have the same (UIDVALIDITY,
// UID) pairs: a cache keyed without the user would mix them up.
func TestInvariant4_CacheNeverCrossesUsers(t *testing.T) {
	g := startGateway(t, gwOptions{POP3: "{cache: {max_bytes: 64MiB, max_message_bytes: 4MiB}}"})
	var alice, bob account
	var sameValidity bool
	for attempt := 0; attempt < 3 && !sameValidity; attempt++ {
		alice, bob = newAccount(t), newAccount(t)
		var wg sync.WaitGroup
		for _, u := range []account{alice, bob} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var msgs [][]byte
				for i := 1; i <= 3; i++ {
					msgs = append(msgs, message(fmt.Sprintf("%s-%d", strings.SplitN(u.User, "@", 2)[0], i),
						fmt.Sprintf("This is %s's private message %d.\r\n", u.User, i)))
				}
				seed(t, u, msgs...)
			}()
		}
		wg.Wait()
		sameValidity = alice.Inbox(t, false).UIDValidity == bob.Inbox(t, false).UIDValidity
	}
	if !sameValidity {
		t.Log("could not give both users the same UIDVALIDITY; the test still checks the users' separation")
	}
	want := map[string][][]byte{}
	for _, u := range []account{alice, bob} {
		for _, m := range u.Inbox(t, true).Messages {
			want[u.User] = append(want[u.User], expectRetr(m.Body))
		}
	}

	check := func(u account, c *pop3client.Client, n int, how string) {
		got, err := c.Retr(n)
		if err != nil {
			t.Errorf("%s RETR %d (%s): %v", u.User, n, how, err)
			return
		}
		if !bytes.Equal(got, want[u.User][n-1]) {
			t.Errorf("invariant 4: %s got %q on RETR %d (%s), want its own %q", u.User, got, n, how, want[u.User][n-1])
		}
	}
	// Alice fills the cache; then Bob reads the same numbers.
	sa := g.login(alice)
	for n := 1; n <= 3; n++ {
		check(alice, sa, n, "cold")
	}
	harness.Quit(t, sa)
	sb := g.login(bob)
	for n := 1; n <= 3; n++ {
		check(bob, sb, n, "after alice")
		if top, err := sb.Top(n, 5); err != nil || !bytes.Equal(top, want[bob.User][n-1]) {
			t.Errorf("invariant 4: bob TOP %d 5 = %q, %v; want %q", n, top, err, want[bob.User][n-1])
		}
	}
	harness.Quit(t, sb)
	// Both at once, over and over (singleflight must not merge their fetches).
	addr := g.Addr("pop3")
	var wg sync.WaitGroup
	for round := 0; round < 5; round++ {
		for _, u := range []account{alice, bob} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := loginRetry(addr, nil, u)
				if err != nil {
					t.Errorf("%s: %v", u.User, err)
					return
				}
				defer c.Close()
				for n := 3; n >= 1; n-- {
					check(u, c, n, "concurrent")
				}
				c.Quit()
			}()
		}
	}
	wg.Wait()
}

// Invariant 5: credentials never appear in logs or error messages. Every
// way to present a password, right and wrong, at debug level; the log of
// the whole test (and every other test's, by startGateway's cleanup) is
// searched for each password in plain and base64 form.
func TestInvariant5_NoCredentialsInLogs(t *testing.T) {
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	seed(t, a, message("secret-test", "x\r\n"))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	wrong := "wrong-" + a.Pass
	for _, s := range secretForms(a.User, wrong) {
		harness.Secret(s)
	}
	var replies []string
	record := func(text string, err error) {
		replies = append(replies, text)
		if err != nil {
			replies = append(replies, err.Error())
		}
	}

	steps := []struct {
		name string
		run  func(c *pop3client.Client) error
	}{
		{"USER/PASS", func(c *pop3client.Client) error { return c.Login(a.User, a.Pass) }},
		{"USER/PASS wrong", func(c *pop3client.Client) error { return c.Login(a.User, wrong) }},
		{"PASS before USER", func(c *pop3client.Client) error { _, err := c.Cmd("PASS " + a.Pass); return err }},
		{"AUTH PLAIN initial response", func(c *pop3client.Client) error {
			_, err := c.Cmd("AUTH PLAIN " + b64("\x00"+a.User+"\x00"+a.Pass))
			return err
		}},
		{"AUTH PLAIN wrong", func(c *pop3client.Client) error {
			_, err := c.Cmd("AUTH PLAIN " + b64("\x00"+a.User+"\x00"+wrong))
			return err
		}},
		{"AUTH PLAIN with authzid", func(c *pop3client.Client) error {
			_, err := c.Cmd("AUTH PLAIN " + b64(a.User+"\x00"+a.User+"\x00"+a.Pass))
			return err
		}},
		{"AUTH PLAIN continuation", func(c *pop3client.Client) error {
			if err := c.Send("AUTH PLAIN"); err != nil {
				return err
			}
			if line, err := c.ReadLine(); err != nil || !strings.HasPrefix(line, "+ ") && line != "+" {
				return fmt.Errorf("AUTH PLAIN: continuation %q, %v", line, err)
			}
			_, err := c.Cmd(b64("\x00" + a.User + "\x00" + a.Pass))
			return err
		}},
		{"AUTH LOGIN", func(c *pop3client.Client) error {
			if err := c.Send("AUTH LOGIN"); err != nil {
				return err
			}
			for _, answer := range []string{b64(a.User), b64(a.Pass)} {
				if line, err := c.ReadLine(); err != nil || !strings.HasPrefix(line, "+") {
					return fmt.Errorf("AUTH LOGIN: continuation %q, %v", line, err)
				}
				if err := c.Send(answer); err != nil {
					return err
				}
			}
			_, err := c.Status("AUTH")
			return err
		}},
		{"AUTH LOGIN wrong", func(c *pop3client.Client) error {
			if err := c.Send("AUTH LOGIN " + b64(a.User)); err != nil {
				return err
			}
			if line, err := c.ReadLine(); err != nil || !strings.HasPrefix(line, "+") {
				return fmt.Errorf("AUTH LOGIN: continuation %q, %v", line, err)
			}
			_, err := c.Cmd(b64(wrong))
			return err
		}},
		{"bad base64", func(c *pop3client.Client) error { _, err := c.Cmd("AUTH PLAIN %%" + a.Pass + "%%"); return err }},
	}
	for _, s := range steps {
		c := g.dial("pop3")
		err := s.run(c)
		record("", err)
		if err == nil {
			// Logged in: use the session a little, then QUIT.
			if _, err := c.Retr(1); err != nil {
				t.Errorf("%s: RETR after login: %v", s.name, err)
			}
			record(c.Cmd("QUIT"))
		}
		c.Close()
		// Give the session time to end (its lock, its last log lines).
		g.loginEventually(a).Quit()
	}
	// Plaintext refused on the STLS listener before TLS, then accepted after
	// (two refusals: the third mistake before login ends the connection).
	c := g.dial("pop3-stls")
	record(c.Cmd("PASS " + a.Pass))
	record(c.Cmd("AUTH PLAIN " + b64("\x00"+a.User+"\x00"+a.Pass)))
	if err := c.STLS(harness.ClientTLS(t)); err != nil {
		t.Fatal(err)
	}
	record("", c.Login(a.User, a.Pass))
	record(c.Cmd("QUIT"))
	c.Close()
	// Implicit TLS.
	c = g.loginEventuallyOn("pop3s", a)
	record(c.Cmd("QUIT"))

	for _, r := range replies {
		for _, s := range append(secretForms(a.User, a.Pass), secretForms(a.User, wrong)...) {
			if strings.Contains(r, s) {
				t.Errorf("invariant 5: a reply to the client carries a credential: %q", r)
			}
		}
	}
	// Cut sessions and shutdown paths log too: stop now, then search.
	g.Stop(15 * time.Second)
	g.CheckNoSecrets()
	if !strings.Contains(g.Logs(), a.User) {
		t.Errorf("the gateway logged nothing about %s at debug level; the search above proves nothing", a.User)
	}
}

// assertUntouched checks that the backend still holds exactly uids, none
// flagged \Deleted.
func assertUntouched(t *testing.T, a account, uids []uint32) {
	t.Helper()
	st := a.Inbox(t, false)
	if !slices.Equal(st.UIDs(), uids) {
		t.Fatalf("invariant 1: backend UIDs %v, want all of %v", st.UIDs(), uids)
	}
	for _, m := range st.Messages {
		if m.Has(imap.FlagDeleted) {
			t.Errorf("invariant 1: UID %d is flagged \\Deleted, though no session reached UPDATE with it deleted", m.UID)
		}
	}
}
