// Package cluster tests several mailgate instances as one gateway (cluster
// mode) against a real redis-server, started by the tests on 127.0.0.1
// from a generated configuration, and a real Dovecot (test/dovecot).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
	"mailgate/test/redistest"
)

// One Dovecot serves the package; every test uses users of its own.
func TestMain(m *testing.M) { harness.Main(m, dovecot.Options{}) }

// redisServer is a redis-server of one test (test/redistest), which it
// may stop and start again at the same address.
type redisServer struct {
	t    testing.TB
	Addr string
	stop func()
}

// startRedis runs redis-server for t (stopped in t.Cleanup). Missing
// redis-server skips the test loudly, or fails it under CI=true.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	addr, stop := redistest.Start(t)
	return &redisServer{t: t, Addr: addr, stop: stop}
}

// Stop ends the server: Redis goes away mid-test.
func (r *redisServer) Stop() { r.stop() }

// Start brings it back, empty, at the same address.
func (r *redisServer) Start() {
	r.t.Helper()
	r.stop = redistest.StartAt(r.t, r.Addr)
}

// Client is a plain go-redis client on the server, for the tests' own look.
func (r *redisServer) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// gwOptions are one instance's settings.
type gwOptions struct {
	instance  string
	lock      string // pop3.lock
	lease     string // cluster.lock_lease
	authLimit string // limits.auth_failures_per_ip
	uidlMap   bool   // pop3.uidl_map: {store: redis}
}

// gatewayYAML is a mailgate in cluster mode in front of Dovecot: one
// cleartext POP3 listener, metrics on, keys under "t:".
func gatewayYAML(t testing.TB, r *redisServer, o gwOptions) string {
	if o.lock == "" {
		o.lock = "exclusive"
	}
	if o.lease == "" {
		o.lease = "30s"
	}
	if o.authLimit == "" {
		o.authLimit = "100000/min"
	}
	uidlMap := ""
	if o.uidlMap {
		uidlMap = ", uidl_map: {store: redis}"
	}
	return harness.POP3Config("dovecot", harness.Dovecot(t).IMAPAddr, fmt.Sprintf(`pop3: {lock: %s, takeover_after: 1s, cache: {max_bytes: 0B}, fetch_ahead: 0B%s}
limits: {per_ip: 10000, auth_failures_per_ip: %s, auth_failure_delay: 1ms}
timeouts: {shutdown: 2s}
metrics: {address: "127.0.0.1:0"}
cluster:
  redis: {addresses: [%q]}
  key_prefix: "t:"
  lock_lease: %s
  instance: %s
`, o.lock, uidlMap, o.authLimit, r.Addr, o.lease, o.instance))
}

// gateways starts n in-process instances on r, named gw1..gwN.
func gateways(t *testing.T, r *redisServer, n int, o gwOptions) []*harness.Gateway {
	t.Helper()
	var gs []*harness.Gateway
	for i := range n {
		o.instance = fmt.Sprintf("gw%d", i+1)
		gs = append(gs, harness.Start(t, gatewayYAML(t, r, o)))
	}
	return gs
}

// account is a Dovecot user made for one test.
type account = harness.Account

// newAccount makes a user of the test's own whose INBOX holds messages
// messages.
func newAccount(t testing.TB, messages int) account {
	t.Helper()
	dc := harness.Dovecot(t)
	a := harness.NewAccount(t, "c", "cluster.test")
	var msgs [][]byte
	for i := range messages {
		msgs = append(msgs, []byte(fmt.Sprintf("From: c@test\r\nSubject: m%d\r\n\r\nmessage %d of %s\r\n", i, i, a.User)))
	}
	if len(msgs) > 0 {
		if _, err := dc.Append(a.User, a.Pass, "INBOX", msgs...); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// messages is how many messages the account's INBOX holds.
func messages(t testing.TB, a account) int {
	t.Helper()
	return len(a.Inbox(t, false).Messages)
}

const clientTimeout = 20 * time.Second

func login(addr string, a account) (*pop3client.Client, error) {
	return pop3client.DialLogin(addr, a.User, a.Pass, clientTimeout)
}

func mustLogin(t testing.TB, addr string, a account) *pop3client.Client {
	t.Helper()
	c, err := login(addr, a)
	if err != nil {
		t.Fatalf("login on %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// code is the RFC 2449 response code of a -ERR, or "".
func code(err error) string {
	var re *pop3client.ReplyError
	if errors.As(err, &re) {
		return re.Code()
	}
	return ""
}

// metric reads one unlabelled sample from an instance's /metrics.
func metric(t testing.TB, g *harness.Gateway, name string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+g.Addr("metrics")+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitMetric waits until the metric has value want.
func waitMetric(t testing.TB, g *harness.Gateway, name string, want float64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := metric(t, g, name)
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after %v, want %v", name, v, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var storedValue = regexp.MustCompile(`^([0-9]+|[0-9a-f]{32} [A-Za-z0-9._-]+)$`)

// noSecretsInRedis scans every key of r and every string value: neither
// holds any of secrets (a password, right or wrong).
func noSecretsInRedis(t testing.TB, r *redisServer, secrets ...string) int {
	t.Helper()
	c := r.Client(t)
	ctx := context.Background()
	n := 0
	iter := c.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		n++
		v, err := c.Get(ctx, k).Result()
		if err != nil {
			t.Fatalf("GET %s: %v (mailgate keeps only strings)", k, err)
		}
		// What mailgate writes: counts, "1" (a known login), and lock
		// values "<token> <instance>".
		if !storedValue.MatchString(v) {
			t.Errorf("key %q holds %q: not a count, a marker or a lock value", k, v)
		}
		for _, s := range secrets {
			if strings.Contains(k, s) || strings.Contains(v, s) {
				t.Errorf("Redis holds a password: key %q value %q", k, v)
			}
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
