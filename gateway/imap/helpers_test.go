package imap

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
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

// testClient is a raw transcript client.
type testClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func newTestClient(t *testing.T, conn net.Conn) *testClient {
	return &testClient{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *testClient) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// line reads one line without CRLF.
func (c *testClient) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads one line and checks its prefix.
func (c *testClient) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

// expectClosed checks that the server closed the connection.
func (c *testClient) expectClosed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := c.br.ReadString('\n'); err == nil {
		c.t.Fatalf("got %q, want the connection closed", l)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		c.t.Fatal("connection still open")
	}
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
func startPipe(t *testing.T, cfg Config) *testClient {
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
	return newTestClient(t, cliConn)
}

// testCert returns a CA pool and a server certificate for 127.0.0.1 and
// "localhost" signed by it.
func testCert(t testing.TB) (*x509.CertPool, tls.Certificate, []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailgate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caDER
}
