// Command imapbench measures mailgate's IMAP pass-through against the
// direct backend and nginx's mail proxy, in one run, on the same mail store:
//
//	go run ./test/imapbench                  # the four rows of issue 13, 5 rounds
//	go run ./test/imapbench -inmem 8000      # memory per idle connection, 8,000 held, in-memory backend
//	go run ./test/imapbench -cpuprofile cpu.out -heapprofile heap.out
//	go run ./test/imapbench -other /tmp/imapbench-main -idle 0   # A/B: other builds' mailgates as peers
//	go run ./test/imapbench -tls=false -dovecot-proxy=false      # direct, nginx and mailgate only
//
// It starts its own Dovecot (test/dovecot; needs root and dovecot-imapd),
// seeds one user per session by IMAP APPEND (the first user; the others get
// hard-linked clones), and starts the proxies in front of Dovecot's
// cleartext port, each in a process of its own:
//
//   - mailgate: this program again, one cleartext listener, backend tls:
//     none (so after login the relay is between two TCP sockets);
//   - nginx: Debian's nginx with libnginx-mod-mail from a generated
//     configuration (its own -p prefix directory, pid and error_log;
//     worker_processes as many as GOMAXPROCS; proxy_buffer 64k), whose
//     auth_http this program answers (Auth-Status: OK, Auth-Server and
//     Auth-Port: Dovecot; Dovecot checks the password). Where nginx or its
//     mail module is absent the tool says so and goes on without it.
//   - dovecot-proxy (-dovecot-proxy): a second Dovecot as an IMAP proxy
//     (passdb static proxy=y nopassword=y: the backend checks the password;
//     login processes in performance mode, one per CPU);
//   - with -tls, nginx-tls and mailgate-tls: the same two with implicit TLS
//     towards the client (IMAPS, RFC 8314; nginx `listen ... ssl`, mailgate
//     `tls: implicit`) and a cleartext backend, with a certificate from a CA
//     made for the run; every connection is a full TLS handshake. Their
//     ratios are to cleartext direct, and the tool prints mailgate-tls
//     against nginx-tls; there is no target for them.
//
// Each round runs every workload against every peer, rotating who goes
// first (a machine busy with something else for a moment should not always
// hurt the same peer); each peer's figure is divided by direct's in the
// same round and the table shows the median of those ratios and of the
// figures:
//
//   - full fetch, 1 session: LOGIN, SELECT INBOX, UID FETCH 1:* BODY.PEEK[],
//     LOGOUT, -repeat times one after the other; MB/s of message literals;
//   - full fetch, N concurrent users (-sessions, one user each);
//   - logins/s: -sessions workers connect, LOGIN, LOGOUT, -logins in all;
//   - memory per idle logged-in connection: a fresh proxy process, -idle
//     connections logged in by a child process (this program again) and
//     held; the growth of the proxy's RSS and PSS (/proc/PID/smaps_rollup;
//     nginx: its workers' sum) after a GC that returns freed memory to the
//     OS (Go), divided by the number of connections. Socket buffers are
//     kernel memory and in neither figure. Each idle connection then sends
//     NOOP, to prove it was a live session.
//
// With -inmem N only the memory row runs, with N connections against the
// in-memory backend (upstream/imaptest, which holds that many cheaply where
// Dovecot forks a process per connection). A proxied connection takes two
// sockets: the tool raises its open-file limit (RLIMIT_NOFILE, root may
// raise the hard one too) and gives the proxies theirs.
//
// Every session checks that it got every message with the seeded size.
// With -check the tool exits 1 when a target of issue 13 is missed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailgate/test/dovecot"
	"mailgate/upstream"
	"mailgate/upstream/imaptest"
)

// Targets of issue 13, as ratios to direct, and bytes per idle connection.
const (
	target1Session   = 0.95
	targetNSessions  = 0.90
	targetLogins     = 0.92
	targetIdleMemory = 12_000 // bytes: nginx's 12.4 KB of issue 13, rounded down
)

type options struct {
	sessions, messages, rounds, repeat, logins int
	size                                       upstream.Size
	idle, inmem                                int
	bare, nginx, check                         bool
	tls, dovecotProxy                          bool
	certs                                      *tlsFiles // with tls
	timeout                                    time.Duration
	cpuprofile, heapprofile, goroutineprofile  string
	other                                      string
}

// The child process that holds the idle connections is this program with
// these variables set.
const (
	envRole  = "IMAPBENCH_ROLE"
	envAddr  = "IMAPBENCH_ADDR"
	envConns = "IMAPBENCH_CONNS"
	envUsers = "IMAPBENCH_USERS"
)

func main() {
	switch os.Getenv(envRole) {
	case roleIdleClients:
		if err := idleClients(); err != nil {
			fmt.Fprintln(os.Stderr, "imapbench idle clients:", err)
			os.Exit(1)
		}
		return
	case roleMailgate:
		if err := mailgateChild(); err != nil {
			fmt.Fprintln(os.Stderr, "imapbench mailgate:", err)
			os.Exit(1)
		}
		return
	}
	o := options{size: 64 << 10}
	flag.IntVar(&o.sessions, "sessions", 8, "concurrent users of the full-fetch-N and logins rows")
	flag.IntVar(&o.messages, "messages", 500, "messages per mailbox")
	flag.Var((*sizeFlag)(&o.size), "size", "size of every message (e.g. 64KiB)")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds; the table shows medians")
	flag.IntVar(&o.repeat, "repeat", 4, "full fetches one after the other in the 1-session row")
	flag.IntVar(&o.logins, "logins", 400, "logins per pass of the logins row")
	flag.IntVar(&o.idle, "idle", 1000, "idle logged-in connections for the memory row (0: skip)")
	flag.IntVar(&o.inmem, "inmem", 0, "run only the memory row, with this many connections against the in-memory backend")
	flag.BoolVar(&o.bare, "bare", false, "also measure a bare io.Copy TCP proxy (in this process)")
	flag.BoolVar(&o.nginx, "nginx", true, "measure nginx's mail proxy too, where installed")
	flag.BoolVar(&o.tls, "tls", true, "also measure nginx and mailgate with implicit TLS towards the client (IMAPS), cleartext backend")
	flag.BoolVar(&o.dovecotProxy, "dovecot-proxy", true, "also measure Dovecot as an IMAP proxy")
	flag.BoolVar(&o.check, "check", false, "exit 1 when a target is missed")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write mailgate's CPU profile of the throughput rows to this file")
	flag.StringVar(&o.heapprofile, "heapprofile", "", "write mailgate's heap profile with the idle connections held to this file")
	flag.StringVar(&o.goroutineprofile, "goroutineprofile", "", "write mailgate's goroutine profile with the idle connections held to this file")
	flag.StringVar(&o.other, "other", "", "imapbench binaries built from other commits, comma-separated: their mailgates join the throughput rows as peers other1, other2...")
	flag.Parse()
	if o.sessions < 1 || o.messages < 1 || o.rounds < 1 || o.repeat < 1 || o.logins < 1 || o.idle < 0 || o.inmem < 0 || o.size < 200 {
		fmt.Fprintln(os.Stderr, "imapbench: -sessions, -messages, -rounds, -repeat and -logins must be positive, -idle and -inmem not negative, -size at least 200B")
		os.Exit(2)
	}
	var missed bool
	var err error
	if o.tls {
		if o.certs, err = benchCerts(); err != nil {
			fmt.Fprintln(os.Stderr, "imapbench: TLS certificates:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(o.certs.dir)
	}
	if o.inmem > 0 {
		missed, err = runInMem(o)
	} else {
		missed, err = run(o)
	}
	if o.certs != nil {
		os.RemoveAll(o.certs.dir) // os.Exit skips the deferred call
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imapbench:", err)
		os.Exit(1)
	}
	if missed && o.check {
		os.Exit(1)
	}
}

// sizeFlag reads sizes the way the configuration file writes them (64KiB).
type sizeFlag upstream.Size

func (f *sizeFlag) String() string { return upstream.Size(*f).String() }

func (f *sizeFlag) Set(s string) error {
	v, err := upstream.ParseSize(s)
	*f = sizeFlag(v)
	return err
}

// fileLimit is what a process holding n proxied connections needs: two
// sockets each, and room.
func fileLimit(n int) uint64 { return uint64(2*n + 512) }

func header() {
	up, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("imapbench: %s, GOMAXPROCS=%d, %d CPUs; load average before: %s\n",
		runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU(), strings.TrimSpace(string(up)))
}

// run returns whether a target was missed.
func run(o options) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if err := raiseFileLimit(fileLimit(o.idle)); err != nil {
		return false, err
	}
	header()
	dc, err := dovecot.Start(dovecot.Options{})
	if err != nil {
		return false, err
	}
	defer dc.Stop()
	stop := context.AfterFunc(ctx, func() { dc.Stop() }) // a wedged run ends
	defer stop()

	msg := makeMessage(int(o.size))
	fmt.Printf("%s; %d users x %d messages x %s\n", dovecot.Version(), o.sessions, o.messages, kib(int64(len(msg))))
	users, err := seedUsers(dc, o.sessions, o.messages, msg)
	if err != nil {
		return false, err
	}

	peers := []string{"direct"}
	addrs := map[string]string{"direct": dc.IMAPAddr}
	useNginx := o.nginx
	if why := nginxMissing(); useNginx && why != "" {
		fmt.Println("nginx: not measured:", why)
		useNginx = false
	}
	if useNginx {
		ng, err := startNginx(dc.IMAPAddr, runtime.GOMAXPROCS(0), fileLimit(o.idle), nil)
		if err != nil {
			fmt.Println("nginx: not measured:", err)
			useNginx = false
		} else {
			defer ng.Stop()
			peers = append(peers, "nginx")
			addrs["nginx"] = ng.Addr()
		}
	}
	if useNginx && o.tls {
		ng, err := startNginx(dc.IMAPAddr, runtime.GOMAXPROCS(0), fileLimit(o.idle), o.certs)
		if err != nil {
			fmt.Println("nginx-tls: not measured:", err)
		} else {
			defer ng.Stop()
			peers = append(peers, "nginx-tls")
			addrs["nginx-tls"] = ng.Addr()
		}
	}
	if o.dovecotProxy {
		dp, err := startDovecotProxy(dc.IMAPAddr)
		if err != nil {
			return false, fmt.Errorf("dovecot-proxy: %w", err)
		}
		defer dp.Stop()
		peers = append(peers, "dovecot-proxy")
		addrs["dovecot-proxy"] = dp.Addr()
	}
	mg, err := startMailgate("", dc.IMAPAddr, o.cpuprofile, fileLimit(o.idle), 0, nil)
	if err != nil {
		return false, err
	}
	defer mg.Stop()
	peers = append(peers, "mailgate")
	addrs["mailgate"] = mg.Addr()
	if o.tls {
		mt, err := startMailgate("", dc.IMAPAddr, "", fileLimit(o.idle), 0, o.certs)
		if err != nil {
			return false, fmt.Errorf("mailgate-tls: %w", err)
		}
		defer mt.Stop()
		peers = append(peers, "mailgate-tls")
		addrs["mailgate-tls"] = mt.Addr()
	}
	for i, bin := range strings.FieldsFunc(o.other, func(r rune) bool { return r == ',' }) {
		om, err := startMailgate(bin, dc.IMAPAddr, "", fileLimit(o.idle), 0, nil)
		if err != nil {
			return false, fmt.Errorf("-other %s: %w", bin, err)
		}
		defer om.Stop()
		name := fmt.Sprintf("other%d", i+1)
		fmt.Printf("%s: mailgate of %s\n", name, bin)
		peers = append(peers, name)
		addrs[name] = om.Addr()
	}
	if o.bare {
		bare, err := startBareProxy(ctx, dc.IMAPAddr)
		if err != nil {
			return false, err
		}
		defer bare.Close()
		peers = append(peers, "bare")
		addrs["bare"] = bare.Addr().String()
	}

	nFetch := fmt.Sprintf("full fetch, %d concurrent users", o.sessions)
	rows := []row{
		{name: "full fetch, 1 session", unit: "MB/s", target: target1Session, pass: func(addr string) (float64, error) {
			return fetchPass(ctx, addr, users[:1], o.repeat, o.messages, int64(len(msg)))
		}},
		{name: nFetch, unit: "MB/s", target: targetNSessions, pass: func(addr string) (float64, error) {
			return fetchPass(ctx, addr, users, 1, o.messages, int64(len(msg)))
		}},
		{name: "logins/s (connect, LOGIN, LOGOUT)", unit: "/s", target: targetLogins, pass: func(addr string) (float64, error) {
			return loginPass(ctx, addr, users, o.logins)
		}},
	}
	for i := range rows {
		rows[i].figures = map[string][]float64{}
		rows[i].ratios = map[string][]float64{}
	}
	for r := range o.rounds {
		cpu0 := cpuTimes()
		for i := range rows {
			row := &rows[i]
			got := map[string]float64{}
			for j := range peers {
				name := peers[(j+r)%len(peers)]
				v, err := row.pass(addrs[name])
				if err != nil {
					return false, fmt.Errorf("%s, %s: %w", row.name, name, err)
				}
				got[name] = v
				row.figures[name] = append(row.figures[name], v)
			}
			for _, name := range peers {
				row.ratios[name] = append(row.ratios[name], got[name]/got["direct"])
			}
		}
		fmt.Printf("round %d of %d: %s (machine CPU %.0f%% busy)\n", r+1, o.rounds, rounds(rows, peers, r), 100*cpuTimes().busySince(cpu0))
	}
	if o.cpuprofile != "" {
		// The child writes its CPU profile when it stops: a fresh one
		// measures the memory.
		mg.Stop()
		fmt.Println("mailgate's CPU profile of the throughput rows:", o.cpuprofile)
	} else {
		mg.Stop()
	}

	var mem []memResult
	if o.idle > 0 {
		for _, name := range peers[1:] {
			if name == "bare" || strings.HasPrefix(name, "other") {
				continue
			}
			m, err := idleMemory(ctx, name, dc.IMAPAddr, len(users), o.idle, o)
			if err != nil {
				return false, err
			}
			mem = append(mem, m)
		}
	}
	missed := printTable(o, rows, peers, mem)
	up, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("load average after: %s\n", strings.TrimSpace(string(up)))
	return missed, nil
}

// runInMem measures only memory per idle connection, with o.inmem
// connections against the in-memory backend.
func runInMem(o options) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	// This process holds the backend's sockets.
	if err := raiseFileLimit(fileLimit(o.inmem)); err != nil {
		return false, err
	}
	header()
	const nUsers = 8
	us := make([]imaptest.User, nUsers)
	for i := range us {
		u := benchUser(i)
		us[i] = imaptest.User{Name: u.name, Password: u.pass}
	}
	srv, err := imaptest.Start(us...)
	if err != nil {
		return false, err
	}
	defer srv.Close()
	fmt.Printf("in-memory backend (upstream/imaptest) at %s; %d users\n", srv.Addr(), nUsers)
	var mem []memResult
	var names []string
	if why := nginxMissing(); o.nginx && why != "" {
		fmt.Println("nginx: not measured:", why)
	} else if o.nginx {
		names = append(names, "nginx")
		if o.tls {
			names = append(names, "nginx-tls")
		}
	}
	if o.dovecotProxy {
		names = append(names, "dovecot-proxy")
	}
	names = append(names, "mailgate")
	if o.tls {
		names = append(names, "mailgate-tls")
	}
	for _, name := range names {
		m, err := idleMemory(ctx, name, srv.Addr(), nUsers, o.inmem, o)
		if err != nil {
			return false, err
		}
		mem = append(mem, m)
	}
	fmt.Println()
	fmt.Printf("| memory per idle logged-in connection (%d held, fresh process, in-memory backend) | RSS | PSS | Go heap | Go stacks | goroutines |\n|---|---|---|---|---|---|\n", o.inmem)
	missed := false
	for _, m := range mem {
		fmt.Println(m.tableLine())
		if m.name == "mailgate" {
			missed = missed || m.rssPer > targetIdleMemory
		}
	}
	fmt.Printf("\nTarget: mailgate <= %s per connection (RSS): %s. Socket buffers are kernel memory, in neither RSS nor PSS.\n",
		kb(targetIdleMemory), verdict(!missed))
	return missed, nil
}

// row is one workload of the table.
type row struct {
	name, unit string
	target     float64 // mailgate's ratio to direct
	pass       func(addr string) (float64, error)
	figures    map[string][]float64 // peer -> one figure a round
	ratios     map[string][]float64 // peer -> figure / direct's, same round
}

func rounds(rows []row, peers []string, r int) string {
	var parts []string
	for _, row := range rows {
		var ps []string
		for _, p := range peers {
			ps = append(ps, fmt.Sprintf("%s %.0f", p, row.figures[p][r]))
		}
		parts = append(parts, fmt.Sprintf("[%s %s: %s]", strings.SplitN(row.name, " (", 2)[0], row.unit, strings.Join(ps, ", ")))
	}
	return strings.Join(parts, " ")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// printTable prints the medians and returns whether a target was missed.
func printTable(o options, rows []row, peers []string, mem []memResult) bool {
	fmt.Printf("\nmedians of %d rounds; ratio to direct in the same round (figure in brackets)\n\n", o.rounds)
	fmt.Printf("| IMAP workload | %s | target (mailgate) |\n|---|%s---|\n", strings.Join(peers, " | "), strings.Repeat("---|", len(peers)))
	missed := false
	for _, row := range rows {
		cells := []string{row.name}
		for _, p := range peers {
			cells = append(cells, fmt.Sprintf("%.2f (%.0f %s)", median(row.ratios[p]), median(row.figures[p]), row.unit))
		}
		m := median(row.ratios["mailgate"])
		ok := m >= row.target
		note := fmt.Sprintf(">= %.2f: %s", row.target, verdict(ok))
		if !ok {
			note += fmt.Sprintf(" by %.2f", row.target-m)
		}
		for _, peer := range []string{"nginx", "dovecot-proxy"} {
			if r, has := row.ratios[peer]; has {
				ahead := m > median(r)
				note += "; ahead of " + peer + ": " + map[bool]string{true: "yes", false: "NO"}[ahead]
				ok = ok && ahead
			}
		}
		missed = missed || !ok
		fmt.Printf("| %s | %s |\n", strings.Join(cells, " | "), note)
	}
	if len(mem) > 0 {
		cells := []string{fmt.Sprintf("memory per idle logged-in connection (%d held, fresh process; RSS, PSS)", o.idle), "—"}
		var mgPer float64
		for _, p := range peers[1:] {
			cell := "—"
			for _, m := range mem {
				if m.name == p {
					cell = fmt.Sprintf("%s, %s", kb(int64(m.rssPer)), kb(int64(m.pssPer)))
					if p == "mailgate" {
						mgPer = m.rssPer
					}
				}
			}
			cells = append(cells, cell)
		}
		ok := mgPer <= targetIdleMemory
		missed = missed || !ok
		fmt.Printf("| %s | <= %s: %s |\n", strings.Join(cells, " | "), kb(targetIdleMemory), verdict(ok))
		fmt.Println()
		for _, m := range mem {
			fmt.Println(m.detail())
		}
		fmt.Println("Socket buffers are kernel memory: in neither RSS nor PSS.")
	}
	if _, has := rows[0].figures["mailgate-tls"]; has {
		if _, has := rows[0].figures["nginx-tls"]; has {
			fmt.Println("\nIMAPS (implicit TLS towards the client, cleartext backend; no target): mailgate-tls / nginx-tls in the same round, median")
			for _, row := range rows {
				var r []float64
				for i, v := range row.figures["mailgate-tls"] {
					r = append(r, v/row.figures["nginx-tls"][i])
				}
				fmt.Printf("- %s: %.2f\n", row.name, median(r))
			}
			per := map[string]memResult{}
			for _, m := range mem {
				per[m.name] = m
			}
			if mt, ok := per["mailgate-tls"]; ok {
				if nt, ok := per["nginx-tls"]; ok {
					fmt.Printf("- memory per idle connection (RSS, PSS): mailgate-tls %s, %s; nginx-tls %s, %s\n",
						kb(int64(mt.rssPer)), kb(int64(mt.pssPer)), kb(int64(nt.rssPer)), kb(int64(nt.pssPer)))
				}
			}
		}
	}
	return missed
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// fetchPass runs one session per user at once, repeat times in a row each,
// checks each and returns MB/s of message literals.
func fetchPass(ctx context.Context, addr string, users []user, repeat, messages int, size int64) (float64, error) {
	var total atomic.Int64
	errs := make(chan error, len(users))
	var wg sync.WaitGroup
	start := time.Now()
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range repeat {
				n, bytes, err := fetchSession(ctx, addr, u)
				switch {
				case err != nil:
					errs <- fmt.Errorf("session of %s: %w", u.name, err)
					return
				case n != messages || bytes != int64(messages)*size:
					errs <- fmt.Errorf("session of %s: got %d messages, %d bytes; want %d, %d",
						u.name, n, bytes, messages, int64(messages)*size)
					return
				}
				total.Add(bytes)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / 1e6 / elapsed.Seconds(), nil
}

// loginPass has len(users) workers connect, LOGIN and LOGOUT, n times in
// all, and returns logins per second.
func loginPass(ctx context.Context, addr string, users []user, n int) (float64, error) {
	var next atomic.Int64
	errs := make(chan error, len(users))
	var wg sync.WaitGroup
	start := time.Now()
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				cn, err := dial(ctx, addr)
				if err == nil {
					err = cn.login(u)
					if err == nil {
						_, _, err = cn.cmd("LOGOUT")
					}
					cn.c.Close()
				}
				if err != nil {
					errs <- fmt.Errorf("login of %s: %w", u.name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

func kb(n int64) string { return fmt.Sprintf("%.1f KB", float64(n)/1e3) }
