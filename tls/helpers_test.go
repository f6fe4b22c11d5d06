package tls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/test/testca"
)

// testLogger logs to the test and to an observer the test can query. Once
// the test's cleanups have run, entries are dropped: background goroutines
// of certmagic that log while they wind down must not call t.Log late.
func testLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	t.Helper()
	var done atomic.Bool
	t.Cleanup(func() { done.Store(true) }) // registered first: runs last
	obsCore, logs := observer.New(zapcore.DebugLevel)
	log := zaptest.NewLogger(t, zaptest.Level(zapcore.DebugLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return gatedCore{Core: zapcore.NewTee(c, obsCore), done: &done}
	})))
	return log, logs
}

type gatedCore struct {
	zapcore.Core
	done *atomic.Bool
}

func (c gatedCore) With(fields []zapcore.Field) zapcore.Core {
	return gatedCore{Core: c.Core.With(fields), done: c.done}
}

func (c gatedCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.done.Load() {
		return ce
	}
	return c.Core.Check(e, ce)
}

// testCA issues the package's test certificates (test/testca); testRoots
// trusts it. TestSelfSigned alone makes its own, with the SelfSigned under
// test.
var testCA = sync.OnceValues(testca.New)

func testRoots(t *testing.T) *x509.CertPool {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca.Pool()
}

// testCert issues a new certificate for names from testCA.
func testCert(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate(names...)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// writePair writes a new pair for names from testCA into dir and returns the
// file names and the certificate.
func writePair(t *testing.T, dir, base string, names ...string) (CertificateFile, tls.Certificate) {
	t.Helper()
	cert := testCert(t, names...)
	f := CertificateFile{Cert: filepath.Join(dir, base+".crt"), Key: filepath.Join(dir, base+".key")}
	if err := WritePEM(cert, f.Cert, f.Key); err != nil {
		t.Fatal(err)
	}
	return f, cert
}

// tlsServer accepts TLS connections with cfg on 127.0.0.1 and echoes what
// it reads, so a test can prove a session survives a reload or renewal.
func tlsServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				_, _ = io.Copy(c, c) // handshake happens on first Read
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// dial completes a TLS handshake with addr and returns the connection.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, nil
}

// peerLeaf handshakes with addr and returns the server's leaf certificate.
func peerLeaf(t *testing.T, addr string, cfg *tls.Config) (*x509.Certificate, error) {
	t.Helper()
	c, err := dial(t, addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// verifyAs is a client VerifyConnection that checks the chain against roots
// for name, for clients that send no SNI (InsecureSkipVerify switches off
// only the default check that would need ServerName).
func verifyAs(roots *x509.CertPool, name string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no peer certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
		return err
	}
}

// echo proves the session c is alive.
func echo(t *testing.T, c *tls.Conn) {
	t.Helper()
	msg := []byte("NOOP\r\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write on established session: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read on established session: %v", err)
	}
}
