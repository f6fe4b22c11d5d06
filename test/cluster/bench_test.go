package cluster

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
)

// BenchmarkPOP3LoginClusterLock measures what cluster mode adds to a POP3
// login (connect, USER/PASS, STAT, QUIT: the lock is taken at PASS,
// confirmed at QUIT and released before +OK), against Dovecot, with three
// gateways in the same process and run, their logins interleaved one by one:
//
//	local    no cluster: the per-process lock and limiter
//	nolock   cluster mode with pop3.lock: none (the shared limiter only)
//	cluster  cluster mode with pop3.lock: exclusive (limiter and lock)
//
// cluster - nolock is the cluster lock's own cost; cluster - local is
// cluster mode's. The b.N logins of each are cut into three runs in turn;
// each run's p50 and p99 are taken, and the median of the three reported
// (microseconds, and ratios to local):
//
//	go test -run '^$' -bench POP3LoginClusterLock -benchtime 1500x ./test/cluster/
func BenchmarkPOP3LoginClusterLock(b *testing.B) {
	r := startRedis(b)
	local := gatewayYAML(b, r, gwOptions{instance: "local"})
	local = local[:strings.Index(local, "cluster:\n")]
	gws := map[string]*harness.Gateway{
		"local":   harness.Start(b, local),
		"nolock":  harness.Start(b, gatewayYAML(b, r, gwOptions{instance: "nolock", lock: "none"})),
		"cluster": harness.Start(b, gatewayYAML(b, r, gwOptions{instance: "cluster"})),
	}
	names := []string{"local", "nolock", "cluster"}
	users := map[string]account{}
	for _, n := range names {
		users[n] = newAccount(b, 3)
	}
	login := func(name string) time.Duration {
		start := time.Now()
		c, err := login(gws[name].Addr("pop3"), users[name])
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		defer c.Close()
		if _, _, err := c.Stat(); err != nil {
			b.Fatal(err)
		}
		harness.Quit(b, c)
		return time.Since(start)
	}
	for _, n := range names { // warm up connections and caches
		login(n)
	}
	samples := map[string][]time.Duration{}
	b.ResetTimer()
	for i := range b.N {
		// Interleaved, the order rotating so none always goes first.
		for j := range names {
			n := names[(i+j)%len(names)]
			samples[n] = append(samples[n], login(n))
		}
	}
	b.StopTimer()
	if b.N < 30 {
		return // too few for percentiles (the -bench smoke run)
	}
	stat := func(name string, q float64) float64 {
		s := samples[name]
		third := len(s) / 3
		var per []float64
		for k := range 3 {
			run := slices.Clone(s[k*third : (k+1)*third])
			slices.Sort(run)
			per = append(per, float64(run[int(q*float64(len(run)-1))].Microseconds()))
		}
		slices.Sort(per)
		return per[1]
	}
	var line strings.Builder
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", .5}, {"p99", .99}} {
		for _, n := range names {
			v := stat(n, q.q)
			b.ReportMetric(v, n+"-"+q.name+"-µs")
			fmt.Fprintf(&line, "%s %s %.0fµs (%.2fx local)  ", n, q.name, v, v/stat("local", q.q))
		}
		fmt.Fprintf(&line, "| lock alone %s %+.0fµs\n", q.name, stat("cluster", q.q)-stat("nolock", q.q))
	}
	b.Logf("%d logins each, median of 3 runs:\n%s", b.N, line.String())
}
