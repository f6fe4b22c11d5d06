package main

// helpers.go: the bench users and messages, the IMAP client, the idle
// clients' child process.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mailgate/test/dovecot"
)

// raiseFileLimit lifts RLIMIT_NOFILE's soft limit to at least need, raising
// the hard limit too where allowed (root with CAP_SYS_RESOURCE); where it is
// not, the soft limit goes to the hard one and the error names both.
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	want := lim
	want.Cur = need
	want.Max = max(lim.Max, need)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < need {
		return fmt.Errorf("open file limit (ulimit -n): need %d, hard limit %d and not raisable here", need, lim.Max)
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

// sessionTimeout bounds one whole benchmark session.
const sessionTimeout = 2 * time.Minute

// conn is a minimal IMAP client: what a downloading client sends, and a
// reader that skips literals without copying them.
type conn struct {
	c  net.Conn
	br *bufio.Reader
	n  int
}

// tlsScheme marks a peer's address as implicit TLS (IMAPS, RFC 8314):
// "tls://127.0.0.1:port".
const tlsScheme = "tls://"

// clientTLS verifies the IMAPS peers' certificates against the run's CA
// (envCA, a PEM file, inherited by the child processes). Every connection
// is a full handshake: no session cache.
var clientTLS = sync.OnceValues(func() (*tls.Config, error) {
	file := os.Getenv(envCA)
	if file == "" {
		return nil, errors.New("an IMAPS peer without a CA (" + envCA + ")")
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", file)
	}
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}, nil
})

// dial connects to addr (implicit TLS when it starts with tlsScheme) and
// reads the greeting.
func dial(ctx context.Context, addr string) (*conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	var c net.Conn
	var err error
	if a, ok := strings.CutPrefix(addr, tlsScheme); ok {
		cfg, cerr := clientTLS()
		if cerr != nil {
			return nil, cerr
		}
		c, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", a)
	} else {
		c, err = d.DialContext(ctx, "tcp", addr)
	}
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

func mb(n int64) string  { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }
