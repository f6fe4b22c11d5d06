package faults

import (
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// pop3.lock against Dovecot (issue 12, build step 2).

func lockAccount(t *testing.T, n int) (account, []uint32) {
	t.Helper()
	a, _, uids := seededAccount(t, "lock", n, 1500, 100)
	return a, uids
}

// lockGateway is a gateway with the pop3 settings pop3 in front of the
// Dovecot, and a user of the test's own with three messages.
func lockGateway(t *testing.T, pop3 string) (*harness.Gateway, account, []uint32) {
	t.Helper()
	a, uids := lockAccount(t, 3)
	return harness.Start(t, gatewayYAML(dovecotServer(t).IMAPAddr, pop3)), a, uids
}

func loginOnce(addr string, a account) (*pop3client.Client, error) {
	return pop3client.DialLogin(addr, a.User, a.Pass, clientTimeout)
}

func isInUse(err error) bool {
	code, _ := pop3client.ErrCode(err)
	return code == "IN-USE"
}

// takeover: a newer session ends an older one that has waited for a command
// for takeover_after, and the older one's DELEs are lost (no UPDATE); one
// that is busier than that keeps the lock ([IN-USE]).
func TestLockTakeover(t *testing.T) {
	g, a, uids := lockGateway(t, "{lock: takeover, takeover_after: 1s}")

	old := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer old.Close()
	if _, err := old.Retr(1); err != nil {
		t.Fatal(err)
	}
	if err := old.Dele(1); err != nil {
		t.Fatal(err)
	}
	// Not idle for long enough yet.
	if c, err := loginOnce(g.Addr("pop3"), a); !isInUse(err) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("login while the older session waited < takeover_after: err = %v, want [IN-USE]", err)
	}
	time.Sleep(1500 * time.Millisecond)
	start := time.Now()
	c, err := loginOnce(g.Addr("pop3"), a)
	if err != nil {
		t.Fatalf("login after the older session waited > takeover_after: %v", err)
	}
	defer c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("takeover took %v", d)
	}
	if count, _, err := c.Stat(); err != nil || count != len(uids) {
		t.Errorf("newer session: STAT = %d, %v; want %d", count, err, len(uids))
	}
	// The older session was ended without a word and without UPDATE.
	if err := old.Quit(); err == nil {
		t.Error("the older session still answers QUIT with +OK after the takeover")
	}
	harness.Quit(t, c)
	if got := a.Inbox(t, false).UIDs(); len(got) != len(uids) {
		t.Errorf("left %v: the taken-over session's DELE must not be applied", got)
	}
	if !strings.Contains(g.Logs(), `"result":"taken_over"`) {
		t.Error("no session end logged with result taken_over")
	}
}

// takeover: a session inside UPDATE (its QUIT's deletions under way, slowed
// by the proxy) is never cut; the newcomer waits for it and then sees the
// maildrop after the deletions.
func TestLockTakeoverNeverCutsUpdate(t *testing.T) {
	dc := dovecotServer(t)
	a, uids := lockAccount(t, 3)
	p := Listen(t, dc.IMAPAddr)
	p.Plan(func(conn int) Faults {
		if conn == 1 { // the older session's backend connection
			return Faults{Latency: 250 * time.Millisecond}
		}
		return Faults{}
	})
	g := harness.Start(t, gatewayYAML(p.Addr(), "{lock: takeover, takeover_after: 1s}"))
	old := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer old.Close()
	if err := old.Dele(1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond) // idle past takeover_after
	if err := old.Send("QUIT"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // inside UPDATE: STORE, UID EXPUNGE at 250ms each way
	start := time.Now()
	c, err := loginOnce(g.Addr("pop3"), a)
	if err != nil {
		t.Fatalf("login while the older session is in UPDATE: %v (want it to wait, then get the lock)", err)
	}
	defer c.Close()
	// UPDATE takes two round trips of 500ms; the login itself is fast.
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("the login took %v: it did not wait for the older session's UPDATE", d)
	}
	line, err := old.ReadLine()
	if err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("the older session's QUIT: %q, %v; want +OK (UPDATE is never cut)", line, err)
	}
	if count, _, err := c.Stat(); err != nil || count != len(uids)-1 {
		t.Errorf("newer session: STAT = %d, %v; want %d (after the older session's UPDATE)", count, err, len(uids)-1)
	}
	harness.Quit(t, c)
	got := a.Inbox(t, false).UIDs()
	if len(got) != len(uids)-1 || got[0] != uids[1] {
		t.Errorf("left %v, want %v", got, uids[1:])
	}
}

// none: two sessions of one user at once, each with its own snapshot; a
// message one of them deleted is gone for the other (-ERR), which goes on.
func TestLockNone(t *testing.T) {
	g, a, uids := lockGateway(t, "{lock: none}")
	one := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer one.Close()
	two, err := loginOnce(g.Addr("pop3"), a)
	if err != nil {
		t.Fatalf("second session with lock: none: %v", err)
	}
	defer two.Close()
	if err := one.Dele(1); err != nil {
		t.Fatal(err)
	}
	harness.Quit(t, one)
	if _, err := two.Retr(1); err == nil || isInUse(err) {
		t.Errorf("RETR of a message the other session deleted: err = %v, want -ERR", err)
	}
	if _, err := two.Retr(2); err != nil {
		t.Errorf("RETR 2: %v", err)
	}
	harness.Quit(t, two)
	if got := a.Inbox(t, false).UIDs(); len(got) != len(uids)-1 {
		t.Errorf("left %v, want %v", got, uids[1:])
	}
}
