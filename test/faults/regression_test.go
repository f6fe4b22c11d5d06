package faults

import (
	"fmt"
	"testing"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// TestRegressionFetchAheadAgainstDovecot: reading a maildrop in order makes
// the gateway pipeline one UID FETCH per message (fetch-ahead). Dovecot
// answers such a pipeline with the next commands' FETCH data before the
// tagged OK of the first (observed: "* 1 FETCH ... * 4 FETCH, f0 OK, f1 OK
// ..."). The fetcher used to wait for each command's tagged OK before
// reading the next command's body, while go-imap's reader waited for that
// body's literal to be consumed: a deadlock that no watchdog could break
// (closing the socket does not wake a reader blocked on a channel), so RETR
// hung forever and so did the gateway's Shutdown. Found by TestModel (seed
// 1795458787436448271).
func TestRegressionFetchAheadAgainstDovecot(t *testing.T) {
	dc := dovecotServer(t)
	a := newAccount(t)
	var msgs [][]byte
	for i := range 8 {
		msgs = append(msgs, message(fmt.Sprintf("ahead%d", i), 5000+i*7000))
	}
	if _, err := dc.Append(a.User, a.Pass, "INBOX", msgs...); err != nil {
		t.Fatal(err)
	}
	verify := leakCheck(t)
	// The default pop3 section: cache and fetch-ahead on.
	g := harness.Start(t, gatewayYAML(dc.IMAPAddr, "{}"))
	c, err := pop3client.Dial(g.Addr("pop3"), backendCommand+slack)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= len(msgs); n++ {
		got, err := c.Retr(n)
		if err != nil {
			t.Fatalf("RETR %d (reading in order, fetch-ahead pipelined): %v", n, err)
		}
		if ok, where := dovecot.Equal(got, msgs[n-1]); !ok {
			t.Fatalf("RETR %d: %s", n, where)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	g.Stop(5 * time.Second)
	verify()
}
