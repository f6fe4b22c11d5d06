package test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/harness"
	"mailgate/test/mailserver"
	"mailgate/test/pop3client"
)

// TestHAProxySendProxyV2: HAProxy in front of mailgate sends a PROXY v2
// header; mailgate logs, counts and routes with the original client address
// (here 127.0.0.5, the client's own loopback source), and a PROXY header
// sent straight to mailgate from an untrusted address is not honoured.
func TestHAProxySendProxyV2(t *testing.T) {
	haproxy := harness.NeedProgram(t, "haproxy")
	u := newAccount(t)
	dc := dovecotServer(t)
	seed(t, u, message("haproxy", "through haproxy\r\n"))

	// The routing lookup records the Client-IP it is told.
	var mu sync.Mutex
	var clientIPs []string
	host, port, _ := net.SplitHostPort(dc.IMAPAddr)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		clientIPs = append(clientIPs, r.Header.Get("Client-IP"))
		mu.Unlock()
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("Auth-Server", host)
		w.Header().Set("Auth-Port", port)
	}))
	defer svc.Close()

	g := harness.Start(t, fmt.Sprintf(`listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true, proxy_protocol: [127.0.0.1/32]}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot, lookup: {url: %q}}
limits: {auth_failure_delay: 1ms}
`, dc.IMAPAddr, svc.URL+"/auth"))

	// HAProxy listens on 127.0.0.1:free and connects to mailgate from
	// 127.0.0.1, a trusted source.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
frontend pop3
    bind %s
    default_backend mailgate
backend mailgate
    server gw %s send-proxy-v2
`, front, g.Addr("pop3"))), 0o644)
	cmd := exec.Command(haproxy, "-f", cfg, "-db")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	dialFrom := func(src, addr string) *pop3client.Client {
		t.Helper()
		var c net.Conn
		var err error
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
			if c, err = d.Dial("tcp", addr); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("dial %s from %s: %v (haproxy: %s)", addr, src, err, out.String())
		}
		pc, err := pop3client.NewClient(c, 10*time.Second)
		if err != nil {
			t.Fatalf("greeting through %s: %v (haproxy: %s)", addr, err, out.String())
		}
		return pc
	}

	// A client at 127.0.0.5 through HAProxy: a failed login, then a good one.
	c := dialFrom("127.0.0.5", front)
	if err := c.Login(u.User, "wrong-"+u.Pass); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	c.Close()
	c = dialFrom("127.0.0.5", front)
	if err := c.Login(u.User, u.Pass); err != nil {
		t.Fatalf("login through HAProxy: %v", err)
	}
	if body, err := c.Retr(1); err != nil || !strings.Contains(string(body), "through haproxy") {
		t.Fatalf("RETR through HAProxy: %v", err)
	}
	c.Quit()

	logs := g.Logs()
	if !strings.Contains(logs, `"msg":"login failed"`) || !strings.Contains(logs, `"client_ip":"127.0.0.5"`) {
		t.Errorf("the failed login was not logged with the original client address:\n%s", mailserver.Tail(logs, 20))
	}
	mu.Lock()
	ips := append([]string(nil), clientIPs...)
	mu.Unlock()
	if len(ips) == 0 || ips[len(ips)-1] != "127.0.0.5" {
		t.Errorf("routing saw Client-IP %q, want 127.0.0.5", ips)
	}

	// Straight to mailgate from an untrusted address, a PROXY header is
	// just an invalid command: the address it claims is never used.
	c = dialFrom("127.0.0.6", g.Addr("pop3"))
	if _, err := c.Cmd("PROXY TCP4 203.0.113.9 127.0.0.1 4000 110"); err == nil {
		t.Error("a PROXY line from an untrusted peer was accepted")
	}
	c.Close()
	if strings.Contains(g.Logs(), "203.0.113.9") {
		t.Error("the address of an untrusted PROXY header was used")
	}
}
