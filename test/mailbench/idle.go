package main

// -idle N: memory per idle logged-in POP3 session, the way test/imapbench
// measures its idle IMAP connections: mailgate runs in a child process of
// this program (role mailgate, in front of the same Dovecot), this process
// logs N sessions in through it (USER/PASS, STAT: the snapshot of a
// -messages mailbox is taken) and leaves them idle, and the child's growth is
// divided by N: RSS and PSS from /proc, the Go heap, stacks and goroutines
// from the child's runtime. Every session then answers a NOOP, so none was
// dead while measured.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/pop3client"
	"mailgate/test/procmem"
)

// The child's role and backend, from its environment.
const (
	envRole        = "MAILBENCH_ROLE"
	envBackend     = "MAILBENCH_BACKEND"
	envHeapRate    = "MAILBENCH_HEAPRATE" // runtime.MemProfileRate of the child, for -heapprofile
	roleMailgate   = "mailgate"
	idleLoginConns = 8 // logins under way at once
)

// mailgateChild is the child's side: mailgate (body cache off, defaults
// otherwise) in front of MAILBENCH_BACKEND; it prints "addr HOST:PORT",
// answers each "gc" line on stdin with procmem.GCReport, writes a heap
// or goroutine profile for "heap FILE" or "goroutine FILE" (answering "ok"),
// and ends at EOF.
func mailgateChild() error {
	if r, err := strconv.Atoi(os.Getenv(envHeapRate)); err == nil && r > 0 {
		runtime.MemProfileRate = r
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := startGateway(ctx, os.Getenv(envBackend), 0, options{fetchAhead: -1}, 0)
	if err != nil {
		return err
	}
	defer shutdown(gw)
	fmt.Println("addr", gw.Addr("pop3").String())
	procmem.Serve(os.Stdin, os.Stdout)
	return nil
}

// childMem is the child's memory.
type childMem struct {
	rss, pss, heap, stack int64
	goroutines            int
}

func runIdle(ctx context.Context, o options, dc *dovecot.Server) error {
	rng := rand.New(rand.NewPCG(5, 6))
	msgs := make([][]byte, o.messages)
	for i := range msgs {
		size := int(o.size)
		if size == 0 {
			size = realisticSize(rng)
		}
		msgs[i] = makeMessage(rng, i, size)
	}
	fmt.Printf("idle: %d POP3 sessions logged in (USER/PASS, STAT) and idle, one user each, %d messages per mailbox; mailgate in a child process\n",
		o.idle, o.messages)
	users, err := seedUsers(dc, o.idle, msgs)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), envRole+"="+roleMailgate, envBackend+"="+dc.IMAPAddr)
	if o.heapProfile != "" {
		cmd.Env = append(cmd.Env, envHeapRate+"=64") // every allocation of the sessions, nearly
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer stdin.Close()
	out := bufio.NewScanner(stdout)
	if !out.Scan() {
		return fmt.Errorf("mailgate child: no address: %v", out.Err())
	}
	addr, ok := strings.CutPrefix(out.Text(), "addr ")
	if !ok {
		return fmt.Errorf("mailgate child said %q", out.Text())
	}
	mem := func() (childMem, error) {
		var m childMem
		for range 2 { // the first GC may shrink stacks only by half
			if _, err := io.WriteString(stdin, "gc\n"); err != nil {
				return m, err
			}
			if !out.Scan() {
				return m, fmt.Errorf("mailgate child: no answer: %v", out.Err())
			}
		}
		var err error
		if m.heap, m.stack, m.goroutines, err = procmem.ParseGCReport(out.Text()); err != nil {
			return m, err
		}
		m.rss, m.pss, err = procmem.SmapsRollup(cmd.Process.Pid)
		return m, err
	}
	time.Sleep(200 * time.Millisecond) // settled after its start
	before, err := mem()
	if err != nil {
		return err
	}
	tcp0 := procmem.TCPMemBytes()

	clients := make([]*pop3client.Client, len(users))
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	next := make(chan int)
	for range idleLoginConns {
		wg.Go(func() {
			for i := range next {
				c, err := pop3client.Dial(addr, 30*time.Second)
				if err == nil {
					if err = c.Login(users[i].name, users[i].pass); err == nil {
						var n int
						if n, _, err = c.Stat(); err == nil && n != o.messages {
							err = fmt.Errorf("STAT: %d messages, want %d", n, o.messages)
						}
					}
					if err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", users[i].name, err))
				} else {
					clients[i] = c
				}
				mu.Unlock()
			}
		})
	}
	for i := range users {
		next <- i
	}
	close(next)
	wg.Wait()
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Quit()
				c.Close()
			}
		}
	}()
	if len(errs) > 0 {
		return fmt.Errorf("%d logins failed (first: %w)", len(errs), errs[0])
	}
	loggedIn := time.Since(start)
	time.Sleep(time.Second) // every session waits in its read
	after, err := mem()
	if err != nil {
		return err
	}
	tcpPer := float64(procmem.TCPMemBytes()-tcp0) / float64(len(users))
	for _, p := range []struct{ name, file string }{{"heap", o.heapProfile}, {"goroutine", o.goroutineProfile}} {
		if p.file == "" {
			continue
		}
		if _, err := io.WriteString(stdin, p.name+" "+p.file+"\n"); err != nil {
			return err
		}
		if !out.Scan() || out.Text() != "ok" {
			return fmt.Errorf("mailgate child: %s profile: %q %v", p.name, out.Text(), out.Err())
		}
	}
	for _, c := range clients {
		if err := c.Noop(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d idle sessions did not answer NOOP after the measurement (first: %w)", len(errs), errors.Join(errs[0]))
	}
	n := float64(len(users))
	per := func(a, b int64) string { return kib(int64(float64(b-a) / n)) }
	fmt.Printf("\n%-52s %10s %10s %10s %10s %12s\n", "memory per idle logged-in POP3 session", "RSS", "PSS", "Go heap", "stacks", "goroutines")
	fmt.Printf("%-52s %10s %10s %10s %10s %12.2f\n", fmt.Sprintf("mailgate (%d sessions, %d messages each)", len(users), o.messages),
		per(before.rss, after.rss), per(before.pss, after.pss), per(before.heap, after.heap), per(before.stack, after.stack),
		float64(after.goroutines-before.goroutines)/n)
	fmt.Printf("\ndetails: logged in in %v; RSS %s -> %s, PSS %s -> %s, heap %s -> %s, stacks %s -> %s, goroutines %d -> %d; kernel TCP buffers %s per session (machine-wide, both ends, not in RSS)\n",
		loggedIn.Round(time.Millisecond), mb(before.rss), mb(after.rss), mb(before.pss), mb(after.pss),
		mb(before.heap), mb(after.heap), mb(before.stack), mb(after.stack), before.goroutines, after.goroutines, kib(int64(tcpPer)))
	return nil
}
