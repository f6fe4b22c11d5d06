package faults

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// TestExpungedMidSessionAgainstDovecot: a body is served only for a message
// the backend still has. With the cache and fetch-ahead on (the defaults), a message
// another IMAP client expunges mid-session answers -ERR on RETR and TOP
// whether its body was cached (by TOP of a small message), fetched ahead (by
// reading in order), fetched in parts (TOP of a larger one) or not fetched at
// all, and the session goes on: the other messages are
// served exactly and QUIT deletes only what was DELEted. Dovecot reports the
// expunges only in answer to a command; the gateway learns of them with its
// next body FETCH or, for a body it holds, with a NOOP once the backend's
// last word is a few seconds old (the wait below).
func TestExpungedMidSessionAgainstDovecot(t *testing.T) {
	dc := dovecotServer(t)
	a := newAccount(t)
	var msgs [][]byte
	for i := range 5 {
		msgs = append(msgs, message(fmt.Sprintf("follow%d", i), 2000+i*1000))
	}
	msgs = append(msgs, message("follow-big", 60<<10)) // TOP fetches its parts only
	uids, err := dc.Append(a.User, a.Pass, "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}
	g := harness.Start(t, gatewayYAML(dc.IMAPAddr, "{}"))
	c := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer c.Close()
	if _, err := c.Top(4, 0); err != nil { // 4's body is now cached
		t.Fatal(err)
	}
	if _, err := c.Top(6, 3); err != nil { // header and a few lines, not cached
		t.Fatal(err)
	}
	if _, err := c.Retr(1); err != nil { // 2 and 3 are fetched ahead
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	// 2 fetched ahead, 4 cached, 5 never fetched, 6 fetched in parts.
	if err := dc.Expunge(a.User, a.Pass, "INBOX", uids[1], uids[3], uids[4], uids[5]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // older than the gateway's staleAfter
	gone := func(what string, err error) {
		t.Helper()
		var re *pop3client.ReplyError
		if !errors.As(err, &re) || re.Code() == "SYS/TEMP" {
			t.Errorf("%s of a message expunged elsewhere: err = %v, want a plain -ERR", what, err)
		}
	}
	_, err = c.Retr(2)
	gone("RETR 2 (fetched ahead)", err)
	_, err = c.Top(4, 0)
	gone("TOP 4 (cached)", err)
	_, err = c.Retr(4)
	gone("RETR 4 (cached)", err)
	_, err = c.Retr(5)
	gone("RETR 5 (never fetched)", err)
	_, err = c.Top(6, 3)
	gone("TOP 6 3 (fetched in parts)", err)
	_, err = c.Top(6, 0)
	gone("TOP 6 0", err)
	got, err := c.Retr(3) // fetched ahead, still there
	if err != nil {
		t.Fatalf("RETR 3: %v", err)
	}
	if ok, where := dovecot.Equal(got, msgs[2]); !ok {
		t.Errorf("RETR 3: %s", where)
	}
	if err := c.Dele(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	st := mailboxState(t, a, false)
	if got := st.UIDs(); len(got) != 1 || got[0] != uids[0] {
		t.Errorf("left %v, want only UID %d", got, uids[0])
	}
}
