package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"mailgate/test/pebbletest"
	"mailgate/test/redistest"
)

// TestStorageCertmagicPebble runs certmagic itself over the Storage: two
// instances (each its own Redis client, certmagic cache and config, as two
// gateways would have) manage mail.test at the same time against Pebble.
// One obtains the certificate under the shared lock, the other finds it in
// Redis; a third, started afterwards, loads it. The CA is asked once.
func TestStorageCertmagicPebble(t *testing.T) {
	srv := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true})
	addr, stopRedis := redistest.Start(t)
	var obtained atomic.Int32 // certmagic's cert_obtained events, all instances
	newInstance := func(name string) *certmagic.Config {
		client := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		t.Cleanup(func() { client.Close() })
		log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named(name)
		var magic *certmagic.Config
		cache := certmagic.NewCache(certmagic.CacheOptions{
			GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
			Logger:           log,
		})
		t.Cleanup(cache.Stop)
		magic = certmagic.New(cache, certmagic.Config{
			Storage: NewStorage(client, "mailgate:", log.Named("storage")),
			Logger:  log,
			OnEvent: func(_ context.Context, event string, _ map[string]any) error {
				if event == "cert_obtained" {
					obtained.Add(1)
				}
				return nil
			},
		})
		// Pebble validates nothing (AlwaysValid); certmagic still presents
		// the TLS-ALPN-01 challenge on a port of its own.
		port := pebbletest.FreePorts(t, 1)[0]
		magic.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{
			CA:                   srv.Directory,
			TrustedRoots:         srv.APIRoots(),
			Email:                "postmaster@mail.test",
			Agreed:               true,
			DisableHTTPChallenge: true,
			ListenHost:           "127.0.0.1",
			AltTLSALPNPort:       port,
			Logger:               log,
		})}
		return magic
	}
	roots := srv.Roots(t) // Pebble's issuing root
	// serve returns the leaf an instance serves to a client asking for
	// mail.test, verified against Pebble's root.
	serve := func(t *testing.T, magic *certmagic.Config) *x509.Certificate {
		t.Helper()
		c, err := magic.GetCertificate(&tls.ClientHelloInfo{ServerName: "mail.test"})
		if err != nil {
			t.Fatalf("GetCertificate: %v", err)
		}
		inter := x509.NewCertPool()
		var leaf *x509.Certificate
		for i, der := range c.Certificate {
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				leaf = cert
			} else {
				inter.AddCert(cert)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "mail.test"}); err != nil {
			t.Errorf("the served certificate does not verify for mail.test against Pebble's root: %v", err)
		}
		return leaf
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	instances := []*certmagic.Config{newInstance("a"), newInstance("b")}
	var wg sync.WaitGroup
	for _, magic := range instances {
		wg.Go(func() {
			if err := magic.ManageSync(ctx, []string{"mail.test"}); err != nil {
				t.Errorf("ManageSync: %v", err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	third := newInstance("c")
	if err := third.ManageSync(ctx, []string{"mail.test"}); err != nil {
		t.Fatalf("ManageSync of a third instance: %v", err)
	}
	instances = append(instances, third)

	if n := obtained.Load(); n != 1 {
		t.Errorf("certmagic obtained %d certificates for three instances, want 1", n)
	}
	first := serve(t, instances[0])
	if !strings.Contains(first.Issuer.CommonName, "Pebble") {
		t.Errorf("issuer %q, want Pebble's intermediate", first.Issuer.CommonName)
	}
	for i, magic := range instances[1:] {
		if leaf := serve(t, magic); !leaf.Equal(first) {
			t.Errorf("instance %d serves serial %s, instance 0 %s", i+1, leaf.SerialNumber, first.SerialNumber)
		}
	}
	// In Redis: one certificate, and no lock left behind.
	s := third.Storage.(*Storage)
	keys, err := s.List(ctx, "certificates", true)
	if err != nil {
		t.Fatal(err)
	}
	var crts []string
	for _, k := range keys {
		if path.Ext(k) == ".crt" {
			crts = append(crts, k)
		}
	}
	if len(crts) != 1 {
		t.Errorf("certificates in storage: %q, want one", crts)
	}
	locks, err := s.client.Keys(ctx, s.lockKey("*")).Result()
	if err != nil || len(locks) != 0 {
		t.Errorf("locks left in Redis: %q, %v", locks, err)
	}

	// Redis away: the certificates in memory keep being served, and the
	// storage answers with an error rather than hanging.
	stopRedis()
	for i, magic := range instances {
		if leaf := serve(t, magic); !leaf.Equal(first) {
			t.Errorf("with Redis stopped instance %d serves serial %s, want %s", i, leaf.SerialNumber, first.SerialNumber)
		}
	}
	if _, err := s.Load(ctx, first.DNSNames[0]); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load with Redis stopped: %v, want a connection error", err)
	}
	if ok, err := s.TryLock(ctx, "issue_cert_mail.test"); ok || err == nil {
		t.Errorf("TryLock with Redis stopped = %v, %v; want an error", ok, err)
	}
}
