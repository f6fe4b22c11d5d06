package imap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap/zaptest"

	"mailgate/test/loopback"
	"mailgate/test/testca"
	"mailgate/test/transcript"
	"mailgate/upstream"
	"mailgate/upstream/imaptest"
)

// fakeBackend plays Backend. With err set it refuses; otherwise it returns
// one end of a net.Pipe and hands the other to the test on peers.
type fakeBackend struct {
	err    error
	caps   []string
	logins chan Login
	peers  chan net.Conn
}

func newFakeBackend(err error) *fakeBackend {
	return &fakeBackend{err: err, caps: []string{"IMAP4rev1", "IDLE", "MOVE"},
		logins: make(chan Login, 10), peers: make(chan net.Conn, 10)}
}

func (b *fakeBackend) Connect(ctx context.Context, login Login) (Upstream, error) {
	b.logins <- login
	if b.err != nil {
		return Upstream{}, b.err
	}
	ours, theirs := net.Pipe()
	b.peers <- theirs
	return Upstream{Conn: ours, Caps: b.caps, Name: "fake"}, nil
}

func testConfig(t *testing.T, b Backend) Config {
	return Config{
		Listener:           "test",
		Backend:            b,
		AllowPlaintextAuth: true,
		AuthFailureDelay:   -1,
		PreauthTimeout:     10 * time.Second,
		Logger:             zaptest.NewLogger(t),
	}
}

// startPipe serves one session over net.Pipe and returns the client side.
// The session must end before the test does.
func startPipe(t *testing.T, cfg Config) *transcript.Conn {
	t.Helper()
	srvConn, cliConn := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		NewServer(cfg).Serve(ctx, srvConn)
	}()
	t.Cleanup(func() {
		cliConn.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after the client closed")
		}
		cancel()
	})
	return transcript.New(t, cliConn)
}

// testCert returns a CA pool and a server certificate for 127.0.0.1 and
// "localhost" signed by it (test/testca).
// handoff sends login with send (the client's Send or SendRaw), waits until
// the backend has the login, and returns the backend's end of the session.
func (b *fakeBackend) handoff(send func(string), login string) net.Conn {
	send(login)
	<-b.logins
	return <-b.peers
}

// greet starts a session with cfg (startPipe) and reads its greeting.
func greet(t *testing.T, cfg Config) *transcript.Conn {
	t.Helper()
	c := startPipe(t, cfg)
	c.Expect("* OK")
	return c
}

// tlsConfig is testConfig with a certificate for STARTTLS and implicit TLS
// (pool trusts it) and plaintext logins refused without TLS.
func tlsConfig(t *testing.T, b Backend) (cfg Config, pool *x509.CertPool) {
	t.Helper()
	pool, cert := testCert(t)
	cfg = testConfig(t, b)
	cfg.AllowPlaintextAuth = false
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	return cfg, pool
}

func testCert(t testing.TB) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	ca := testca.NewT(t)
	cert := ca.CertificateT(t, "localhost", "127.0.0.1")
	return ca.Pool(), cert
}

// handoffBackend is the gateway's wiring in miniature: one target, logged in
// to with upstream.Login.
type handoffBackend struct{ target upstream.Target }

func (h handoffBackend) Connect(ctx context.Context, l Login) (Upstream, error) {
	t := h.target
	t.ClientAddr = l.Remote
	p, err := upstream.Login(ctx, t, upstream.Timeouts{Dial: 2 * time.Second}, l.User, l.Password)
	switch {
	case errors.Is(err, upstream.ErrAuthFailed):
		return Upstream{}, fmt.Errorf("%w: %w", ErrAuthFailed, err)
	case err != nil:
		return Upstream{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return Upstream{Conn: p.Conn, Caps: p.Caps, Name: t.Name}, nil
}

// memBackend starts imapmemserver with alice/secret, an Archive mailbox
// and two messages in INBOX.
func memBackend(t *testing.T) string {
	t.Helper()
	srv, err := imaptest.Start(imaptest.User{Name: "alice", Password: "secret", Mailboxes: []string{"Archive"},
		Messages: [][]byte{[]byte("Subject: one\r\n\r\nfirst\r\n"), []byte("Subject: two\r\n\r\nsecond\r\n")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv.Addr()
}

// startGateway serves cfg on 127.0.0.1:0 until the test ends.
func startGateway(t *testing.T, cfg Config) string {
	t.Helper()
	srv := NewServer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	addr := loopback.Serve(t, func(c net.Conn) { srv.Serve(ctx, c) })
	t.Cleanup(cancel) // runs first: sessions end, then loopback waits for them
	return addr
}

func targetFor(t *testing.T, addr string) upstream.Target {
	cfg := &upstream.BackendConfig{Address: addr, TLS: upstream.TLSNone}
	cfg.ApplyDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	return upstream.Target{Name: "mem", Address: addr, Config: cfg}
}

func TestEndToEndThroughHandoff(t *testing.T) {
	pool, cert := testCert(t)
	cfg := Config{
		Listener:         "e2e",
		Backend:          handoffBackend{targetFor(t, memBackend(t))},
		TLSConfig:        &tls.Config{Certificates: []tls.Certificate{cert}},
		AuthFailureDelay: -1,
		Logger:           zaptest.NewLogger(t),
	}
	gw := startGateway(t, cfg)

	c, err := imapclient.DialStartTLS(gw, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	// The backend's capabilities reached the client with the login reply.
	if caps := c.Caps(); !caps.Has(imap.CapIMAP4rev2) || caps.Has(imap.CapLoginDisabled) {
		t.Errorf("caps after login: %v", caps)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 2 {
		t.Fatalf("SELECT: %v %+v", err, sel)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH: %v", err)
	}
	for _, body := range msgs[0].BodySection {
		if string(body.Bytes) != "Subject: one\r\n\r\nfirst\r\n" {
			t.Fatalf("body %q", body.Bytes)
		}
	}
	raw := "Subject: three\r\n\r\n" + strings.Repeat("line\r\n", 2000)
	app := c.Append("INBOX", int64(len(raw)), nil)
	io.WriteString(app, raw)
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if _, err := c.Move(imap.SeqSetNum(1), "Archive").Wait(); err != nil {
		t.Fatalf("MOVE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
}

func TestEndToEndFailures(t *testing.T) {
	mem := memBackend(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	down := ln.Addr().String()
	ln.Close()
	tests := []struct {
		name    string
		backend string
		pass    string
		code    imap.ResponseCode
	}{
		{"wrong password", mem, "wrong", imap.ResponseCodeAuthenticationFailed},
		{"backend down", down, "secret", imap.ResponseCodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Backend: handoffBackend{targetFor(t, tt.backend)}, AllowPlaintextAuth: true,
				AuthFailureDelay: -1, Logger: zaptest.NewLogger(t)}
			c, err := imapclient.DialInsecure(startGateway(t, cfg), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			err = c.Login("alice", tt.pass).Wait()
			var ie *imap.Error
			if !errors.As(err, &ie) || ie.Code != tt.code {
				t.Fatalf("err = %v, want code %s", err, tt.code)
			}
			if strings.Contains(ie.Text, tt.backend) {
				t.Fatalf("reply %q names the backend", ie.Text)
			}
			if time.Since(start) > time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
		})
	}
}
