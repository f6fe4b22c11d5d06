package gateway

import (
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailgate/test/loopback"
)

// messageCount logs in to a memBackend directly and counts INBOX.
func messageCount(t *testing.T, addr string) uint32 {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	return sel.NumMessages
}

func TestShutdownWithDeletionsPendingDeletesNothing(t *testing.T) {
	backend := memBackend(t, testMessage, testMessage, testMessage)
	srv, _ := startGateway(t, baseConfig, backend)
	c, _ := pop3Login(t, srv.Addr("pop3"), "", "alice", "secret")
	for _, n := range []string{"1", "2", "3"} {
		if r := c.Command("DELE "+n, ""); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("DELE %s: %q", n, r)
		}
	}
	// Shutdown with no grace: the session is cut before QUIT.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	srv.Shutdown(ctx)
	c.SetReadDeadline()
	io.ReadAll(c.Reader()) // the connection ends
	if n := messageCount(t, backend); n != 3 {
		t.Fatalf("after shutdown with 3 DELE pending the mailbox has %d messages, want 3", n)
	}
}

func TestShutdownGraceLetsASessionFinish(t *testing.T) {
	backend := memBackend(t, testMessage, testMessage)
	srv, _ := startGateway(t, baseConfig, backend)
	c, _ := pop3Login(t, srv.Addr("pop3"), "", "alice", "secret")
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(done)
	}()
	// New connections are refused once shutdown starts...
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("tcp", srv.Addr("pop3").String())
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ...while the session in progress completes, deletion included.
	c.Command("DELE 1", "")
	if r := c.Command("QUIT", ""); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("QUIT during the grace period: %q", r)
	}
	<-done
	if n := messageCount(t, backend); n != 1 {
		t.Fatalf("mailbox has %d messages, want 1", n)
	}
}

func TestShutdownDuringRetrNeverSendsATruncatedBody(t *testing.T) {
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 16000) // 16 MB: more than the socket buffers
	backend := memBackend(t, big)
	srv, _ := startGateway(t, baseConfig, backend)
	c, _ := pop3Login(t, srv.Addr("pop3"), "", "alice", "secret")
	c.Send("RETR 1")
	first := c.Line()
	if !strings.HasPrefix(first, "+OK") {
		t.Fatalf("RETR: %q", first)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	shutdownDone := make(chan struct{})
	go func() { srv.Shutdown(ctx); close(shutdownDone) }()
	// The client stalls longer than the shutdown write bound (2s): the
	// server must give up on it rather than wait for the idle timeout.
	select {
	case <-shutdownDone:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown waits for a client that does not read")
	}

	// Read what arrives: either the whole body and its ".", or the
	// connection ends without the ".".
	c.SetReadDeadline()
	r := c.Reader()
	var body strings.Builder
	terminated := false
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if l == ".\r\n" {
			terminated = true
			break
		}
		body.WriteString(l)
	}
	if terminated {
		t.Fatalf("the server sent the final dot after %d of %d bytes although the client stalled past the shutdown bound", body.Len(), len(big))
	}
}

func TestReloadRoutesNewSessionsAndKeepsSessionsInFlight(t *testing.T) {
	a := memBackend(t, testMessage)
	b := memBackend(t, testMessage, testMessage)
	srv, _ := startGateway(t, baseConfig, a)

	inFlight, _ := pop3Login(t, srv.Addr("pop3"), "", "alice", "secret")

	reload(t, srv, baseConfig, b)
	if r := inFlight.Command("STAT", ""); r != "+OK 1 "+strconv.Itoa(len(testMessage)) {
		t.Errorf("session in flight after reload: STAT %q, want backend A's single message", r)
	}
	inFlight.Command("QUIT", "")

	c, _ := pop3Login(t, srv.Addr("pop3"), "", "alice", "secret")
	if r := c.Command("STAT", ""); !strings.HasPrefix(r, "+OK 2 ") {
		t.Errorf("new session after reload: STAT %q, want backend B's two messages", r)
	}
	c.Command("QUIT", "")
}

func TestReloadAppliesLimits(t *testing.T) {
	srv, _ := startGateway(t, baseConfig, memBackend(t, testMessage))
	first := dialPOP3(t, srv.Addr("pop3"), "127.0.0.9")
	if g := first.Line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	reload(t, srv, strings.Replace(baseConfig, "limits: {", "limits: {per_ip: 1, ", 1), "127.0.0.1:1")
	second := dialPOP3(t, srv.Addr("pop3"), "127.0.0.9")
	if g := second.Line(); !strings.HasPrefix(g, "-ERR [SYS/TEMP]") {
		t.Fatalf("a second connection from one address after reloading per_ip: 1: %q", g)
	}
	if g := dialPOP3(t, srv.Addr("pop3"), "127.0.0.10").Line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("another address after the reload: %q", g)
	}
}

// stallingProxy forwards connections to backend until the gateway asks for a
// message body (BODY.PEEK[]); from then on it forwards nothing more, so the
// body FETCH waits for the backend command timeout.
func stallingProxy(t *testing.T, backend string) string {
	t.Helper()
	return loopback.Serve(t, func(c net.Conn) {
		b, err := net.Dial("tcp", backend)
		if err != nil {
			c.Close()
			return
		}
		done := make(chan struct{})
		go func() { // backend -> gateway
			io.Copy(c, b)
			c.Close()
			close(done)
		}()
		// gateway -> backend, until the first body FETCH
		defer func() { b.Close(); <-done }()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 && bytes.Contains(buf[:n], []byte("BODY.PEEK[]")) {
				io.Copy(io.Discard, c) // the FETCH never reaches the backend
				return
			}
			if n > 0 {
				if _, err := b.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
}

// A SIGHUP that shortens timeouts.backend_command applies to the next POP3
// session: its body FETCH on a backend that stopped answering fails after
// the new timeout, not the one in force when the gateway started.
func TestReloadAppliesPOP3BackendTimeouts(t *testing.T) {
	backend := stallingProxy(t, memBackend(t, testMessage))
	slow := baseConfig + "timeouts: {backend_command: 1m}\n"
	srv, _ := startGateway(t, slow, backend)
	reload(t, srv, baseConfig+"timeouts: {backend_command: 300ms}\n", backend)
	c := dialPOP3(t, srv.Addr("pop3"), "")
	c.Expect("+OK")
	c.Command("USER alice", "+OK")
	c.Command("PASS secret", "+OK")
	start := time.Now()
	c.Command("RETR 1", "-ERR [SYS/TEMP]")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("RETR on a silent backend failed after %v; the reloaded backend_command is 300ms", d)
	}
}

// A SIGHUP reaches the fronts too: a bad-command limit lowered by a reload
// applies to the next session on both fronts, while a session that began
// before it keeps its own.
func TestReloadAppliesFrontSettings(t *testing.T) {
	srv, _ := startGateway(t, baseConfig, memBackend(t, testMessage))
	before := dialPOP3(t, srv.Addr("pop3"), "")
	before.Expect("+OK")
	reload(t, srv, strings.Replace(baseConfig, "limits: {", "limits: {preauth_bad_commands: 1, ", 1), "127.0.0.1:1")
	after := dialPOP3(t, srv.Addr("pop3"), "")
	after.Expect("+OK")
	after.Command("BOGUS", "-ERR")
	after.ExpectClosed()

	imapAfter := dialPOP3(t, srv.Addr("imap"), "")
	imapAfter.Expect("* OK")
	imapAfter.Command("a BOGUS", "a BAD")
	imapAfter.Expect("* BYE")
	imapAfter.ExpectClosed()

	before.Command("BOGUS", "-ERR") // the default limit (10) still holds here
	before.Command("CAPA", "+OK")
}
