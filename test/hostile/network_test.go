package hostile

import (
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/harness"
)

// TestIPv6SubscriberIsOneNetwork is finding 3 of the hostile internet issue:
// the addresses of one IPv6 /64 (limits.ipv6_prefix, default 64: what one
// subscriber is usually given) share one failed-login budget, so hopping
// through the /64 buys no fresh guesses; an address of the neighbouring
// /64 keeps a budget of its own.
func TestIPv6SubscriberIsOneNetwork(t *testing.T) {
	g := startLimited(t, "[]", time.Millisecond)
	user, pass := newUser(t, "hostile.test")
	for i := range failureLimit {
		from := fmt.Sprintf("2001:db8:64:1::%x", i+1) // a fresh /128 each time
		login := pop3Login
		if i%2 == 1 {
			login = imapLogin // the budget is the gateway's, not a front's
		}
		if r := login(t, g, from, user, "guess"); strings.Contains(r, "[SYS/TEMP]") || strings.Contains(r, "[UNAVAILABLE]") {
			t.Fatalf("failure %d from %s was refused before the limit: %q", i+1, from, r)
		}
	}
	for _, from := range []string{"2001:db8:64:1::beef", "2001:db8:64:1:ffff:ffff:ffff:ffff"} {
		if r := pop3Login(t, g, from, user, pass); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
			t.Errorf("%s, in the /64 that failed %d times: %q, want -ERR [SYS/TEMP]", from, failureLimit, r)
		}
		if r := imapLogin(t, g, from, user, pass); !strings.HasPrefix(r, "a NO [UNAVAILABLE]") {
			t.Errorf("%s (IMAP), in the /64 that failed %d times: %q, want NO [UNAVAILABLE]", from, failureLimit, r)
		}
	}
	if r := pop3Login(t, g, "2001:db8:64:2::1", user, pass); !strings.HasPrefix(r, "+OK") {
		t.Errorf("the neighbouring /64 with the right password: %q", r)
	}
}

// TestIPv6PerIPCountsTheNetwork is finding 3 for limits.per_ip: the
// connections of one /64 are counted together, whatever /128 each comes
// from; another /64, and an IPv4 client, are not affected.
func TestIPv6PerIPCountsTheNetwork(t *testing.T) {
	const perIP = 3
	dc := harness.Dovecot(t)
	g := harness.Start(t, fmt.Sprintf(`log: {level: info, format: json}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true, proxy_protocol: [127.0.0.1/32]}
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true, proxy_protocol: [127.0.0.1/32]}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot}
limits: {per_ip: %d}
timeouts: {backend_dial: 5s, backend_command: 10s, shutdown: 2s}
`, dc.IMAPAddr, perIP))
	for i := range perIP {
		listener := []string{"pop3", "imap"}[i%2]
		dialAs(t, g.Addr(listener), fmt.Sprintf("2001:db8:64:7::%x", i+1)) // held open until the test ends
	}
	for _, listener := range []string{"pop3", "imap"} {
		if got := dialRefused(t, g.Addr(listener), "2001:db8:64:7::ffff"); !strings.Contains(got, "too many connections") {
			t.Errorf("%s: connection %d of one /64 (a fresh /128) was answered %q, want a too-many-connections refusal", listener, perIP+1, got)
		}
	}
	dialAs(t, g.Addr("pop3"), "2001:db8:64:8::1").Command("QUIT", "+OK")
	dialAs(t, g.Addr("imap"), "192.0.2.77").Command("a LOGOUT", "* BYE")
}

// dialRefused connects to addr as from (PROXY v1) and returns the first
// line the gateway sends before it closes the connection.
func dialRefused(t *testing.T, addr, from string) string {
	t.Helper()
	c := dialProxied(t, addr, from)
	line := c.Line()
	c.ExpectClosed()
	return line
}

// TestOtherProtocolsEndAtOnce is finding 10 of the hostile internet issue,
// from many client addresses (PROXY headers): an HTTP request sent to a mail
// port (the ALPACA class of cross-protocol attacks) ends the connection at
// once, with not one byte of answer a browser could take for its own; an
// SMTP client gets three answers, as in Dovecot's login processes
// (limits.preauth_bad_commands: 3), and is disconnected; a mail client that
// errs once or twice still logs in.
func TestOtherProtocolsEndAtOnce(t *testing.T) {
	g := startLimited(t, "[]", time.Millisecond)
	user, pass := newUser(t, "hostile.test")
	for i, listener := range []string{"pop3", "imap"} {
		from := fmt.Sprintf("203.0.113.%d", 10+i)
		t.Run(listener+"/http", func(t *testing.T) {
			c := dialAs(t, g.Addr(listener), from)
			c.SendRaw("POST / HTTP/1.1\r\nHost: mail.example.com\r\nContent-Length: 9\r\n\r\nUSER evil")
			c.ExpectClosed() // no line at all: ExpectClosed fails on any
		})
		t.Run(listener+"/smtp", func(t *testing.T) {
			c := dialAs(t, g.Addr(listener), from)
			c.SendRaw("EHLO attacker.example\r\nMAIL FROM:<a@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n")
			refusal := map[string]string{"pop3": "-ERR ", "imap": " BAD "}[listener]
			for range 3 {
				if l := c.Line(); !strings.Contains(l, refusal) {
					t.Fatalf("SMTP line answered %q, want a refusal (%q)", l, refusal)
				}
			}
			if listener == "imap" {
				c.Expect("* BYE Too many invalid commands")
			}
			c.ExpectClosed()
		})
	}
	// Two mistakes are forgiven.
	c := dialAs(t, g.Addr("pop3"), "203.0.113.50")
	c.Command("HELP", "-ERR")
	c.Command("LAST", "-ERR")
	c.Command("USER "+user, "+OK")
	c.Command("PASS "+pass, "+OK")
	c.Command("QUIT", "+OK")
	c = dialAs(t, g.Addr("imap"), "203.0.113.51")
	c.Command("a XLIST \"\" *", "a BAD")
	c.Command("b SELECT INBOX", "b BAD")
	c.Send(fmt.Sprintf("c LOGIN %q %q", user, pass))
	if _, st := c.Until("c"); !strings.HasPrefix(st, "c OK") {
		t.Fatalf("LOGIN after two mistakes: %q", st)
	}
	c.Send("d LOGOUT")
	c.Until("d")
}

// TestHostileNamesAreNotKept is finding 5 of the hostile internet issue as
// it was found: 2,000 failed logins with 8,000-octet user names from 200
// client addresses (PROXY headers) used to grow the heap from 2.4 MB to
// 64 MB, 21 MB of it still held minutes later, in the limiter's tables. A
// name over 255 octets is now refused before routing and the limiters, as
// a wrong password that counts against its network, so nothing of it stays
// once the connections are gone.
func TestHostileNamesAreNotKept(t *testing.T) {
	g := startLimited(t, "[]", time.Millisecond)
	before := heapInuse()
	const addresses, perAddress = 200, 10
	name := strings.Repeat("n", 8000)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				from := fmt.Sprintf("198.18.%d.%d", i/perAddress/250, i/perAddress%250+1)
				front := []string{"imap", "pop3"}[i%2]
				c := dialAs(t, g.Addr(front), from)
				var r string
				if front == "imap" {
					c.Send(fmt.Sprintf("a LOGIN \"%s%d\" guess", name, i))
					_, r = c.Until("a")
				} else {
					c.Send("AUTH PLAIN")
					c.Expect("+")
					r = c.Command(base64.StdEncoding.EncodeToString([]byte("\x00"+name+fmt.Sprint(i)+"\x00guess")), "-ERR")
				}
				if !strings.Contains(r, "AUTHENTICATIONFAILED") && !strings.Contains(r, "[AUTH]") &&
					!strings.Contains(r, "[UNAVAILABLE]") && !strings.Contains(r, "[SYS/TEMP]") {
					t.Errorf("%s login with an 8,000-octet name answered %q", front, clip(r))
				}
				c.NetConn().Close()
			}
		})
	}
	for i := range addresses * perAddress {
		work <- i
	}
	close(work)
	wg.Wait()
	after := heapInuse()
	growth := int64(after) - int64(before)
	t.Logf("%d failed logins with 8,000-octet names: heap in use grew by %.1f MiB", addresses*perAddress, float64(growth)/(1<<20))
	if growth > 8<<20 {
		t.Errorf("the heap kept %.1f MiB after %d logins with hostile names were refused (it was 21 MB before the fix)", float64(growth)/(1<<20), addresses*perAddress)
	}
	if strings.Contains(g.Logs(), name) {
		t.Error("a log line holds a whole 8,000-octet user name")
	}
}
