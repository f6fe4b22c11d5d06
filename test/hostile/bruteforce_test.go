package hostile

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
	"mailgate/test/transcript"
)

// The brute-force tests run a gateway with the production limit
// (auth_failures_per_ip: 10/min) whose listeners trust PROXY headers from
// 127.0.0.1, so that one test presents many client addresses.
const failureLimit = 10

// startLimited starts a gateway in front of Dovecot with the given extra
// routing rules and auth_failure_delay.
func startLimited(t *testing.T, rules string, delay time.Duration) *harness.Gateway {
	t.Helper()
	dc := harness.Dovecot(t)
	return harness.Start(t, fmt.Sprintf(`log: {level: info, format: json}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true, proxy_protocol: [127.0.0.1/32]}
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true, proxy_protocol: [127.0.0.1/32]}
backends:
  dovecot: {address: %q, tls: none}
routing:
  default: dovecot
  rules: %s
limits: {connections: 20000, per_ip: 10000, auth_failures_per_ip: %d/min, auth_failure_delay: %s}
timeouts: {backend_dial: 5s, backend_command: 10s, shutdown: 2s}
`, dc.IMAPAddr, rules, failureLimit, delay))
}

// newUser adds a Dovecot user of the test's own at domain.
func newUser(t *testing.T, domain string) (user, pass string) {
	t.Helper()
	a := harness.NewAccount(t, "bf", domain)
	return a.User, a.Pass
}

// dialAs connects to addr presenting the client address from in a PROXY v1
// header (the listener trusts 127.0.0.1) and reads the greeting.
func dialAs(t *testing.T, addr, from string) *transcript.Conn {
	t.Helper()
	c := dialProxied(t, addr, from)
	greeting := c.Line()
	if !strings.HasPrefix(greeting, "+OK") && !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting from %s: %q", from, greeting)
	}
	return c
}

// dialProxied connects to addr and sends a PROXY v1 header presenting the
// client address from; nothing is read.
func dialProxied(t *testing.T, addr, from string) *transcript.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := transcript.New(t, conn)
	c.Timeout = 20 * time.Second // an account under attack may wait up to 15s
	family, dst := "TCP4", "127.0.0.1"
	if strings.Contains(from, ":") {
		family, dst = "TCP6", "::1"
	}
	c.Send(fmt.Sprintf("PROXY %s %s %s 40000 110", family, from, dst))
	return c
}

// pop3Login tries one POP3 login from the client address from and returns
// the answer to PASS.
func pop3Login(t *testing.T, g *harness.Gateway, from, user, pass string) string {
	t.Helper()
	c := dialAs(t, g.Addr("pop3"), from)
	c.Command("USER "+user, "+OK")
	r := c.Command("PASS "+pass, "")
	if strings.HasPrefix(r, "+OK") {
		c.Command("QUIT", "+OK")
	}
	c.NetConn().Close()
	return r
}

// imapLogin tries one IMAP login from the client address from and returns
// the tagged answer to LOGIN.
func imapLogin(t *testing.T, g *harness.Gateway, from, user, pass string) string {
	t.Helper()
	c := dialAs(t, g.Addr("imap"), from)
	c.Send(fmt.Sprintf("a LOGIN %q %q", user, pass))
	_, status := c.Until("a")
	if strings.HasPrefix(status, "a OK") {
		c.Send("b LOGOUT")
		c.Until("b")
	}
	c.NetConn().Close()
	return status
}

// TestGuessingNeverLocksTheUserOut is finding 1 of the hostile internet
// issue as a user sees it: while an attacker sends 50 wrong passwords for
// alice from one address, alice logs in with her password from another /64
// every time, on both fronts. The attacker's own network is refused once it
// reached the limit. The log the test produces is then read with the
// README's fail2ban filter.
func TestGuessingNeverLocksTheUserOut(t *testing.T) {
	g := startLimited(t, "[]", time.Millisecond)
	for _, front := range []struct {
		name     string
		login    func(*testing.T, *harness.Gateway, string, string, string) string
		ok, fail string
		attacker string
		alice    string
	}{
		{"pop3", pop3Login, "+OK", "-ERR [AUTH]", "2001:db8:bad:1::66", "2001:db8:a11:1::1"},
		{"imap", imapLogin, "a OK", "a NO [AUTHENTICATIONFAILED]", "2001:db8:bad:2::66", "2001:db8:a11:2::1"},
	} {
		t.Run(front.name, func(t *testing.T) {
			user, pass := newUser(t, "hostile.test")
			refused := 0
			for i := range 50 {
				r := front.login(t, g, front.attacker, user, fmt.Sprintf("guess-%d", i))
				switch {
				case strings.HasPrefix(r, front.fail):
				case strings.Contains(r, "[SYS/TEMP]") || strings.Contains(r, "[UNAVAILABLE]"):
					refused++
				default:
					t.Fatalf("guess %d answered %q", i, r)
				}
				if i%5 == 4 {
					if r := front.login(t, g, front.alice, user, pass); !strings.HasPrefix(r, front.ok) {
						t.Fatalf("after %d guesses by %s, alice from another /64 got %q: locked out", i+1, front.attacker, r)
					}
				}
			}
			if refused != 50-failureLimit {
				t.Errorf("the attacker's network was refused %d times, want %d (after %d failures)", refused, 50-failureLimit, failureLimit)
			}
		})
	}
	checkFail2banFilter(t, g.Logs(), map[string]int{"2001:db8:bad:1::66": failureLimit, "2001:db8:bad:2::66": failureLimit})
}

// checkFail2banFilter reads the failregex of the README's fail2ban filter
// and applies it to log as fail2ban does (<HOST> is an address, the match a
// search per line); want is how many lines must match per host, and no other
// host may match.
func checkFail2banFilter(t *testing.T, log string, want map[string]int) {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*failregex = (.+)$`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README: no fail2ban failregex")
	}
	host := `(?:::f{4,6}:)?(?P<host>[0-9A-Fa-f.:]+)`
	re, err := regexp.Compile(strings.Replace(string(m[1]), "<HOST>", host, 1))
	if err != nil {
		t.Fatalf("README failregex %q: %v", m[1], err)
	}
	got := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		if s := re.FindStringSubmatch(line); s != nil {
			got[s[re.SubexpIndex("host")]]++
		}
	}
	for h, n := range want {
		if got[h] != n {
			t.Errorf("fail2ban filter: %d lines for %s, want %d", got[h], h, n)
		}
	}
	for h, n := range got {
		if _, ok := want[h]; !ok {
			t.Errorf("fail2ban filter matched %d lines for %s, which never failed", n, h)
		}
	}
}

// TestRewrittenNamesShareOneBudget is finding 2: names that rewrite_user
// maps to one backend account (bob@x1.spray.test, bob@x2.spray.test, ...
// -> bob@hostile.test) are counted under the routed identity, and that
// count is checked after routing, before dialling: once the account has
// reached the limit, a fresh spelling from a fresh network waits before
// Dovecot is asked. The real user, from a network that logged in before,
// does not.
func TestRewrittenNamesShareOneBudget(t *testing.T) {
	const delay = 400 * time.Millisecond
	g := startLimited(t, `[{domain: "*.spray.test", backend: dovecot, rewrite_user: "{local}@hostile.test"}]`, delay)
	user, pass := newUser(t, "hostile.test")
	local, _, _ := strings.Cut(user, "@")
	if r := pop3Login(t, g, "192.0.2.10", user, pass); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("the real user's first login: %q", r)
	}
	for i := range failureLimit {
		from := fmt.Sprintf("198.51.100.%d", i+1) // a network of its own: never refused
		if r := pop3Login(t, g, from, fmt.Sprintf("%s@x%d.spray.test", local, i), "guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("guess %d: %q", i, r)
		}
	}
	begin := time.Now()
	if r := pop3Login(t, g, "198.51.100.200", local+"@fresh.spray.test", "guess"); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Fatalf("the guess past the limit: %q", r)
	}
	// The account's wait (delay) comes before the front's answer delay.
	if took := time.Since(begin); took < 2*delay {
		t.Errorf("a fresh spelling of an account with %d failures was answered in %v: no wait before the backend (want >= %v)", failureLimit, took, 2*delay)
	}
	delayed := regexp.MustCompile(`"msg":"login delayed: account has many recent failures".*"user":"` +
		regexp.QuoteMeta(local) + `@fresh\.spray\.test".*"backend":"dovecot","backend_user":"` + regexp.QuoteMeta(user) + `"`)
	if !delayed.MatchString(g.Logs()) {
		t.Errorf("no log line says the routed account %s was delayed", user)
	}
	// The real user's network logged in before: no wait, and it works.
	begin = time.Now()
	if r := pop3Login(t, g, "192.0.2.10", user, pass); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("the real user from a known network during the attack: %q", r)
	}
	if took := time.Since(begin); took > delay {
		t.Errorf("the real user's known network waited %v", took)
	}
}
