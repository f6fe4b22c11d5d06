package gateway

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailgate/test/transcript"
)

// imapLogin connects to the IMAP listener and logs alice in; the session is
// then relayed to the backend.
func imapLogin(t *testing.T, srv *Server) *transcript.Conn {
	t.Helper()
	c := transcript.Dial(t, srv.Addr("imap").String())
	c.Expect("* OK")
	if _, st := c.Tagged("a", "LOGIN alice secret"); !strings.HasPrefix(st, "a OK") {
		t.Fatalf("login: %q", st)
	}
	if _, st := c.Tagged("b", "NOOP"); !strings.HasPrefix(st, "b OK") { // relayed: the backend answers
		t.Fatalf("NOOP: %q", st)
	}
	return c
}

// waitNoSessionGoroutine waits until no goroutine serves a client
// connection or runs a relay: an idle relayed session has handed itself to
// the lot.
func waitNoSessionGoroutine(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		busy := false
		for _, frame := range []string{"gateway.(*listener).handle", "imap.(*Server).Handle", "imap.(*relayer).run", "imap.(*relayer).start"} {
			busy = busy || strings.Contains(stacks, frame)
		}
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a goroutine still serves the idle relayed session:\n%s", stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func activeIMAP(t *testing.T, srv *Server) float64 {
	t.Helper()
	_, body := scrape(t, srv, "/metrics")
	return metricValue(t, body, `mailgate_connections_active{listener="imap",protocol="imap"}`)
}

// An idle relayed IMAP session runs no goroutine, yet it still holds its
// place under limits.connections and in the active-connections gauge until
// it ends; then both are released.
func TestIdleIMAPRelayHoldsItsLimitAndGauge(t *testing.T) {
	cfg := strings.Replace(baseConfig, "limits: {", "limits: {connections: 1, per_ip: 1, ", 1)
	srv, _ := startGateway(t, cfg, memBackend(t, testMessage))
	first := imapLogin(t, srv)
	waitNoSessionGoroutine(t)
	if n := activeIMAP(t, srv); n != 1 {
		t.Fatalf("active IMAP connections with one idle relayed session: %v", n)
	}
	refused := transcript.Dial(t, srv.Addr("imap").String())
	refused.Expect("* BYE [UNAVAILABLE]")
	refused.ExpectClosed()

	// The idle session still relays both ways.
	if _, st := first.Tagged("c", "SELECT INBOX"); !strings.HasPrefix(st, "c OK") {
		t.Fatalf("SELECT after idling: %q", st)
	}
	first.Tagged("d", "LOGOUT")
	first.ExpectClosed()
	deadline := time.Now().Add(5 * time.Second)
	for activeIMAP(t, srv) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the gauge still counts the session after its end")
		}
		time.Sleep(10 * time.Millisecond)
	}
	imapLogin(t, srv) // the limit's place is free again
}

// Shutdown waits out its grace for an idle relayed session (which has no
// goroutine of its own), then cuts it and returns only after it has ended.
func TestShutdownGraceWaitsForAnIdleIMAPRelay(t *testing.T) {
	srv, logs := startGateway(t, baseConfig, memBackend(t, testMessage))
	c := imapLogin(t, srv)
	waitNoSessionGoroutine(t)
	const grace = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	start := time.Now()
	srv.Shutdown(ctx)
	if d := time.Since(start); d < grace {
		t.Fatalf("Shutdown returned after %v, before its grace of %v with a session open", d, grace)
	}
	c.DrainUntilClosed(5 * time.Second)
	var ended bool
	for _, e := range logs.FilterMessage("session end").All() {
		if r, ok := e.ContextMap()["result"]; ok && r == "shutdown" && e.ContextMap()["proto"] == "imap" {
			ended = true
		}
	}
	if !ended {
		t.Fatalf("no imap session end with result shutdown logged: %v", logs.FilterMessage("session end").All())
	}
}
