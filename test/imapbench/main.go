// Command imapbench measures mailgate's IMAP pass-through against Dovecot
// itself, in one run, on the same mail store:
//
//	go run ./test/imapbench                        # 8 sessions x 500 messages of 64 KiB, 1,000 idle connections
//	go run ./test/imapbench -sessions 32 -messages 50 -size 16KiB -rounds 5
//	go run ./test/imapbench -idle 0                # throughput only
//
// It starts its own Dovecot (test/dovecot; needs root and dovecot-imapd),
// seeds one user per session by IMAP APPEND (the first user; the others get
// hard-linked clones), and starts mailgate in process with one cleartext
// listener in front of it (backend tls: none, so after login the relay is
// the kernel's splice between two TCP sockets).
//
// Throughput: -rounds times, N concurrent sessions (one user each) run
// LOGIN, SELECT INBOX, UID FETCH 1:* BODY.PEEK[], LOGOUT straight to Dovecot
// and through mailgate, rotating which goes first. Every session checks
// that it got every message with the seeded size. It prints MB/s (10^6
// bytes of message literals), sessions/s and how busy the machine's CPUs
// were during each pass, and the ratio of the best mailgate pass to the
// best direct pass (the best is the pass least disturbed by whatever else
// the machine runs). Target: >= 0.9.
//
// With -bare (the default) a third pass goes through a bare io.Copy proxy
// written here: no IMAP, no deadlines, the same kernel splice. When the
// machine's CPUs are saturated (clients, proxy and Dovecot share them) an
// extra hop costs throughput whatever the proxy does; mailgate/bare is then
// mailgate's own share of that cost.
//
// Idle memory: -idle connections log in through mailgate (spread over the
// users, under Dovecot's mail_max_userip_connections) and stay idle. The
// clients run in a child process (this program again), so the growth of
// this process's VmRSS, after a GC that returns freed memory to the OS, is
// mailgate's own cost; divided by the number of connections it is printed
// with the Go heap and stack share. Target: < 64 KiB per connection. Each
// idle connection then sends NOOP, to prove it was a live session.
//
// It reports the figures; with -check it also exits 1 when a target is
// missed.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway"
	"mailgate/gateway/config"
	"mailgate/test/dovecot"
	"mailgate/upstream"
)

// Targets of issue 3.
const (
	targetRatio      = 0.9
	targetIdleMemory = 64 << 10
)

type options struct {
	sessions, messages, rounds int
	size                       upstream.Size
	idle                       int
	bare                       bool
	check                      bool
	timeout                    time.Duration
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
	if os.Getenv(envRole) == "idle-clients" {
		if err := idleClients(); err != nil {
			fmt.Fprintln(os.Stderr, "imapbench idle clients:", err)
			os.Exit(1)
		}
		return
	}
	o := options{size: 64 << 10}
	flag.IntVar(&o.sessions, "sessions", 8, "concurrent sessions per pass (one user each)")
	flag.IntVar(&o.messages, "messages", 500, "messages per mailbox")
	flag.Var((*sizeFlag)(&o.size), "size", "size of every message (e.g. 64KiB)")
	flag.IntVar(&o.rounds, "rounds", 3, "passes each way; the best of each is compared")
	flag.IntVar(&o.idle, "idle", 1000, "idle logged-in connections for the memory figure (0: skip)")
	flag.BoolVar(&o.bare, "bare", true, "also measure a bare io.Copy TCP proxy, the floor for any proxy on this machine")
	flag.BoolVar(&o.check, "check", false, "exit 1 when a target is missed")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if o.sessions < 1 || o.messages < 1 || o.rounds < 1 || o.idle < 0 || o.size < 200 {
		fmt.Fprintln(os.Stderr, "imapbench: -sessions, -messages and -rounds must be positive, -idle not negative, -size at least 200B")
		os.Exit(2)
	}
	missed, err := run(o)
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

// run returns whether a target was missed.
func run(o options) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	// Each idle connection costs this process two sockets (client side and
	// backend side) and, while a splice waits, a pipe per direction.
	if err := raiseFileLimit(uint64(6*o.idle + 1024)); err != nil {
		return false, err
	}
	dc, err := dovecot.Start(dovecot.Options{})
	if err != nil {
		return false, err
	}
	defer dc.Stop()
	stop := context.AfterFunc(ctx, func() { dc.Stop() }) // a wedged run ends
	defer stop()

	msg := makeMessage(int(o.size))
	pass := int64(o.sessions) * int64(o.messages) * int64(len(msg))
	fmt.Printf("imapbench: %s, GOMAXPROCS=%d, %s; %d sessions x %d messages x %s = %s a pass\n",
		runtime.Version(), runtime.GOMAXPROCS(0), dovecot.Version(), o.sessions, o.messages, kib(int64(len(msg))), mb(pass))
	users, err := seedUsers(dc, o.sessions, o.messages, msg)
	if err != nil {
		return false, err
	}
	gw, err := startGateway(ctx, dc)
	if err != nil {
		return false, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		gw.Shutdown(sctx)
	}()
	via := gw.Addr("imap").String()

	addrs := map[string]string{"direct": dc.IMAPAddr, "mailgate": via}
	order := []string{"direct", "mailgate"}
	if o.bare {
		bare, err := startBareProxy(ctx, dc.IMAPAddr)
		if err != nil {
			return false, err
		}
		defer bare.Close()
		addrs["bare"] = bare.Addr().String()
		order = append(order, "bare")
	}
	results := map[string][]result{}
	for r := range o.rounds {
		// Rotate who goes first: a machine busy with something else for a
		// moment should not always hurt the same pass.
		for i := range order {
			name := order[(i+r)%len(order)]
			res, err := fetchPass(ctx, name, addrs[name], users, o.messages, int64(len(msg)))
			if err != nil {
				return false, err
			}
			fmt.Printf("round %d: %s\n", r+1, res)
			results[name] = append(results[name], res)
		}
	}
	bd, bp := best(results["direct"]), best(results["mailgate"])
	ratio := bp.mbps() / bd.mbps()
	fmt.Printf("bulk fetch, best of %d: direct %.1f MB/s (%.2f sessions/s), through mailgate %.1f MB/s (%.2f sessions/s); ratio %.3f (target >= %.1f: %s)\n",
		o.rounds, bd.mbps(), bd.sessionsPerSec(), bp.mbps(), bp.sessionsPerSec(), ratio, targetRatio, verdict(ratio >= targetRatio))
	if o.bare {
		bb := best(results["bare"])
		fmt.Printf("reference: a bare io.Copy proxy (no IMAP, same kernel splice) %.1f MB/s, ratio %.3f to direct; mailgate/bare %.3f\n",
			bb.mbps(), bb.mbps()/bd.mbps(), bp.mbps()/bb.mbps())
	}
	missed := ratio < targetRatio

	if o.idle > 0 {
		per, err := idleMemory(ctx, via, len(users), o.idle)
		if err != nil {
			return false, err
		}
		missed = missed || per >= targetIdleMemory
	}
	return missed, nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// raiseFileLimit lifts RLIMIT_NOFILE's soft limit to at least need (up to
// the hard limit, which root may raise too).
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	lim.Cur = need
	if lim.Max < need {
		lim.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising the open file limit to %d (ulimit -n): %w", need, err)
	}
	return nil
}

type user struct{ name, pass string }

func benchUser(i int) user {
	return user{name: fmt.Sprintf("imapbench%d@bench.test", i), pass: fmt.Sprintf("imapbench-pw-%d", i)}
}

// seedUsers makes n users with messages copies of msg each: APPENDed to the
// first user, hard-linked clones for the others.
func seedUsers(dc *dovecot.Server, n, messages int, msg []byte) ([]user, error) {
	users := make([]user, n)
	for i := range users {
		users[i] = benchUser(i)
		if err := dc.AddUser(users[i].name, users[i].pass); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	batch := make([][]byte, messages)
	for i := range batch {
		batch[i] = msg
	}
	if err := dc.AppendConcurrently(users[0].name, users[0].pass, "INBOX", 4, batch); err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	for _, u := range users[1:] {
		if err := dc.CloneMailboxes(users[0].name, u.name); err != nil {
			return nil, fmt.Errorf("cloning the mailbox for %s: %w", u.name, err)
		}
	}
	fmt.Printf("seeded %d messages by APPEND in %v, cloned for %d more users\n",
		messages, time.Since(start).Round(time.Millisecond), n-1)
	return users, nil
}

// makeMessage returns a message of exactly size bytes: headers, then lines
// of 76 characters (like base64 bodies), CRLF line ends.
func makeMessage(size int) []byte {
	var b strings.Builder
	b.WriteString("From: bench@bench.test\r\nTo: user@bench.test\r\nSubject: imapbench\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; b.Len() < size; i++ {
		rem := size - b.Len() // never 1: see below
		n := min(76, rem-2)
		if rem-(n+2) == 1 {
			n-- // a last line of one byte could not end in CRLF
		}
		for j := range n {
			b.WriteByte(alphabet[(i*31+j*7)%len(alphabet)])
		}
		b.WriteString("\r\n")
	}
	return []byte(b.String())
}

// startGateway runs mailgate in process with one cleartext IMAP listener
// in front of Dovecot's cleartext port.
func startGateway(ctx context.Context, dc *dovecot.Server) (*gateway.Server, error) {
	yaml := fmt.Sprintf(`log: {level: warn}
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot}
limits: {connections: 100000, per_ip: 100000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: 30s, shutdown: 5s}
`, dc.IMAPAddr)
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		return nil, fmt.Errorf("mailgate config: %w", err)
	}
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	log, err := logCfg.Build()
	if err != nil {
		return nil, err
	}
	gw, err := gateway.New(cfg, log)
	if err != nil {
		return nil, err
	}
	if err := gw.Start(ctx); err != nil {
		return nil, err
	}
	return gw, nil
}

// startBareProxy relays every connection to target with two io.Copy calls
// (the kernel's splice between TCP sockets) and nothing else: what any
// proxy costs on this machine, whatever it does.
func startBareProxy(ctx context.Context, target string) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			front, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer front.Close()
				back, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", target)
				if err != nil {
					return
				}
				defer back.Close()
				done := make(chan struct{})
				go func() {
					io.Copy(back, front)
					back.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				io.Copy(front, back)
				front.Close()
				<-done
			}()
		}
	}()
	return ln, nil
}

type result struct {
	name     string
	sessions int
	elapsed  time.Duration
	bytes    int64   // message literals
	cpuBusy  float64 // share of the machine's CPU time that was busy, 0..1
}

func (r result) mbps() float64           { return float64(r.bytes) / 1e6 / r.elapsed.Seconds() }
func (r result) sessionsPerSec() float64 { return float64(r.sessions) / r.elapsed.Seconds() }

func (r result) String() string {
	return fmt.Sprintf("%-8s %s in %v = %.1f MB/s, %.2f sessions/s (machine CPU %.0f%% busy)", r.name, mb(r.bytes),
		r.elapsed.Round(time.Millisecond), r.mbps(), r.sessionsPerSec(), 100*r.cpuBusy)
}

// cpuSample is the machine's CPU time from /proc/stat, in clock ticks.
type cpuSample struct{ busy, total int64 }

func cpuTimes() cpuSample {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var s cpuSample
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	return s
}

func (s cpuSample) busySince(prev cpuSample) float64 {
	if s.total <= prev.total {
		return 0
	}
	return float64(s.busy-prev.busy) / float64(s.total-prev.total)
}

func best(rs []result) result {
	b := rs[0]
	for _, r := range rs[1:] {
		if r.mbps() > b.mbps() {
			b = r
		}
	}
	return b
}

// fetchPass runs one session per user at once and checks each.
func fetchPass(ctx context.Context, name, addr string, users []user, messages int, size int64) (result, error) {
	var total atomic.Int64
	errs := make(chan error, len(users))
	var wg sync.WaitGroup
	cpu0 := cpuTimes()
	start := time.Now()
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, bytes, err := fetchSession(ctx, addr, u)
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s session of %s: %w", name, u.name, err)
			case n != messages || bytes != int64(messages)*size:
				errs <- fmt.Errorf("%s session of %s: got %d messages, %d bytes; want %d, %d",
					name, u.name, n, bytes, messages, int64(messages)*size)
			}
			total.Add(bytes)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	busy := cpuTimes().busySince(cpu0)
	close(errs)
	if err := <-errs; err != nil {
		return result{}, err
	}
	return result{name: name, sessions: len(users), elapsed: elapsed, bytes: total.Load(), cpuBusy: busy}, nil
}

// sessionTimeout bounds one whole benchmark session.
const sessionTimeout = 2 * time.Minute

// conn is a minimal IMAP client: what a downloading client sends, and a
// reader that skips literals without copying them.
type conn struct {
	c  net.Conn
	br *bufio.Reader
	n  int
}

func dial(ctx context.Context, addr string) (*conn, error) {
	c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cn := &conn{c: c, br: bufio.NewReaderSize(c, 64<<10)}
	c.SetDeadline(time.Now().Add(sessionTimeout))
	line, err := cn.line()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(line, "* OK") {
		c.Close()
		return nil, fmt.Errorf("greeting %q", line)
	}
	return cn, nil
}

func (cn *conn) line() (string, error) {
	l, err := cn.br.ReadSlice('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(l), "\r\n"), nil
}

// cmd sends one command and reads to its tagged reply, discarding
// literals; it returns how many literals and bytes it skipped.
func (cn *conn) cmd(text string) (literals int, bytes int64, err error) {
	cn.n++
	tag := "b" + strconv.Itoa(cn.n)
	if _, err := io.WriteString(cn.c, tag+" "+text+"\r\n"); err != nil {
		return 0, 0, err
	}
	for {
		l, err := cn.line()
		if err != nil {
			return literals, bytes, err
		}
		if strings.HasPrefix(l, tag+" ") {
			if !strings.HasPrefix(l[len(tag)+1:], "OK") {
				return literals, bytes, fmt.Errorf("%s: %q", strings.Fields(text)[0], l)
			}
			return literals, bytes, nil
		}
		if i := strings.LastIndexByte(l, '{'); i >= 0 && strings.HasSuffix(l, "}") {
			n, err := strconv.ParseInt(l[i+1:len(l)-1], 10, 64)
			if err != nil {
				return literals, bytes, fmt.Errorf("bad literal in %q", l)
			}
			if _, err := cn.br.Discard(int(n)); err != nil {
				return literals, bytes, err
			}
			literals++
			bytes += n
		}
	}
}

func (cn *conn) login(u user) error {
	_, _, err := cn.cmd(fmt.Sprintf("LOGIN %q %q", u.name, u.pass))
	return err
}

func fetchSession(ctx context.Context, addr string, u user) (int, int64, error) {
	cn, err := dial(ctx, addr)
	if err != nil {
		return 0, 0, err
	}
	defer cn.c.Close()
	stop := context.AfterFunc(ctx, func() { cn.c.Close() })
	defer stop()
	if err := cn.login(u); err != nil {
		return 0, 0, err
	}
	if _, _, err := cn.cmd("SELECT INBOX"); err != nil {
		return 0, 0, err
	}
	n, bytes, err := cn.cmd("UID FETCH 1:* BODY.PEEK[]")
	if err != nil {
		return n, bytes, err
	}
	_, _, err = cn.cmd("LOGOUT")
	return n, bytes, err
}

// idleMemory has a child process log in n connections through mailgate at
// addr and keep them idle, and returns this process's VmRSS growth per
// connection.
func idleMemory(ctx context.Context, addr string, users, n int) (float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	before := settle()
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), envRole+"=idle-clients", envAddr+"="+addr,
		envConns+"="+strconv.Itoa(n), envUsers+"="+strconv.Itoa(users))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer cmd.Wait()
	defer stdin.Close()
	out := bufio.NewScanner(stdout)
	start := time.Now()
	if !out.Scan() || out.Text() != "ready" {
		return 0, fmt.Errorf("idle clients did not get ready: %q %v", out.Text(), out.Err())
	}
	loggedIn := time.Since(start)
	time.Sleep(time.Second) // every relay parked in its read
	after := settle()
	per := float64(after.rss-before.rss) / float64(n)
	fmt.Printf("idle: %d connections logged in through mailgate (%v, %d users): VmRSS %s -> %s, +%s per connection (target < %s: %s)\n",
		n, loggedIn.Round(time.Millisecond), users, mb(before.rss), mb(after.rss), kib(int64(per)), kib(targetIdleMemory),
		verdict(per < targetIdleMemory))
	fmt.Printf("idle: of which Go heap +%s and goroutine stacks +%s per connection; goroutines %d -> %d (%.1f per connection)\n",
		kib((after.heap-before.heap)/int64(n)), kib((after.stack-before.stack)/int64(n)),
		before.goroutines, after.goroutines, float64(after.goroutines-before.goroutines)/float64(n))

	stdin.Close() // the child now sends NOOP on every connection and reports
	if !out.Scan() {
		return 0, fmt.Errorf("idle clients ended without a report: %v", out.Err())
	}
	if want := fmt.Sprintf("noop ok %d", n); out.Text() != want {
		return 0, fmt.Errorf("idle clients after the measurement: %q, want %q", out.Text(), want)
	}
	return per, nil
}

type memSample struct {
	rss, heap, stack int64
	goroutines       int
}

// settle collects garbage, returns freed memory to the OS and samples.
func settle() memSample {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{rss: vmRSS(), heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse), goroutines: runtime.NumGoroutine()}
}

// idleClients is the child: it logs in IMAPBENCH_CONNS connections spread
// over IMAPBENCH_USERS users, prints "ready", waits for its stdin to close,
// then sends NOOP on each and prints "noop ok N".
func idleClients() error {
	addr := os.Getenv(envAddr)
	n, err1 := strconv.Atoi(os.Getenv(envConns))
	users, err2 := strconv.Atoi(os.Getenv(envUsers))
	if err := errors.Join(err1, err2); err != nil || users < 1 {
		return fmt.Errorf("bad environment: %v", err)
	}
	if err := raiseFileLimit(uint64(n + 1024)); err != nil {
		return err
	}
	ctx := context.Background()
	conns := make([]*conn, n)
	errs := make(chan error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 { // concurrent logins: Dovecot forks a login process for each
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				cn, err := dial(ctx, addr)
				if err == nil {
					if err = cn.login(benchUser(i % users)); err != nil {
						cn.c.Close()
					}
				}
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					continue
				}
				cn.c.SetDeadline(time.Time{})
				conns[i] = cn
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)

	var ok atomic.Int64
	sem := make(chan struct{}, 64)
	for _, cn := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer cn.c.Close()
			cn.c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, _, err := cn.cmd("NOOP"); err == nil {
				ok.Add(1)
			}
			cn.cmd("LOGOUT")
		}()
	}
	wg.Wait()
	fmt.Printf("noop ok %d\n", ok.Load())
	return nil
}

// vmRSS reads VmRSS from /proc/self/status, in bytes (0 when unavailable).
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}

func mb(n int64) string  { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }
