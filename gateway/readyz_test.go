package gateway

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"mailgate/test/testca"
)

// fakeIMAP serves a greeting (over TLS when cert is given) and answers
// LOGOUT, counting connections.
func fakeIMAP(t *testing.T, cert *tls.Certificate, greeting string) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				if cert != nil {
					tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}})
					if tc.Handshake() != nil {
						return
					}
					c = tc
				}
				c.Write([]byte(greeting))
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if tag, cmd, _ := strings.Cut(strings.TrimSpace(line), " "); strings.EqualFold(cmd, "LOGOUT") {
						c.Write([]byte("* BYE bye\r\n" + tag + " OK done\r\n"))
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &n
}

const readyConfig = `
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
metrics: {address: "127.0.0.1:0"}
routing: {default: mem}
backends:
`

// TestReadyzChecksWhatALoginNeeds: /readyz is 200 only when the default
// backend and each pool complete what a login needs before the password:
// TCP, a verified TLS handshake and an IMAP greeting. A certificate that
// does not verify is named with the key to set. Answers are cached.
func TestReadyzChecksWhatALoginNeeds(t *testing.T) {
	ca := testca.NewT(t)
	cert := ca.CertificateT(t, "127.0.0.1", "imap.internal")
	caFile, err := ca.WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tlsAddr, _ := fakeIMAP(t, &cert, "* OK IMAP ready\r\n")
	silent, _ := fakeIMAP(t, nil, "") // accepts TCP, never greets
	plain, conns := fakeIMAP(t, nil, "* OK IMAP ready\r\n")
	down := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()

	for _, tc := range []struct {
		name, backends string
		code           int
		want           []string
	}{
		{"self-signed, no ca", `  mem: {address: "` + tlsAddr + `", tls: implicit}`, 503,
			[]string{"backend mem", "backends.mem.ca", "certificate signed by unknown authority"}},
		{"wrong name", `  mem: {address: "` + tlsAddr + `", tls: implicit, ca: ` + caFile + `, server_name: imap.example}`, 503,
			[]string{"backend mem", "backends.mem.server_name"}},
		{"verified", `  mem: {address: "` + tlsAddr + `", tls: implicit, ca: ` + caFile + `}`, 200, nil},
		{"no greeting", `  mem: {address: "` + silent + `", tls: none}`, 503, []string{"backend mem"}},
		{"pool with one server down", `  mem: {address: "` + plain + `", tls: none}` + "\n" +
			`  pool: {addresses: ["` + down + `", "` + plain + `"], tls: none}`, 200, nil},
		{"pool all down", `  mem: {address: "` + plain + `", tls: none}` + "\n" +
			`  pool: {addresses: ["` + down + `"], tls: none}`, 503, []string{"backend pool not ready", "unreachable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := startGateway(t, readyConfig+tc.backends+"\ntimeouts: {backend_dial: 1s}\n", "")
			code, body := scrape(t, srv, "/readyz")
			if code != tc.code {
				t.Errorf("/readyz = %d %q, want %d", code, body, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("/readyz body %q lacks %q", body, w)
				}
			}
		})
	}

	// Cached: a second /readyz right after the first opens no connection.
	srv, _ := startGateway(t, readyConfig+`  mem: {address: "`+plain+`", tls: none}`+"\n", "")
	before := conns.Load()
	for range 3 {
		if code, body := scrape(t, srv, "/readyz"); code != http.StatusOK {
			t.Fatalf("/readyz = %d %q", code, body)
		}
	}
	if got := conns.Load() - before; got != 1 {
		t.Errorf("3 /readyz requests opened %d backend connections, want 1 (cached)", got)
	}
}
