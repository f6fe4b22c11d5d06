package gateway

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"mailgate/routing"
)

func loginPOP3(t *testing.T, srv *Server, user, pass string) string {
	t.Helper()
	c, r := pop3Login(t, srv.Addr("pop3"), "", user, pass)
	if strings.HasPrefix(r, "+OK") {
		c.Command("QUIT", "")
	}
	return r
}

func TestPoolFailoverMovesOnlyTheDownServersUsers(t *testing.T) {
	a, b := memBackend(t, testMessage), memBackend(t, testMessage)
	yaml := strings.Replace(baseConfig, `mem: {address: "BACKEND", tls: none}`,
		`mem: {addresses: ["`+a+`", "`+b+`"], tls: none}`, 1)
	srv, logs := startGateway(t, yaml, "")
	first := routing.Rank([]string{a, b}, "alice")[0]

	if r := loginPOP3(t, srv, "alice", "secret"); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login with both servers up: %q", r)
	}
	if srv.health.IsDown(first) {
		t.Fatal("a healthy server is marked down")
	}
	// Take alice's server away: she moves to the other one.
	blockAddr(t, first)
	if r := loginPOP3(t, srv, "alice", "secret"); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login with alice's server down: %q", r)
	}
	if !srv.health.IsDown(first) {
		t.Error("the unreachable server is not in its cool-down")
	}
	if logs.FilterMessage("backend server unreachable; skipping it").Len() != 1 {
		t.Error("the failover was not logged once")
	}
}

// blockAddr stops the memBackend at addr and checks nothing answers there.
func blockAddr(t *testing.T, addr string) {
	t.Helper()
	stopBackend(t, addr)
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
}

func TestLookupRoutesRewritesAndRejects(t *testing.T) {
	backend := memBackend(t, testMessage)
	host, port, _ := net.SplitHostPort(backend)
	var gotPass []string
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPass = append(gotPass, r.Header.Get("Auth-Pass"))
		switch r.Header.Get("Auth-User") {
		case "carol@example.com":
			w.Header().Set("Auth-Status", "OK")
			w.Header().Set("Auth-Server", host)
			w.Header().Set("Auth-Port", port)
			w.Header().Set("Auth-User", "alice")
		default:
			w.Header().Set("Auth-Status", "Invalid login or password")
		}
	}))
	t.Cleanup(svc.Close)
	yaml := strings.Replace(baseConfig, `routing: {default: mem}`,
		`routing: {default: mem, lookup: {url: "`+svc.URL+`/auth", send_password: true}}`, 1)
	srv, _ := startGateway(t, yaml, "127.0.0.1:1") // the backend's own address is never dialed

	if r := loginPOP3(t, srv, "carol@example.com", "secret"); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login routed by the lookup: %q", r)
	}
	if r := loginPOP3(t, srv, "mallory@example.com", "guess"); r != "-ERR [AUTH] Invalid login or password" {
		t.Fatalf("rejected login: %q, want the service's text", r)
	}
	if len(gotPass) != 2 || gotPass[0] != "secret" {
		t.Errorf("Auth-Pass sent: %q", gotPass)
	}

	svc.Close()
	if r := loginPOP3(t, srv, "carol@example.com", "other"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Fatalf("lookup service down: %q, want -ERR [SYS/TEMP]", r)
	}
}
