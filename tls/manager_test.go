package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// staticManager writes three pairs and starts a Manager over them:
// default (mail.example.com), wildcard (*.example.org and example.org),
// other (imap.example.net).
func staticManager(t *testing.T) (*Manager, map[string]tls.Certificate, *x509.CertPool, []CertificateFile) {
	t.Helper()
	dir := t.TempDir()
	log, _ := testLogger(t)
	certs := map[string]tls.Certificate{}
	var files []CertificateFile
	roots := testRoots(t)
	for _, p := range []struct {
		base  string
		names []string
	}{
		{"default", []string{"mail.example.com"}},
		{"wildcard", []string{"*.example.org", "example.org"}},
		{"other", []string{"imap.example.net", "MAIL.example.com"}}, // duplicate name: the first pair keeps it
	} {
		f, c := writePair(t, dir, p.base, p.names...)
		files = append(files, f)
		certs[p.base] = c
	}
	m, err := New(context.Background(), Config{Certificates: files}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, certs, roots, files
}

func TestStaticSNISelection(t *testing.T) {
	m, certs, roots, _ := staticManager(t)
	addr := tlsServer(t, m.ServerConfig())
	for _, tc := range []struct {
		sni, want string
		verify    bool // the chosen certificate is valid for sni
	}{
		{"mail.example.com", "default", true},
		{"MAIL.Example.COM", "default", true},
		{"pop.example.org", "wildcard", true},
		{"example.org", "wildcard", true},
		{"imap.example.net", "other", true},
		{"a.b.example.org", "default", false}, // a wildcard covers one label only (RFC 6125 §6.4.3)
		{"unknown.test", "default", false},
		{"", "default", false}, // no SNI
	} {
		t.Run(tc.sni, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: roots, ServerName: tc.sni}
			if !tc.verify {
				cfg = &tls.Config{InsecureSkipVerify: true}
				if tc.sni != "" {
					cfg.ServerName = tc.sni
				}
			}
			leaf, err := peerLeaf(t, addr, cfg)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if want := certs[tc.want].Leaf; !leaf.Equal(want) {
				t.Errorf("SNI %q got certificate for %v, want %s (%v)", tc.sni, leaf.DNSNames, tc.want, want.DNSNames)
			}
		})
	}
}

func TestStaticReload(t *testing.T) {
	m, certs, _, files := staticManager(t)
	addr := tlsServer(t, m.ServerConfig())
	client := &tls.Config{InsecureSkipVerify: true, ServerName: "mail.example.com"}

	// A session established before the reload.
	before, err := dial(t, addr, client)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	echo(t, before)

	fresh := testCert(t, "mail.example.com")
	if err := WritePEM(fresh, files[0].Cert, files[0].Key); err != nil {
		t.Fatal(err)
	}
	if leaf, err := peerLeaf(t, addr, client); err != nil || !leaf.Equal(certs["default"].Leaf) {
		t.Fatalf("before Reload: err %v, new file served already: %v", err, err == nil && leaf.Equal(fresh.Leaf))
	}
	if err := m.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	leaf, err := peerLeaf(t, addr, client)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.Equal(fresh.Leaf) {
		t.Errorf("after Reload got serial %x, want the new %x", leaf.SerialNumber, fresh.Leaf.SerialNumber)
	}
	// Other pairs were re-read too, and SNI still works.
	leaf, err = peerLeaf(t, addr, &tls.Config{InsecureSkipVerify: true, ServerName: "x.example.org"})
	if err != nil || !leaf.Equal(certs["wildcard"].Leaf) {
		t.Errorf("wildcard after Reload: err %v", err)
	}
	// The old session is untouched.
	echo(t, before)
	if got := before.ConnectionState().PeerCertificates[0]; !got.Equal(certs["default"].Leaf) {
		t.Error("established session changed certificate")
	}
}

func TestStaticReloadBrokenKeepsOld(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, f CertificateFile, dir string)
		wantErr string
	}{
		{"garbage cert", func(t *testing.T, f CertificateFile, _ string) {
			if err := os.WriteFile(f.Cert, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "wildcard.crt"},
		{"missing key", func(t *testing.T, f CertificateFile, _ string) {
			if err := os.Remove(f.Key); err != nil {
				t.Fatal(err)
			}
		}, "wildcard.key"},
		{"key of another certificate", func(t *testing.T, f CertificateFile, dir string) {
			other := testCert(t, "x.example.org")
			if err := WritePEM(other, filepath.Join(dir, "unused.crt"), f.Key); err != nil {
				t.Fatal(err)
			}
		}, "private key does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			log, logs := testLogger(t)
			f0, c0 := writePair(t, dir, "default", "mail.example.com")
			f1, c1 := writePair(t, dir, "wildcard", "*.example.org")
			m, err := New(context.Background(), Config{Certificates: []CertificateFile{f0, f1}}, log)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)
			addr := tlsServer(t, m.ServerConfig())

			// A good new default pair and a broken second one: all or nothing.
			writePair(t, dir, "default", "mail.example.com")
			tc.breakIt(t, f1, dir)

			err = m.Reload()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Reload error %v, want one mentioning %q", err, tc.wantErr)
			}
			if n := logs.FilterMessage("static certificates not reloaded; keeping the previous ones").Len(); n != 1 {
				t.Errorf("logged the failure %d times, want 1", n)
			}
			for sni, want := range map[string]*x509.Certificate{"mail.example.com": c0.Leaf, "a.example.org": c1.Leaf, "": c0.Leaf} {
				leaf, err := peerLeaf(t, addr, &tls.Config{InsecureSkipVerify: true, ServerName: sni})
				if err != nil {
					t.Fatalf("SNI %q: %v", sni, err)
				}
				if !leaf.Equal(want) {
					t.Errorf("SNI %q: a failed reload changed the certificate", sni)
				}
			}
		})
	}
}

func TestMinVersion(t *testing.T) {
	dir := t.TempDir()
	f, _ := writePair(t, dir, "c", "mail.example.com")
	roots := testRoots(t)
	for _, tc := range []struct {
		config     string
		client     uint16 // client's MaxVersion
		handshakes bool
	}{
		{"", tls.VersionTLS11, false}, // default 1.2: TLS 1.1 refused
		{"", tls.VersionTLS12, true},
		{"", tls.VersionTLS13, true},
		{"1.2", tls.VersionTLS10, false},
		{"1.3", tls.VersionTLS12, false},
		{"1.3", tls.VersionTLS13, true},
	} {
		t.Run(tc.config+"/"+tls.VersionName(tc.client), func(t *testing.T) {
			log, _ := testLogger(t)
			m, err := New(context.Background(), Config{Certificates: []CertificateFile{f}, MinVersion: tc.config}, log)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			addr := tlsServer(t, m.ServerConfig())
			c, err := dial(t, addr, &tls.Config{RootCAs: roots, ServerName: "mail.example.com", MinVersion: tls.VersionTLS10, MaxVersion: tc.client})
			if tc.handshakes != (err == nil) {
				t.Fatalf("handshake with max %s: err %v, want success %v", tls.VersionName(tc.client), err, tc.handshakes)
			}
			if c != nil {
				c.Close()
			}
		})
	}
	for _, bad := range []string{"1.0", "1.1", "1.4", "TLSv1.2"} {
		if _, err := New(context.Background(), Config{Certificates: []CertificateFile{f}, MinVersion: bad}, nil); err == nil || !strings.Contains(err.Error(), "tls.min_version") {
			t.Errorf("min_version %q: error %v, want one naming tls.min_version", bad, err)
		}
	}
}

func TestALPN(t *testing.T) {
	m, _, roots, _ := staticManager(t)
	tc := m.ServerConfig()
	if got := strings.Join(tc.NextProtos, ","); got != "imap,pop3" {
		t.Errorf("NextProtos without ACME = %s, want imap,pop3", got)
	}
	addr := tlsServer(t, tc)
	for _, c := range []struct {
		offer []string
		want  string // negotiated; "!" means refused
	}{
		{nil, ""}, // most mail clients offer no ALPN
		{[]string{"imap"}, "imap"},
		{[]string{"pop3"}, "pop3"},
		{[]string{"h2", "imap"}, "imap"},
		{[]string{"h2", "http/1.1"}, "!"}, // ALPACA: a browser's request never reaches a mail session
	} {
		t.Run(strings.Join(c.offer, ","), func(t *testing.T) {
			conn, err := dial(t, addr, &tls.Config{RootCAs: roots, ServerName: "mail.example.com", NextProtos: c.offer})
			if c.want == "!" {
				if err == nil {
					conn.Close()
					t.Fatal("handshake offering only HTTP protocols succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.ConnectionState().NegotiatedProtocol; got != c.want {
				t.Errorf("negotiated %q, want %q", got, c.want)
			}
		})
	}
}

func TestNewWithoutCertificates(t *testing.T) {
	m, err := New(context.Background(), Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if tc := m.ServerConfig(); tc != nil {
		t.Errorf("ServerConfig with no certificates = %+v, want nil", tc)
	}
	if err := m.Reload(); err != nil {
		t.Errorf("Reload with no static certificates: %v", err)
	}
}

func TestNewBadStaticFile(t *testing.T) {
	dir := t.TempDir()
	good, _ := writePair(t, dir, "good", "mail.example.com")
	missing := CertificateFile{Cert: filepath.Join(dir, "nope.crt"), Key: good.Key}
	_, err := New(context.Background(), Config{Certificates: []CertificateFile{good, missing}}, nil)
	if err == nil || !strings.Contains(err.Error(), "tls.certificates[1]") || !strings.Contains(err.Error(), "nope.crt") {
		t.Fatalf("error %v, want one naming tls.certificates[1] and nope.crt", err)
	}
}

func TestSelfSigned(t *testing.T) {
	if _, err := SelfSigned(); err == nil {
		t.Error("SelfSigned() without names succeeded")
	}
	c, err := SelfSigned("mail.example.com", "*.example.org", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	key, ok := c.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256", c.PrivateKey)
	}
	if got := strings.Join(c.Leaf.DNSNames, ","); got != "mail.example.com,*.example.org" {
		t.Errorf("DNS SANs %s", got)
	}
	if len(c.Leaf.IPAddresses) != 2 || !c.Leaf.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("IP SANs %v", c.Leaf.IPAddresses)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Leaf)
	for _, name := range []string{"mail.example.com", "pop.example.org", "127.0.0.1"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}

	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := WritePEM(c, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	back, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Leaf.Equal(c.Leaf) {
		t.Error("WritePEM round trip changed the certificate")
	}
	if fi, err := os.Stat(keyPath); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}
