package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
)

// pop3.lock: exclusive across instances: a second login of the user on
// another instance gets [IN-USE] (RFC 1939 §4), whichever instance; after
// QUIT on the first, the others get in.
func TestExclusiveAcrossInstances(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 3, gwOptions{})
	a := newAccount(t, 2)
	first := mustLogin(t, gs[0].Addr("pop3"), a)
	for _, g := range gs[1:] {
		c, err := login(g.Addr("pop3"), a)
		if code(err) != "IN-USE" {
			if c != nil {
				c.Close()
			}
			t.Fatalf("second login on another instance: %v, want -ERR [IN-USE]", err)
		}
	}
	// Case-folded like the per-process lock: one maildrop at Dovecot.
	upper := a
	upper.User = strings.ToUpper(a.User[:1]) + a.User[1:]
	if c, err := login(gs[2].Addr("pop3"), upper); code(err) != "IN-USE" {
		if c != nil {
			c.Close()
		}
		t.Fatalf("login as %s on another instance: %v, want [IN-USE]", upper.User, err)
	}
	harness.Quit(t, first)
	second := mustLogin(t, gs[1].Addr("pop3"), a)
	if n, _, err := second.Stat(); err != nil || n != 2 {
		t.Fatalf("STAT on the second instance: %d, %v", n, err)
	}
	second.Quit()
	noSecretsInRedis(t, r, a.Pass)
}

// pop3.lock: takeover across instances: a newcomer on another instance ends
// the older session once it has waited for a command for takeover_after;
// the older one's DELEs are lost (no UPDATE, RFC 1939 §6).
func TestTakeoverAcrossInstances(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 3, gwOptions{lock: "takeover"})
	a := newAccount(t, 3)
	old := mustLogin(t, gs[0].Addr("pop3"), a)
	if _, err := old.Retr(1); err != nil {
		t.Fatal(err)
	}
	if err := old.Dele(1); err != nil {
		t.Fatal(err)
	}
	if c, err := login(gs[1].Addr("pop3"), a); code(err) != "IN-USE" {
		if c != nil {
			c.Close()
		}
		t.Fatalf("login while the older session waited < takeover_after: %v, want [IN-USE]", err)
	}
	time.Sleep(1500 * time.Millisecond)
	start := time.Now()
	c := mustLogin(t, gs[1].Addr("pop3"), a)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("takeover across instances took %v", d)
	}
	// The older session is ended without a word (its connection closes).
	if line, err := old.ReadLine(); err == nil {
		t.Fatalf("the taken-over session still talks: %q", line)
	}
	if n, _, err := c.Stat(); err != nil || n != 3 {
		t.Fatalf("the newcomer's STAT: %d, %v; want 3 (the older session's DELE lost)", n, err)
	}
	harness.Quit(t, c)
	if n := messages(t, a); n != 3 {
		t.Fatalf("%d messages at the backend, want 3: a taken-over session must not commit", n)
	}
	// The third instance can take over from the second in turn.
	c2 := mustLogin(t, gs[1].Addr("pop3"), a)
	time.Sleep(1500 * time.Millisecond)
	mustLogin(t, gs[2].Addr("pop3"), a)
	if line, err := c2.ReadLine(); err == nil {
		t.Fatalf("the second instance's session still talks: %q", line)
	}
}

// kill -9 of the instance holding a lock: the lock is free within
// cluster.lock_lease, and not before it goes (exclusive).
func TestKilledInstanceFreesTheLockWithinTheLease(t *testing.T) {
	r := startRedis(t)
	const lease = 2 * time.Second
	g := gateways(t, r, 1, gwOptions{lease: lease.String()})[0]
	file := filepath.Join(t.TempDir(), "mailgate.yaml")
	yaml := strings.Replace(gatewayYAML(t, r, gwOptions{instance: "doomed", lease: lease.String()}),
		`metrics: {address: "127.0.0.1:0"}`+"\n", "", 1)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := harness.StartProcess(t, file)
	addr := p.Listening(t)
	a := newAccount(t, 1)
	c := mustLogin(t, addr, a)
	if _, _, err := c.Stat(); err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Process.Kill(); err != nil { // SIGKILL: no release, no clean-up
		t.Fatal(err)
	}
	<-p.Done
	killed := time.Now()
	if nc, err := login(g.Addr("pop3"), a); code(err) != "IN-USE" {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("login right after the kill: %v, want [IN-USE] (the dead instance's lease holds)", err)
	}
	var got time.Duration
	for {
		nc, err := login(g.Addr("pop3"), a)
		if err == nil {
			got = time.Since(killed)
			nc.Quit()
			nc.Close()
			break
		}
		if code(err) != "IN-USE" {
			t.Fatalf("login after the kill: %v", err)
		}
		if time.Since(killed) > lease+3*time.Second {
			t.Fatalf("the killed instance's lock still held %v after the kill (lock_lease %v)", time.Since(killed), lease)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("lock free %v after kill -9 (lock_lease %v)", got.Round(time.Millisecond), lease)
}

// A lease another session holds now (a Redis failover to a replica that
// had another's lock, or a pause past the lease) is found out before
// UPDATE: QUIT answers -ERR [SYS/TEMP] and nothing is deleted.
func TestLostLeaseCommitsNothing(t *testing.T) {
	r := startRedis(t)
	g := gateways(t, r, 1, gwOptions{})[0]
	a := newAccount(t, 2)
	c := mustLogin(t, g.Addr("pop3"), a)
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	rc := r.Client(t)
	key := "t:lock:dovecot:" + strings.ToLower(a.User)
	ctx := t.Context()
	if v, err := rc.Get(ctx, key).Result(); err != nil || !strings.HasSuffix(v, " gw1") {
		t.Fatalf("lock key %s = %q, %v; want the session's lease", key, v, err)
	}
	if err := rc.Set(ctx, key, "00000000000000000000000000000000 gw9", 30*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	err := c.Quit()
	if code(err) != "SYS/TEMP" {
		t.Fatalf("QUIT with the lease lost: %v, want -ERR [SYS/TEMP]", err)
	}
	if n := messages(t, a); n != 2 {
		t.Fatalf("%d messages after a QUIT without the lock, want 2", n)
	}
	if v, _ := rc.Get(ctx, key).Result(); !strings.HasSuffix(v, " gw9") {
		t.Fatalf("the session's release touched the new holder's key: %q", v)
	}
}

// Failed logins spread over three instances are limited as one: the
// network is refused after the cluster's budget, on every instance.
func TestFailedLoginsAcrossInstancesLimitedAsOne(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 3, gwOptions{authLimit: "6/min"})
	a := newAccount(t, 1)
	wrong := a
	wrong.Pass = "wrong-" + a.Pass[3:]
	harness.Secret(wrong.Pass)
	for i := range 6 {
		g := gs[i%3]
		if _, err := login(g.Addr("pop3"), wrong); code(err) != "AUTH" {
			t.Fatalf("failure %d on instance %d: %v, want -ERR [AUTH]", i+1, i%3+1, err)
		}
	}
	// Each instance saw only 2 failures: alone, each would let the network
	// try 4 more. Together they refuse it, even with the right password.
	for i, g := range gs {
		c, err := login(g.Addr("pop3"), a)
		if code(err) != "SYS/TEMP" {
			if c != nil {
				c.Close()
			}
			t.Fatalf("instance %d after 6 failures spread over 3: %v, want the network refused -ERR [SYS/TEMP]", i+1, err)
		}
		if !strings.Contains(g.Logs(), `"msg":"login refused: too many failures"`) {
			t.Errorf("instance %d did not log the refusal", i+1)
		}
	}
	if n := noSecretsInRedis(t, r, a.Pass, wrong.Pass, strings.ToLower(wrong.Pass)); n == 0 {
		t.Fatal("no keys in Redis: the counts were not shared")
	}
}

// Redis stopped mid-run: sessions go on (per-instance locks and limits),
// mailgate_cluster_up says 0, one error line per instance says so; back,
// the metric says 1 again and the locks are cluster-wide again.
func TestRedisStoppedMidRun(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 2, gwOptions{})
	for _, g := range gs {
		waitMetric(t, g, "mailgate_cluster_up", 1, 5*time.Second)
	}
	if n := metric(t, gs[0], "mailgate_cluster_redis_rtt_seconds_count"); n < 1 {
		t.Errorf("mailgate_cluster_redis_rtt_seconds has %v observations, want the health checks'", n)
	}
	a, b := newAccount(t, 3), newAccount(t, 1)
	s := mustLogin(t, gs[0].Addr("pop3"), a)
	if _, err := s.Retr(1); err != nil {
		t.Fatal(err)
	}

	r.Stop()
	for _, g := range gs {
		waitMetric(t, g, "mailgate_cluster_up", 0, 5*time.Second)
	}
	// The open session goes on, and commits (availability first).
	if _, err := s.Retr(2); err != nil {
		t.Fatalf("RETR with Redis away: %v", err)
	}
	if err := s.Dele(1); err != nil {
		t.Fatal(err)
	}
	if err := s.Quit(); err != nil {
		t.Fatalf("QUIT with Redis away: %v", err)
	}
	if n := messages(t, a); n != 2 {
		t.Fatalf("%d messages after QUIT with one DELE, want 2", n)
	}
	// New sessions work, locked per instance.
	c := mustLogin(t, gs[1].Addr("pop3"), b)
	if nc, err := login(gs[1].Addr("pop3"), b); code(err) != "IN-USE" {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("second session on the same instance in degraded mode: %v, want [IN-USE]", err)
	}
	c.Quit()

	r.Start()
	for _, g := range gs {
		waitMetric(t, g, "mailgate_cluster_up", 1, 5*time.Second)
	}
	for i, g := range gs {
		logs := g.Logs()
		if n := strings.Count(logs, `"msg":"cluster: Redis unreachable;`); n != 1 {
			t.Errorf("instance %d logged the outage %d times, want once", i+1, n)
		}
		if n := strings.Count(logs, `"msg":"cluster: Redis answers again;`); n != 1 {
			t.Errorf("instance %d logged the return %d times, want once", i+1, n)
		}
		if !strings.Contains(logs, `{"level":"error"`) {
			t.Errorf("instance %d: the state changes are not at error level", i+1)
		}
	}
	// Cluster-wide again.
	mustLogin(t, gs[0].Addr("pop3"), b)
	if nc, err := login(gs[1].Addr("pop3"), b); code(err) != "IN-USE" {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("after Redis returned, a second login on another instance: %v, want [IN-USE]", err)
	}
	noSecretsInRedis(t, r, a.Pass, b.Pass)
}

// A session opened while Redis was away is written to Redis when it comes
// back: a newcomer on another instance then finds it.
func TestLockTakenInDegradedModeIsSharedOnReturn(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 2, gwOptions{lease: "1500ms"})
	a := newAccount(t, 1)
	r.Stop()
	waitMetric(t, gs[0], "mailgate_cluster_up", 0, 5*time.Second)
	mustLogin(t, gs[0].Addr("pop3"), a)
	r.Start()
	waitMetric(t, gs[1], "mailgate_cluster_up", 1, 5*time.Second)
	rc := r.Client(t)
	key := "t:lock:dovecot:" + strings.ToLower(a.User)
	for deadline := time.Now().Add(5 * time.Second); rc.Exists(t.Context(), key).Val() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the degraded-mode lock was not written to Redis after it returned")
		}
	}
	if nc, err := login(gs[1].Addr("pop3"), a); code(err) != "IN-USE" {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("login on another instance: %v, want [IN-USE]", err)
	}
}
