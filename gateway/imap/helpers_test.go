package imap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"mailgate/test/testca"
	"mailgate/test/transcript"
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
func testCert(t testing.TB) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	ca := testca.NewT(t)
	cert := ca.CertificateT(t, "localhost", "127.0.0.1")
	return ca.Pool(), cert
}
