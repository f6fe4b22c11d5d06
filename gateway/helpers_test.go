package gateway

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/gateway/config"
	"mailgate/test/transcript"
	"mailgate/upstream/imaptest"
)

func tcpAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }

// memBackend serves go-imap's in-memory IMAP server on loopback with user
// alice/secret and the given messages in INBOX.
func memBackend(t *testing.T, messages ...string) string {
	t.Helper()
	var msgs [][]byte
	for _, m := range messages {
		msgs = append(msgs, []byte(m))
	}
	srv, err := imaptest.Start(imaptest.User{Name: "alice", Password: "secret", Messages: msgs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	backends.Store(srv.Addr(), srv)
	return srv.Addr()
}

// backends maps a memBackend address to its server, so a test can stop one.
var backends sync.Map

func stopBackend(t *testing.T, addr string) {
	t.Helper()
	srv, ok := backends.Load(addr)
	if !ok {
		t.Fatalf("no backend at %s", addr)
	}
	srv.(*imaptest.Server).Close()
}

// parseConfig parses YAML with BACKEND replaced by backend.
func parseConfig(t *testing.T, yaml, backend string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(strings.ReplaceAll(yaml, "BACKEND", backend)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// reload reloads srv from YAML (BACKEND replaced by backend), as a SIGHUP
// does.
func reload(t *testing.T, srv *Server, yaml, backend string) {
	t.Helper()
	if err := srv.Reload(parseConfig(t, yaml, backend)); err != nil {
		t.Fatal(err)
	}
}

// startGateway runs a gateway from YAML (BACKEND is replaced by backend)
// and returns it with an observer of its logs.
func startGateway(t *testing.T, yaml, backend string) (*Server, *observer.ObservedLogs) {
	t.Helper()
	cfg := parseConfig(t, yaml, backend)
	core, logs := observer.New(zap.DebugLevel)
	srv, err := New(cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv, logs
}

// dialPOP3 connects to addr, from the local address from when it is not
// empty, for a POP3 transcript.
func dialPOP3(t *testing.T, addr net.Addr, from string) *transcript.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	conn, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c := transcript.New(t, conn)
	c.Timeout = 20 * time.Second
	return c
}

// pop3Login dials addr from the address from, reads the greeting, sends
// USER and PASS and returns the connection and the reply to PASS.
func pop3Login(t *testing.T, addr net.Addr, from, user, pass string) (*transcript.Conn, string) {
	t.Helper()
	c := dialPOP3(t, addr, from)
	c.Line()
	c.Command("USER "+user, "")
	return c, c.Command("PASS "+pass, "")
}

func zapString(k, v string) zap.Field { return zap.String(k, v) }
