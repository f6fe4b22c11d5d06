package gateway

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/gateway/config"
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

// startGateway runs a gateway from YAML (BACKEND is replaced by backend)
// and returns it with an observer of its logs.
func startGateway(t *testing.T, yaml, backend string) (*Server, *observer.ObservedLogs) {
	t.Helper()
	cfg, err := config.Parse([]byte(strings.ReplaceAll(yaml, "BACKEND", backend)))
	if err != nil {
		t.Fatal(err)
	}
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

// pop3Conn is a line-level POP3 test client.
type pop3Conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialPOP3(t *testing.T, addr net.Addr, from string) *pop3Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &pop3Conn{t: t, c: c, r: bufio.NewReader(c)}
}

func (p *pop3Conn) line() string {
	p.t.Helper()
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends a command and returns the first response line.
func (p *pop3Conn) cmd(s string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.c, s+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
	return p.line()
}

// multi reads a multi-line body up to the terminating dot.
func (p *pop3Conn) multi() []string {
	p.t.Helper()
	var lines []string
	for {
		l := p.line()
		if l == "." {
			return lines
		}
		lines = append(lines, strings.TrimPrefix(l, "."))
	}
}

func zapString(k, v string) zap.Field { return zap.String(k, v) }
