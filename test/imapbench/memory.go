package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"mailgate/test/procmem"
)

// memResult is one proxy's memory per idle logged-in connection.
type memResult struct {
	name              string
	n                 int
	loggedIn          time.Duration
	before, after     procMem
	rssPer, pssPer    float64
	heapPer, stackPer float64
	goroutinesPer     float64
	tcpMemPer         float64 // kernel socket buffers: /proc/net/sockstat TCP mem growth, machine-wide
}

func (m memResult) tableLine() string {
	if !m.after.goRuntimeReported {
		return fmt.Sprintf("| %s | %s | %s | — | — | — |", m.name, kb(int64(m.rssPer)), kb(int64(m.pssPer)))
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %.2f |", m.name, kb(int64(m.rssPer)), kb(int64(m.pssPer)),
		kb(int64(m.heapPer)), kb(int64(m.stackPer)), m.goroutinesPer)
}

func (m memResult) detail() string {
	s := fmt.Sprintf("idle %s: %d connections logged in in %v; RSS %s -> %s, PSS %s -> %s: %s RSS, %s PSS per connection",
		m.name, m.n, m.loggedIn.Round(time.Millisecond), mb(m.before.rss), mb(m.after.rss), mb(m.before.pss), mb(m.after.pss),
		kb(int64(m.rssPer)), kb(int64(m.pssPer)))
	s += fmt.Sprintf("; kernel TCP buffers %s per connection (machine-wide, both ends)", kb(int64(m.tcpMemPer)))
	if m.after.goRuntimeReported {
		s += fmt.Sprintf("; Go heap %s, stacks %s, %.2f goroutines per connection (%d -> %d)",
			kb(int64(m.heapPer)), kb(int64(m.stackPer)), m.goroutinesPer, m.before.goroutines, m.after.goroutines)
	}
	return s
}

// idleMemory starts a fresh proxy of the named kind in front of backend,
// has a child process log in n connections through it (spread over users)
// and hold them, and returns the proxy's growth per connection.
func idleMemory(ctx context.Context, name, backend string, users, n int, o options) (memResult, error) {
	var p proxy
	var mg *mailgateProc
	var err error
	rate := 0
	if o.heapprofile != "" {
		rate = 64 // every allocation of the idle connections, nearly
	}
	switch name {
	case "nginx":
		p, err = startNginx(backend, runtime.GOMAXPROCS(0), fileLimit(n), nil)
	case "nginx-tls":
		p, err = startNginx(backend, runtime.GOMAXPROCS(0), fileLimit(n), o.certs)
	case "dovecot-proxy":
		p, err = startDovecotProxy(backend)
	case "mailgate":
		mg, err = startMailgate("", backend, "", fileLimit(n), rate, nil)
		p = mg
	case "mailgate-tls":
		mg, err = startMailgate("", backend, "", fileLimit(n), rate, o.certs)
		p = mg
	default:
		err = fmt.Errorf("no proxy %q", name)
	}
	if err != nil {
		return memResult{}, err
	}
	defer p.Stop()
	time.Sleep(200 * time.Millisecond) // settled after its start
	before, err := p.Mem()
	if err != nil {
		return memResult{}, err
	}
	tcpMem0 := procmem.TCPMemBytes()

	self, err := os.Executable()
	if err != nil {
		return memResult{}, err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), envRole+"="+roleIdleClients, envAddr+"="+p.Addr(),
		envConns+"="+strconv.Itoa(n), envUsers+"="+strconv.Itoa(users))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return memResult{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return memResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return memResult{}, err
	}
	defer cmd.Wait()
	defer stdin.Close()
	out := bufio.NewScanner(stdout)
	start := time.Now()
	if !out.Scan() || out.Text() != "ready" {
		return memResult{}, fmt.Errorf("%s: idle clients did not get ready: %q %v", name, out.Text(), out.Err())
	}
	m := memResult{name: name, n: n, loggedIn: time.Since(start), before: before}
	time.Sleep(time.Second) // every relay parked in its read
	if mg != nil {
		mg.Mem() // a first GC may only halve the stacks
	}
	if m.after, err = p.Mem(); err != nil {
		return memResult{}, err
	}
	m.tcpMemPer = float64(procmem.TCPMemBytes()-tcpMem0) / float64(n)
	if mg != nil && name == "mailgate" {
		if o.heapprofile != "" {
			if err := mg.Profile("heap", o.heapprofile); err != nil {
				return memResult{}, err
			}
		}
		if o.goroutineprofile != "" {
			if err := mg.Profile("goroutine", o.goroutineprofile); err != nil {
				return memResult{}, err
			}
		}
	}
	per := func(a, b int64) float64 { return float64(b-a) / float64(n) }
	m.rssPer, m.pssPer = per(before.rss, m.after.rss), per(before.pss, m.after.pss)
	m.heapPer, m.stackPer = per(before.heap, m.after.heap), per(before.stack, m.after.stack)
	m.goroutinesPer = float64(m.after.goroutines-before.goroutines) / float64(n)

	stdin.Close() // the child now sends NOOP on every connection and reports
	if !out.Scan() {
		return memResult{}, fmt.Errorf("%s: idle clients ended without a report: %v", name, out.Err())
	}
	if want := fmt.Sprintf("noop ok %d", n); out.Text() != want {
		return memResult{}, fmt.Errorf("%s: idle clients after the measurement: %q, want %q", name, out.Text(), want)
	}
	fmt.Println(m.detail())
	return m, nil
}
