package test

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailgate/test/transcript"
)

// dialFrom connects to addr from the loopback address from, so that the
// client's address differs from the gateway's own (127.0.0.1).
func dialFrom(t *testing.T, from, addr string) *transcript.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: clientTimeout}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { conn.Close() })
	return transcript.New(t, conn)
}

// TestForwardClientIPReachesDovecot: with forward_client_ip, a POP3 or IMAP
// client's address reaches Dovecot (ID x-originating-ip before the login, which
// Dovecot believes from its login_trusted_networks), so Dovecot logs,
// rate-limits and penalises the real client, not the gateway. Dovecot's own
// log line is the evidence: rip= is the client's address.
func TestForwardClientIPReachesDovecot(t *testing.T) {
	dc := dovecotServer(t)
	g := startGateway(t, gwOptions{Backend: fmt.Sprintf("{address: %q, tls: none, forward_client_ip: true}", dc.IMAPAddr)})
	t.Run("pop3", func(t *testing.T) {
		a := newAccount(t) // not seeded: the gateway's must be the only login Dovecot logs for a
		c := dialFrom(t, "127.0.0.2", g.Addr("pop3"))
		c.Expect("+OK")
		c.Command("USER "+a.User, "+OK")
		c.Command("PASS "+a.Pass, "+OK")
		c.Command("STAT", "+OK 0 ")
		c.Command("QUIT", "+OK")
		expectDovecotRIP(t, dc.Log, a.User, "127.0.0.2")
	})
	t.Run("imap", func(t *testing.T) {
		a := newAccount(t)
		c := dialFrom(t, "127.0.0.3", g.Addr("imap"))
		c.Expect("* OK")
		c.Command(fmt.Sprintf("a LOGIN %q %q", a.User, a.Pass), "a OK")
		c.Command("b LOGOUT", "* BYE")
		expectDovecotRIP(t, dc.Log, a.User, "127.0.0.3")
	})
}

// expectDovecotRIP waits for Dovecot's login line for user and checks the
// client address it logged:
// imap-login: Login: user=<...>, method=PLAIN, rip=127.0.0.2, lip=127.0.0.1, ...
func expectDovecotRIP(t *testing.T, log func() string, user, want string) {
	t.Helper()
	login := regexp.MustCompile(`imap-login: .*Login: user=<` + regexp.QuoteMeta(user) + `>.* rip=([0-9.]+)`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := login.FindStringSubmatch(log()); m != nil {
			if m[1] != want {
				t.Fatalf("Dovecot logged rip=%s for the client, want %s", m[1], want)
			}
			return
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, l := range strings.Split(log(), "\n") {
				if strings.Contains(l, user) {
					lines = append(lines, l)
				}
			}
			t.Fatalf("no Dovecot login line for %s; its lines for the user:\n%s", user, strings.Join(lines, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
