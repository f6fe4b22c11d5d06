// Command mailbench measures mailgate's POP3 against Dovecot's own POP3
// server and against Dovecot's POP3 over imapc, in one run, on the same mail
// store, and prints the rows of issue 14 with every figure and its ratio to
// Dovecot's native POP3 of the same run:
//
//	go run ./test/mailbench                      # near: 8 users x 1000 messages, realistic sizes
//	go run ./test/mailbench -far 5ms             # far: backend behind a relay, 5 ms each way
//	go run ./test/mailbench -sessions 50 -messages 200 -size 64KiB
//	go run ./test/mailbench -memory              # RSS while 200 sessions fetch 10 MB messages
//	go run ./test/mailbench -idle 200            # memory per idle logged-in session (idle.go)
//
// It starts its own Dovecot (test/dovecot; needs root and dovecot-imapd,
// dovecot-pop3d), seeds one user per session by IMAP APPEND (the first user;
// the others get hard-linked clones with the same UIDs), starts mailgate in
// process in front of it with the body cache off (pop3.cache.max_bytes 0B),
// and a second Dovecot whose POP3 reads the first one over IMAP (imapc,
// imapc_features rfc822.size fetch-headers; -imapc=false leaves it out; if it
// cannot start, the run says so and goes on without it). Each row measures
// mailgate, native POP3 and imapc POP3 one after the other:
//
// Near mode (mailgate and imapc straight to Dovecot's IMAP):
//
//  1. full download, 1 session, body cache off;
//  2. full download, one session per user at once, body cache off;
//  3. logins/s: one loop per user at once for -login-time, each login
//     connect, USER/PASS, STAT, QUIT; the login rows (near and far) also
//     measure a second mailgate with pop3.reuse -reuse (default 30s; 0
//     leaves it out), where a user's logins after the first take its parked
//     backend connection;
//  4. (-warm, default on) a mailgate with the cache on (-cache), cold then
//     warm, and IMAP UID FETCH 1:* BODY.PEEK[] straight to Dovecot: the
//     ceiling.
//
// Far mode (-far D): mailgate and the imapc peer reach Dovecot's IMAP through
// a latency relay built into the tool (relay.go: a TCP proxy on 127.0.0.1
// that delays each direction by D and charges one round trip for connection
// setup); native POP3 is read directly, the reference. Rows: full download,
// 1 session, cache off; login p50 over -logins logins in turn (to STAT's
// answer, and to QUIT's).
//
// A POP3 download is what a downloading client does: USER/PASS, UIDL, LIST,
// RETR of every message in order, QUIT (no DELE). Each RETR is checked
// against its LIST size. MB/s are 10^6 bytes.
//
// -memory instead measures the process's resident memory (VmRSS, and the Go
// heap) while -memory-sessions sessions each RETR one -memory-size message
// through mailgate: the target is "bounded by the cache size plus a small
// amount per session". It reports; it does not assert. The POP3 clients run
// in the same process (each holds a 64 KiB read buffer), so their share is
// included.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"

	"mailgate/gateway"
	"mailgate/gateway/config"
	"mailgate/test/dovecot"
	"mailgate/test/pop3client"
	"mailgate/upstream"
)

type options struct {
	sessions, messages int
	size               upstream.Size // 0: a realistic mix
	cache              upstream.Size
	fetchAhead         upstream.Size // negative: mailgate's default
	memory             bool
	memSessions        int
	memSize            upstream.Size
	timeout            time.Duration
	far                time.Duration // 0: near mode
	imapc, warm        bool
	loginTime          time.Duration
	logins             int
	reuse              time.Duration
	idle               int
	heapProfile        string
	goroutineProfile   string
}

func main() {
	if os.Getenv(envRole) == roleMailgate {
		if err := mailgateChild(); err != nil {
			fmt.Fprintln(os.Stderr, "mailbench mailgate:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	o.size, o.cache, o.memSize, o.fetchAhead = 0, 0, 10<<20, -1
	flag.IntVar(&o.sessions, "sessions", 8, "concurrent POP3 sessions (one user each)")
	flag.IntVar(&o.messages, "messages", 1000, "messages per mailbox")
	flag.Var((*sizeFlag)(&o.size), "size", "size of every message (e.g. 64KiB); 0: a realistic mix averaging about 40 KiB")
	flag.Var((*sizeFlag)(&o.cache), "cache", "pop3.cache.max_bytes of the cached mailgate (-warm, -memory); 0: enough to hold every mailbox (so the warm pass can hit), at least 256MiB; the rows always run with the cache off")
	flag.Var((*sizeFlag)(&o.fetchAhead), "fetch-ahead", "mailgate's pop3.fetch_ahead (0B: off); default: mailgate's default")
	flag.BoolVar(&o.memory, "memory", false, "measure resident memory while -memory-sessions sessions download -memory-size messages")
	flag.IntVar(&o.memSessions, "memory-sessions", 200, "sessions for -memory")
	flag.Var((*sizeFlag)(&o.memSize), "memory-size", "message size for -memory")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.DurationVar(&o.far, "far", 0, "far mode: put mailgate and the imapc peer behind a relay delaying each direction this long (5ms: a 10 ms RTT)")
	flag.BoolVar(&o.imapc, "imapc", true, "measure Dovecot's POP3 over imapc as a peer")
	flag.BoolVar(&o.warm, "warm", true, "near mode: also a cached mailgate (cold, warm) and a bulk IMAP fetch")
	flag.DurationVar(&o.loginTime, "login-time", 3*time.Second, "near mode: how long each peer's logins/s loop runs")
	flag.IntVar(&o.logins, "logins", 40, "far mode: logins in turn for the latency rows")
	flag.IntVar(&o.idle, "idle", 0, "measure memory per idle logged-in POP3 session with this many sessions (mailgate in a child process; one user each, -messages messages)")
	flag.StringVar(&o.heapProfile, "heapprofile", "", "-idle: write the mailgate child's heap profile, with the sessions idle, to this file")
	flag.StringVar(&o.goroutineProfile, "goroutineprofile", "", "-idle: write the mailgate child's goroutine profile, with the sessions idle, to this file")
	flag.DurationVar(&o.reuse, "reuse", 30*time.Second, "the login rows also measure a mailgate with this pop3.reuse (0: not)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (clients, mailgate) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mailbench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if o.sessions < 1 || o.messages < 1 || o.memSessions < 1 || o.logins < 1 || o.far < 0 {
		fmt.Fprintln(os.Stderr, "mailbench: -sessions, -messages, -memory-sessions and -logins must be positive, -far not negative")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "mailbench:", err)
		os.Exit(1)
	}
}

// sizeFlag reads sizes the way the configuration file writes them (64KiB).
type sizeFlag upstream.Size

func (f *sizeFlag) String() string {
	if *f < 0 {
		return "default"
	}
	return upstream.Size(*f).String()
}

func (f *sizeFlag) Set(s string) error {
	v, err := upstream.ParseSize(s)
	*f = sizeFlag(v)
	return err
}

func run(o options) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	dc, err := dovecot.Start(dovecot.Options{POP3: true})
	if err != nil {
		return err
	}
	defer dc.Stop()
	// Bound the whole run: a wedged backend must not hang it forever.
	stop := context.AfterFunc(ctx, func() { dc.Stop() })
	defer stop()

	fmt.Printf("mailbench: %s, GOMAXPROCS=%d, %s\n", runtime.Version(), runtime.GOMAXPROCS(0), dovecot.Version())
	if o.memory {
		return runMemory(ctx, o, dc)
	}
	if o.idle > 0 {
		return runIdle(ctx, o, dc)
	}
	return runThroughput(ctx, o, dc)
}

type user struct{ name, pass string }

// seedUsers makes n users, APPENDs msgs to the first and clones its mailbox
// for the others.
func seedUsers(dc *dovecot.Server, n int, msgs [][]byte) ([]user, error) {
	users := make([]user, n)
	for i := range users {
		users[i] = user{name: fmt.Sprintf("bench%d@bench.test", i), pass: fmt.Sprintf("bench-pw-%d", i)}
		if err := dc.AddUser(users[i].name, users[i].pass); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	// APPEND over a few connections at once. The UID order then differs
	// from msgs' order, which nothing depends on: every check compares
	// what a server delivered with what it listed.
	if err := dc.AppendConcurrently(users[0].name, users[0].pass, "INBOX", 4, msgs); err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	seeded := time.Since(start)
	for _, u := range users[1:] {
		if err := dc.CloneMailboxes(users[0].name, u.name); err != nil {
			return nil, fmt.Errorf("cloning the mailbox for %s: %w", u.name, err)
		}
	}
	var total int64
	for _, m := range msgs {
		total += int64(len(m))
	}
	fmt.Printf("seeded %d messages (%s) by APPEND in %v, cloned for %d more users\n",
		len(msgs), mb(total), seeded.Round(time.Millisecond), n-1)
	return users, nil
}

// realisticSize draws from a mix like a personal mailbox: mostly short text
// mails, some with small attachments, a few large ones (mean about 40 KiB).
func realisticSize(rng *rand.Rand) int {
	switch p := rng.IntN(100); {
	case p < 70:
		return 1500 + rng.IntN(8000) // text, HTML alternatives
	case p < 92:
		return 10_000 + rng.IntN(50_000) // inline images, small PDFs
	case p < 99:
		return 100_000 + rng.IntN(200_000) // documents
	default:
		return 1_000_000 + rng.IntN(1_000_000) // photos
	}
}

// makeMessage builds a message of about size bytes: headers, a text part
// with an occasional dot line, and a base64 attachment for the rest.
func makeMessage(rng *rand.Rand, i, size int) []byte {
	var b strings.Builder
	b.Grow(size + 512)
	fmt.Fprintf(&b, "Return-Path: <sender%d@example.org>\r\nFrom: Sender %d <sender%d@example.org>\r\n"+
		"To: bench@bench.test\r\nSubject: benchmark message %d\r\nDate: Mon, 02 Mar 2026 10:%02d:00 +0000\r\n"+
		"Message-ID: <bench-%d@example.org>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		i, i, i, i, i%60, i, i, i)
	for line := 0; b.Len() < min(size, 3000); line++ {
		if line%17 == 5 {
			b.WriteString(".\r\n") // a dot line, dot-stuffed on the wire
		}
		b.WriteString("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n")
	}
	if b.Len() < size {
		fmt.Fprintf(&b, "--b%d\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n", i)
		raw := make([]byte, 57)
		for b.Len() < size {
			for j := range raw {
				raw[j] = byte(rng.Uint32())
			}
			b.WriteString(base64.StdEncoding.EncodeToString(raw))
			b.WriteString("\r\n")
		}
	}
	fmt.Fprintf(&b, "--b%d--\r\n", i)
	return []byte(b.String())
}

// startGateway runs mailgate in process with one cleartext POP3 listener.
// backend is Dovecot's IMAP address, or the far relay's; cache is
// pop3.cache.max_bytes (0: the body cache is off).
func startGateway(ctx context.Context, backend string, cache upstream.Size, o options, reuse time.Duration) (*gateway.Server, error) {
	pop3 := fmt.Sprintf("{cache: {max_bytes: %dB}, reuse: %v}", int64(cache), reuse)
	if o.fetchAhead >= 0 {
		pop3 = fmt.Sprintf("{cache: {max_bytes: %dB}, fetch_ahead: %dB, reuse: %v}", int64(cache), int64(o.fetchAhead), reuse)
	}
	yaml := fmt.Sprintf(`log: {level: warn}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  dovecot: {address: %q, tls: none}
routing: {default: dovecot}
pop3: %s
limits: {connections: 100000, per_ip: 100000, auth_failures_per_ip: 100000/min}
timeouts: {backend_dial: 30s, backend_command: 120s, shutdown: 5s}
`, backend, pop3)
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

// shutdown stops the gateway, cutting sessions after 5s, and gives up
// waiting after 20s so that a wedged session cannot hang the tool.
func shutdown(gw *gateway.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- gw.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			fmt.Fprintln(os.Stderr, "mailbench: mailgate shutdown:", err)
		}
	case <-time.After(20 * time.Second):
		fmt.Fprintln(os.Stderr, "mailbench: mailgate did not shut down within 20s; giving up")
	}
}

type result struct {
	name            string
	elapsed         time.Duration
	messages, bytes int64
	errors          int64
	firstErr        error
}

type tally struct {
	messages, bytes, errors atomic.Int64
	once                    sync.Once
	first                   error
}

func (t *tally) fail(err error) {
	t.errors.Add(1)
	t.once.Do(func() { t.first = err })
}

// popPass runs one POP3 download session per user, all at once.
func popPass(ctx context.Context, addr string, users []user) (result, error) {
	var t tally
	var wg sync.WaitGroup
	start := time.Now()
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := popSession(ctx, addr, u, &t); err != nil {
				t.fail(fmt.Errorf("%s: %w", u.name, err))
			}
		}()
	}
	wg.Wait()
	return result{elapsed: time.Since(start), messages: t.messages.Load(), bytes: t.bytes.Load(),
		errors: t.errors.Load(), firstErr: t.first}, ctx.Err()
}

func popSession(ctx context.Context, addr string, u user, t *tally) error {
	c, err := pop3client.Dial(addr, 60*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.Login(u.name, u.pass); err != nil {
		return err
	}
	uidl, err := c.UIDL()
	if err != nil {
		return err
	}
	list, err := c.List()
	if err != nil {
		return err
	}
	if len(uidl) != len(list) {
		return fmt.Errorf("UIDL lists %d messages, LIST %d", len(uidl), len(list))
	}
	for _, it := range list {
		n, err := c.RetrTo(it.N, io.Discard)
		if err != nil {
			return fmt.Errorf("RETR %d: %w", it.N, err)
		}
		if n != it.Size {
			t.fail(fmt.Errorf("%s: RETR %d delivered %d octets, LIST said %d", u.name, it.N, n, it.Size))
		}
		t.messages.Add(1)
		t.bytes.Add(n)
	}
	return c.Quit()
}

// imapPass fetches every user's whole INBOX with one UID FETCH 1:*
// BODY.PEEK[] per user, all at once.
func imapPass(ctx context.Context, addr string, users []user) (result, error) {
	var t tally
	var wg sync.WaitGroup
	start := time.Now()
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := imapSession(ctx, addr, u, &t); err != nil {
				t.fail(fmt.Errorf("%s: %w", u.name, err))
			}
		}()
	}
	wg.Wait()
	return result{elapsed: time.Since(start), messages: t.messages.Load(), bytes: t.bytes.Load(),
		errors: t.errors.Load(), firstErr: t.first}, ctx.Err()
}

func imapSession(ctx context.Context, addr string, u user, t *tally) error {
	conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return err
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	// go-imap has no deadline between responses: tie the conn to ctx.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.Login(u.name, u.pass).Wait(); err != nil {
		return err
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return err
	}
	var all imap.UIDSet
	all.AddRange(1, 0)
	fc := c.Fetch(all, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	for msg := fc.Next(); msg != nil; msg = fc.Next() {
		for item := msg.Next(); item != nil; item = msg.Next() {
			if b, ok := item.(imapclient.FetchItemDataBodySection); ok && b.Literal != nil {
				n, err := io.Copy(io.Discard, b.Literal)
				if err != nil {
					fc.Close()
					return err
				}
				t.messages.Add(1)
				t.bytes.Add(n)
			}
		}
	}
	if err := fc.Close(); err != nil {
		return err
	}
	return c.Logout().Wait()
}

// runMemory samples resident memory while many sessions download one large
// message each through mailgate.
func runMemory(ctx context.Context, o options, dc *dovecot.Server) error {
	rng := rand.New(rand.NewPCG(3, 4))
	msg := makeMessage(rng, 0, int(o.memSize))
	if o.cache == 0 {
		o.cache = 256 << 20 // mailgate's default
	}
	fmt.Printf("memory: %d sessions each RETR one %s message; pop3.cache.max_bytes %s (messages over max_message_bytes 4MiB are never cached)\n",
		o.memSessions, mb(int64(len(msg))), o.cache)
	users, err := seedUsers(dc, o.memSessions, [][]byte{msg})
	if err != nil {
		return err
	}
	gw, err := startGateway(ctx, dc.IMAPAddr, o.cache, o, 0)
	if err != nil {
		return err
	}
	defer shutdown(gw)

	runtime.GC()
	base := sample()
	fmt.Printf("before:  %s\n", base)
	var peak memSample
	done := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				peak = peak.max(sample())
			}
		}
	}()
	r, err := popPass(ctx, gw.Addr("pop3").String(), users)
	close(done)
	sampler.Wait()
	if err != nil {
		return err
	}
	runtime.GC()
	after := sample()
	fmt.Printf("peak:    %s\n", peak)
	fmt.Printf("after:   %s\n", after)
	perSession := float64(peak.rss-base.rss) / float64(o.memSessions)
	fmt.Printf("peak RSS growth %s = %s per session; %d sessions moved %s in %v (%.1f MB/s)\n",
		mb(peak.rss-base.rss), kib(int64(perSession)), o.memSessions, mb(r.bytes),
		r.elapsed.Round(time.Millisecond), float64(r.bytes)/1e6/r.elapsed.Seconds())
	if r.errors > 0 {
		return fmt.Errorf("%d errors (first: %v)", r.errors, r.firstErr)
	}
	return nil
}

type memSample struct {
	rss       int64 // VmRSS of this process (gateway and clients)
	heapInuse int64
	heapSys   int64
}

func (m memSample) String() string {
	return fmt.Sprintf("VmRSS %s, Go heap in use %s (heap reserved %s)", mb(m.rss), mb(m.heapInuse), mb(m.heapSys))
}

func (m memSample) max(o memSample) memSample {
	return memSample{rss: max(m.rss, o.rss), heapInuse: max(m.heapInuse, o.heapInuse), heapSys: max(m.heapSys, o.heapSys)}
}

func sample() memSample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{rss: vmRSS(), heapInuse: int64(ms.HeapInuse), heapSys: int64(ms.HeapSys)}
}

// vmRSS reads VmRSS from /proc/self/status, in bytes (0 when unavailable).
func vmRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}

func mb(n int64) string  { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }
