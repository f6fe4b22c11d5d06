package test

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

func signalsConfig(t *testing.T, backendUser string) string {
	return fmt.Sprintf(`log: {level: info, format: json}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  dovecot: {address: %q, tls: none}
routing:
  rules:
    - {user: alias@signals.test, backend: dovecot, rewrite_user: %q}
limits: {auth_failure_delay: 1ms}
timeouts: {shutdown: 2s}
`, dovecotServer(t).IMAPAddr, backendUser)
}

// TestSIGTERMWithDeletionsPendingDeletesNothing: SIGTERM while a POP3
// session has DELE pending and has not sent QUIT: the process stops within
// its shutdown grace and nothing is deleted (RFC 1939 §6).
func TestSIGTERMWithDeletionsPendingDeletesNothing(t *testing.T) {
	u := newAccount(t)
	seed(t, u, message("s1", "one\r\n"), message("s2", "two\r\n"))
	file := writeFile(t, t.TempDir(), "mailgate.yaml", signalsConfig(t, u.User), 0o644)
	p := harness.StartProcess(t, file)
	addr := p.Listening(t)

	c, err := pop3client.Dial(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alias@signals.test", u.Pass); err != nil {
		t.Fatal(err)
	}
	c.Dele(1)
	c.Dele(2)
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.Done:
		if err != nil {
			t.Fatalf("mailgate exited with %v after SIGTERM", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("mailgate did not stop after SIGTERM and its 2s grace")
	}
	if st := state(t, u, false); len(st.Messages) != 2 {
		t.Fatalf("after SIGTERM with 2 DELE pending the mailbox has %d messages, want 2", len(st.Messages))
	}
}

// TestSIGHUPReloadsRoutesAndRefusesABrokenFile: SIGHUP applies a changed
// route to new sessions; a file that does not validate is refused whole and
// the running configuration stays.
func TestSIGHUPReloadsRoutesAndRefusesABrokenFile(t *testing.T) {
	first, second := newAccount(t), newAccount(t)
	seed(t, first, message("first", "1\r\n"))
	seed(t, second, message("second", "2\r\n"), message("second-b", "2b\r\n"))
	// The route decides which account the alias reaches; each logs in with
	// its own password.
	file := writeFile(t, t.TempDir(), "mailgate.yaml", signalsConfig(t, first.User), 0o644)
	p := harness.StartProcess(t, file)
	addr := p.Listening(t)
	count := func(pass string) int {
		t.Helper()
		c, err := pop3client.Dial(addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login("alias@signals.test", pass); err != nil {
			t.Fatalf("login: %v", err)
		}
		n, _, err := c.Stat()
		if err != nil {
			t.Fatal(err)
		}
		c.Quit()
		return n
	}
	if n := count(first.Pass); n != 1 {
		t.Fatalf("before reload the alias reached %d messages, want the first account's 1", n)
	}

	os.WriteFile(file, []byte(signalsConfig(t, second.User)), 0o644)
	p.Cmd.Process.Signal(syscall.SIGHUP)
	p.WaitLog(t, `"msg":"configuration reloaded"`)
	if n := count(second.Pass); n != 2 {
		t.Fatalf("after reload the alias reached %d messages, want the second account's 2", n)
	}

	os.WriteFile(file, []byte(signalsConfig(t, first.User)+"listeners: [{name: oops}]\nbogus_key: 1\n"), 0o644)
	p.Cmd.Process.Signal(syscall.SIGHUP)
	p.WaitLog(t, `reload refused`)
	if n := count(second.Pass); n != 2 {
		t.Fatalf("after a broken reload the alias reached %d messages, want the running route's 2", n)
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.Done; err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
