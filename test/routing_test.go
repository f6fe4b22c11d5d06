package test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailgate/routing"
	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// switchable is a TCP forwarder on a fixed loopback port in front of a
// backend, that a test can take down (connections refused) and bring back
// on the same address: a server of a pool that stops and returns.
type switchable struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]bool
}

func newSwitchable(t *testing.T, target string) *switchable {
	t.Helper()
	s := &switchable{target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(s.down)
	return s
}

func (s *switchable) serve(ln net.Listener) {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", s.target)
			if err != nil {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.conns[c], s.conns[b] = true, true
			s.mu.Unlock()
			go func() { io.Copy(b, c); b.Close() }()
			go func() { io.Copy(c, b); c.Close() }()
		}
	}()
}

// down closes the listener and every connection through it.
func (s *switchable) down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		c.Close()
	}
	clear(s.conns)
}

// up listens on the same address again.
func (s *switchable) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", s.addr, err)
	}
	s.serve(ln)
}

// whoIs logs in over POP3 and returns the Subject of message 1: each backend
// holds a message naming itself.
func whoIsPOP3(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c, err := pop3client.Dial(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass); err != nil {
		t.Fatalf("POP3 login %s: %v", user, err)
	}
	top, err := c.Top(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Quit()
	return subjectOf(string(top))
}

func whoIsIMAP(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("IMAP login %s: %v", user, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imapSeq1(), imapEnvelope()).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("IMAP FETCH: %v %d", err, len(msgs))
	}
	c.Logout().Wait()
	return msgs[0].Envelope.Subject
}

func subjectOf(header string) string {
	for _, l := range strings.Split(header, "\r\n") {
		if s, ok := strings.CutPrefix(l, "Subject: "); ok {
			return s
		}
	}
	return ""
}

// twoDovecots starts a second Dovecot beside the package's one, with the
// same user on both and a message on each naming its server.
func twoDovecots(t *testing.T, users ...account) (a, b *dovecot.Server) {
	t.Helper()
	a = dovecotServer(t)
	b = dovecot.StartForTest(t, dovecot.Options{})
	for _, u := range users {
		if err := b.AddUser(u.User, u.Pass); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Append(u.User, u.Pass, "INBOX", message("server-A", "on A\r\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Append(u.User, u.Pass, "INBOX", message("server-B", "on B\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

func routingGateway(t *testing.T, backends, routingYAML string) *harness.Gateway {
	return harness.Start(t, fmt.Sprintf(`listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
%s
routing:
%s
limits: {auth_failure_delay: 1ms, auth_failures_per_ip: 10000/min}
timeouts: {backend_dial: 2s}
`, backends, routingYAML))
}

func TestRoutingDomainsToTwoDovecots(t *testing.T) {
	alice, bob := newAccount(t), newAccount(t)
	// Logins by domain: alice@a.test and bob@b.test, rewritten to the
	// backend names of the accounts.
	a, b := twoDovecots(t, alice, bob)
	g := routingGateway(t, fmt.Sprintf(`  A: {address: %q, tls: none}
  B: {address: %q, tls: none}`, a.IMAPAddr, b.IMAPAddr), fmt.Sprintf(`  rules:
    - {domain: a.test, backend: A, rewrite_user: %q}
    - {domain: b.test, backend: B, rewrite_user: %q}`, alice.User, bob.User))
	for _, tc := range []struct {
		login, pass, want string
	}{
		{"alice@a.test", alice.Pass, "server-A"},
		{"bob@b.test", bob.Pass, "server-B"},
	} {
		if got := whoIsPOP3(t, g.Addr("pop3"), tc.login, tc.pass); got != tc.want {
			t.Errorf("POP3 %s reached %q, want %q", tc.login, got, tc.want)
		}
		if got := whoIsIMAP(t, g.Addr("imap"), tc.login, tc.pass); got != tc.want {
			t.Errorf("IMAP %s reached %q, want %q", tc.login, got, tc.want)
		}
	}
}

func TestRoutingPoolFailoverAndReturn(t *testing.T) {
	u := newAccount(t)
	a, b := twoDovecots(t, u)
	sa, sb := newSwitchable(t, a.IMAPAddr), newSwitchable(t, b.IMAPAddr)
	g := routingGateway(t, fmt.Sprintf(`  pool: {addresses: [%q, %q], tls: none}`, sa.addr, sb.addr),
		"  default: pool\n  pool_cooldown: 1s")
	servers := map[string]string{sa.addr: "server-A", sb.addr: "server-B"}
	rank := routing.Rank([]string{sa.addr, sb.addr}, u.User)
	home, other := servers[rank[0]], servers[rank[1]]
	homeSwitch := map[string]*switchable{sa.addr: sa, sb.addr: sb}[rank[0]]

	if got := whoIsPOP3(t, g.Addr("pop3"), u.User, u.Pass); got != home {
		t.Fatalf("with both up the user reached %q, want its first choice %q", got, home)
	}
	homeSwitch.down()
	if got := whoIsPOP3(t, g.Addr("pop3"), u.User, u.Pass); got != other {
		t.Fatalf("POP3: with its server down the user reached %q, want %q", got, other)
	}
	if got := whoIsIMAP(t, g.Addr("imap"), u.User, u.Pass); got != other {
		t.Fatalf("IMAP: with its server down the user reached %q, want %q", got, other)
	}
	homeSwitch.up(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := whoIsPOP3(t, g.Addr("pop3"), u.User, u.Pass)
		if got == home {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the user did not come back to %q after its server returned (still on %q)", home, got)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func TestRoutingAuthHTTPLookup(t *testing.T) {
	u := newAccount(t)
	dc := dovecotServer(t)
	seed(t, u, message("server-A", "via lookup\r\n"))
	host, port, _ := net.SplitHostPort(dc.IMAPAddr)
	var mu sync.Mutex
	var requests []http.Header
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, r.Header.Clone())
		mu.Unlock()
		if r.Header.Get("Auth-User") == "carol@lookup.test" {
			w.Header().Set("Auth-Status", "OK")
			w.Header().Set("Auth-Server", host)
			w.Header().Set("Auth-Port", port)
			w.Header().Set("Auth-User", u.User) // rewrite
			return
		}
		w.Header().Set("Auth-Status", "Invalid login or password")
	}))
	defer svc.Close()
	g := routingGateway(t, `  dovecot: {address: "127.0.0.1:1", tls: none}`,
		fmt.Sprintf("  default: dovecot\n  lookup: {url: %q, send_password: true}", svc.URL+"/auth"))

	if got := whoIsPOP3(t, g.Addr("pop3"), "carol@lookup.test", u.Pass); got != "server-A" {
		t.Fatalf("POP3 via lookup reached %q", got)
	}
	if got := whoIsIMAP(t, g.Addr("imap"), "carol@lookup.test", u.Pass); got != "server-A" {
		t.Fatalf("IMAP via lookup reached %q", got)
	}
	c, err := pop3client.Dial(g.Addr("pop3"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("mallory@lookup.test", "guess"); err == nil || !strings.Contains(err.Error(), "[AUTH] Invalid login or password") {
		t.Errorf("rejected login: %v, want -ERR [AUTH] with the service's text", err)
	}
	c.Close()
	mu.Lock()
	first := requests[0]
	mu.Unlock()
	for k, want := range map[string]string{"Auth-Method": "plain", "Auth-Protocol": "pop3", "Auth-User": "carol@lookup.test",
		"Auth-Pass": u.Pass, "Auth-Login-Attempt": "1", "Client-Ip": "127.0.0.1"} {
		if got := first.Get(k); got != want {
			t.Errorf("request header %s = %q, want %q", k, got, want)
		}
	}

	// The service down: a temporary error, and the gateway goes on.
	svc.Close()
	c, err = pop3client.Dial(g.Addr("pop3"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("carol@lookup.test", u.Pass); err == nil || !strings.Contains(err.Error(), "[SYS/TEMP]") {
		t.Errorf("lookup service down: %v, want -ERR [SYS/TEMP]", err)
	}
	c.Close()
	ic, err := imapclient.DialInsecure(g.Addr("imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login("carol@lookup.test", u.Pass).Wait(); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Errorf("IMAP login with the lookup service down: %v, want NO [UNAVAILABLE]", err)
	}
}

func imapSeq1() imap.SeqSet { return imap.SeqSetNum(1) }

func imapEnvelope() *imap.FetchOptions { return &imap.FetchOptions{Envelope: true} }
