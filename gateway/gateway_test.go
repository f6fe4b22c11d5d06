package gateway

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailgate/test/testca"
)

const testMessage = "From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"

const baseConfig = `
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  mem: {address: "BACKEND", tls: none}
routing: {default: mem}
metrics: {address: "127.0.0.1:0"}
limits: {auth_failure_delay: 1ms, auth_failures_per_ip: 3/min}
`

func scrape(t *testing.T, srv *Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + srv.Addr("metrics").String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue finds a sample by name and exact label set text.
func metricValue(t *testing.T, body, sample string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("metric %s not found", sample)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetricsAfterScriptedPOP3Session(t *testing.T) {
	srv, _ := startGateway(t, baseConfig, memBackend(t, testMessage, testMessage))
	c := dialPOP3(t, srv.Addr("pop3"), "")
	if g := c.Line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	c.Command("USER alice", "")
	if r := c.Command("PASS secret", ""); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("PASS: %q", r)
	}
	if r := c.Command("RETR 1", ""); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("RETR: %q", r)
	}
	body := strings.Join(c.Lines(), "\r\n") + "\r\n"
	if body != testMessage {
		t.Fatalf("RETR body %q, want %q", body, testMessage)
	}
	c.Command("DELE 2", "")
	if r := c.Command("QUIT", ""); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("QUIT: %q", r)
	}

	// The session's end is recorded asynchronously: poll briefly.
	var m string
	for i := 0; i < 50; i++ {
		_, m = scrape(t, srv, "/metrics")
		if strings.Contains(m, `mailgate_connections_active{listener="pop3",protocol="pop3"} 0`) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for sample, want := range map[string]float64{
		`mailgate_connections_total{listener="pop3",protocol="pop3"}`:  1,
		`mailgate_logins_total{protocol="pop3",result="ok"}`:           1,
		`mailgate_pop3_deletions_committed_total`:                      1,
		`mailgate_body_cache_misses_total`:                             1,
		`mailgate_connections_active{listener="pop3",protocol="pop3"}`: 0,
		`mailgate_pop3_commands_total{command="RETR"}`:                 1,
		`mailgate_pop3_commands_total{command="QUIT"}`:                 1,
	} {
		if got := metricValue(t, m, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if got := metricValue(t, m, `mailgate_bytes_to_clients_total{listener="pop3",protocol="pop3"}`); got < float64(len(testMessage)) {
		t.Errorf("bytes to clients = %v, want at least the message (%d)", got, len(testMessage))
	}
	if !strings.Contains(m, `mailgate_backend_login_seconds_count{backend="mem",protocol="pop3",result="ok"} 1`) {
		t.Error("backend login latency not observed")
	}
	if code, _ := scrape(t, srv, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := scrape(t, srv, "/readyz"); code != 200 {
		t.Errorf("/readyz = %d %s", code, body)
	}
}

func TestReadyzFailsWhenDefaultBackendIsDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	srv, _ := startGateway(t, baseConfig, addr)
	if code, body := scrape(t, srv, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "unreachable") {
		t.Errorf("/readyz with the backend down = %d %q", code, body)
	}
	if code, _ := scrape(t, srv, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
}

func TestFailedLoginFloodFromOneIPIsRefusedWhileAnotherLogsIn(t *testing.T) {
	srv, logs := startGateway(t, baseConfig, memBackend(t, testMessage))
	addr := srv.Addr("pop3")
	// 127.0.0.2 guesses passwords: three failures (the limit is 3/min)...
	for i := 0; i < 3; i++ {
		if _, r := pop3Login(t, addr, "127.0.0.2", "alice", fmt.Sprintf("wrong%d", i)); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("wrong password %d: %q", i, r)
		}
	}
	// ...then even the right password is refused, temporarily.
	if _, r := pop3Login(t, addr, "127.0.0.2", "alice", "secret"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Fatalf("login from a flooding address: %q, want -ERR [SYS/TEMP]", r)
	}
	// Meanwhile alice, from another address, logs in with her password:
	// the failures cost the address that made them, not her.
	c, r := pop3Login(t, addr, "127.0.0.3", "alice", "secret")
	if !strings.HasPrefix(r, "+OK") {
		t.Fatalf("alice from another address while 127.0.0.2 guesses: %q", r)
	}
	c.Command("QUIT", "")
	if n := logs.FilterMessage("login failed").FilterField(zapString("client_ip", "127.0.0.2")).Len(); n != 3 {
		t.Errorf("%d fail2ban lines for 127.0.0.2, want 3", n)
	}
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "wrong") || strings.Contains(f.String, "secret") {
				t.Fatalf("a password appears in the logs: %v", e)
			}
		}
	}
}

func TestLoginFromAnotherIPWhileOneIsFlooding(t *testing.T) {
	srv, _ := startGateway(t, baseConfig, memBackend(t, testMessage))
	addr := srv.Addr("pop3")
	for i := 0; i < 3; i++ {
		pop3Login(t, addr, "127.0.0.2", "mallory", "guess")
	}
	c, r := pop3Login(t, addr, "127.0.0.3", "alice", "secret")
	if !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login from a well-behaved address: %q", r)
	}
	c.Command("QUIT", "")
}

func TestProxyProtocolFromTrustedPeer(t *testing.T) {
	yaml := strings.Replace(baseConfig, `tls: none, allow_plaintext_auth: true}
  - {name: imap`, `tls: none, allow_plaintext_auth: true, proxy_protocol: [127.0.0.1/32]}
  - {name: imap`, 1)
	srv, logs := startGateway(t, yaml, memBackend(t, testMessage))
	addr := srv.Addr("pop3")

	// A trusted peer sends a header: the client address is the header's.
	c := dialPOP3(t, addr, "127.0.0.1")
	c.Send("PROXY TCP4 203.0.113.7 127.0.0.1 5555 110")
	if g := c.Line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting after PROXY header: %q", g)
	}
	c.Command("USER alice", "")
	c.Command("PASS nope", "")
	if logs.FilterMessage("login failed").FilterField(zapString("client_ip", "203.0.113.7")).Len() != 1 {
		t.Errorf("the failed login was not logged with the PROXY client address: %v", logs.FilterMessage("login failed").All())
	}

	// A trusted peer without a header is refused.
	c2 := dialPOP3(t, addr, "127.0.0.1")
	c2.Send("USER alice")
	c2.SetReadDeadline()
	if l, err := c2.Reader().ReadString('\n'); err == nil {
		t.Errorf("a trusted peer without PROXY header was served: %q", l)
	}

	// An untrusted peer is greeted at once and its header is just garbage.
	c3 := dialPOP3(t, addr, "127.0.0.4")
	start := time.Now()
	if g := c3.Line(); !strings.HasPrefix(g, "+OK") || time.Since(start) > time.Second {
		t.Fatalf("untrusted peer: greeting %q after %v", g, time.Since(start))
	}
	if r := c3.Command("PROXY TCP4 198.51.100.1 127.0.0.1 5555 110", ""); !strings.HasPrefix(r, "-ERR") {
		t.Errorf("PROXY header from an untrusted peer: %q", r)
	}
}

func TestInsecureSkipVerifyIsLoud(t *testing.T) {
	yaml := strings.Replace(baseConfig, `mem: {address: "BACKEND", tls: none}`,
		`mem: {address: "BACKEND", tls: implicit, insecure_skip_verify: true}`, 1)
	_, logs := startGateway(t, yaml, "127.0.0.1:993")
	if logs.FilterMessageSnippet("INSECURE").FilterField(zapString("backend", "mem")).Len() != 1 {
		t.Fatal("no loud warning for a backend without certificate verification")
	}
}

func TestMetricsCountTLSHandshakes(t *testing.T) {
	dir := t.TempDir()
	ca := testca.NewT(t)
	certFile, keyFile := ca.WriteLeafT(t, dir, "gateway", "127.0.0.1")
	yaml := fmt.Sprintf("tls: {certificates: [{cert: %q, key: %q}]}\n", certFile, keyFile) +
		strings.Replace(baseConfig, `{name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}`,
			`{name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}`, 1)
	srv, _ := startGateway(t, yaml, memBackend(t))
	c, err := tls.Dial("tcp", srv.Addr("imaps").String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	raw, err := net.Dial("tcp", srv.Addr("imaps").String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(raw, "a LOGIN not tls\r\n")
	io.ReadAll(raw)
	raw.Close()
	// The server finishes its side of a handshake in the session's own
	// goroutine, possibly after the client has moved on: poll for both.
	var m string
	for i := 0; i < 100; i++ {
		_, m = scrape(t, srv, "/metrics")
		if strings.Contains(m, `mailgate_tls_handshakes_total{listener="imaps",result="failed"} 1`) &&
			strings.Contains(m, `mailgate_tls_handshakes_total{listener="imaps",result="ok"} 1`) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if metricValue(t, m, `mailgate_tls_handshakes_total{listener="imaps",result="ok"}`) != 1 ||
		metricValue(t, m, `mailgate_tls_handshakes_total{listener="imaps",result="failed"}`) != 1 {
		t.Fatalf("TLS handshake counters:\n%s", grepLines(m, "tls_handshakes"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Connection ids are unique in the process across listeners and protocols,
// and both fronts end a session with the same "result" vocabulary.
func TestConnectionIDsUniqueAcrossProtocols(t *testing.T) {
	srv, logs := startGateway(t, baseConfig, memBackend(t, testMessage))
	p := dialPOP3(t, srv.Addr("pop3"), "")
	p.Expect("+OK")
	p.Command("QUIT", "+OK")
	i := dialPOP3(t, srv.Addr("imap"), "") // a line client is all IMAP needs here
	i.Expect("* OK")
	i.Command("a LOGOUT", "* BYE")
	i.Expect("a OK")
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessage("session end").Len() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ids := map[any]string{}
	results := map[string]any{}
	for _, e := range logs.FilterMessage("session end").All() {
		m := e.ContextMap()
		proto, _ := m["proto"].(string)
		if other, ok := ids[m["conn"]]; ok {
			t.Fatalf("conn %v used by %s and %s", m["conn"], other, proto)
		}
		ids[m["conn"]] = proto
		results[proto] = m["result"]
	}
	if results["pop3"] != "quit" || results["imap"] != "logout" {
		t.Fatalf("results %v, want pop3 quit and imap logout", results)
	}
}

// One vocabulary of field names for every line about a login (README, Logs):
// proto and remote as in the session lines, client_ip for fail2ban, and the
// routed backend user on the line of a successful backend login.
func TestLoginLinesShareTheSessionVocabulary(t *testing.T) {
	srv, logs := startGateway(t, baseConfig, memBackend(t, testMessage))
	c := dialPOP3(t, srv.Addr("pop3"), "127.0.0.4")
	c.Expect("+OK")
	c.Command("USER alice", "+OK")
	c.Command("PASS wrong", "-ERR [AUTH]")
	c.Command("USER alice", "+OK")
	c.Command("PASS secret", "+OK")
	c.Command("QUIT", "+OK")
	for _, msg := range []string{"login failed", "backend login"} {
		lines := logs.FilterMessage(msg).All()
		if len(lines) != 1 {
			t.Fatalf("%d %q lines, want 1", len(lines), msg)
		}
		m := lines[0].ContextMap()
		if m["proto"] != "pop3" || !strings.HasPrefix(fmt.Sprint(m["remote"]), "127.0.0.4:") || m["user"] != "alice" {
			t.Errorf("%q line %v: want proto, remote and user as in session lines", msg, m)
		}
		if _, old := m["protocol"]; old {
			t.Errorf("%q line still names the protocol \"protocol\": %v", msg, m)
		}
	}
	if m := logs.FilterMessage("login failed").All()[0].ContextMap(); m["client_ip"] != "127.0.0.4" {
		t.Errorf("login failed line without client_ip for fail2ban: %v", m)
	}
	if m := logs.FilterMessage("backend login").All()[0].ContextMap(); m["backend_user"] != "alice" || m["backend"] != "mem" {
		t.Errorf("backend login line %v: want backend mem, backend_user alice", m)
	}
}
