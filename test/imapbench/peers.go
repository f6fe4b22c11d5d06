package main

// peers.go starts the proxies under test, each in a process of its own so
// that its memory can be read from /proc: mailgate (this program again,
// role "mailgate") and nginx's mail proxy (Debian's nginx with
// libnginx-mod-mail, from a generated configuration).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway"
	"mailgate/gateway/config"
	"mailgate/test/procmem"
)

// A proxy is a peer that runs in a process of its own.
type proxy interface {
	Addr() string
	// Mem collects garbage where it can and returns the memory of the
	// processes that hold the connections.
	Mem() (procMem, error)
	Stop()
}

// procMem is what /proc says about a set of processes (summed), plus the Go
// runtime's own figures where there are some.
type procMem struct {
	rss, pss          int64
	heap, stack       int64 // Go only
	goroutines        int   // Go only
	goRuntimeReported bool
}

// Roles of this program's child processes.
const (
	roleIdleClients = "idle-clients"
	roleMailgate    = "mailgate"
)

const (
	envBackend    = "IMAPBENCH_BACKEND"
	envCPUProfile = "IMAPBENCH_CPUPROFILE"
	envNoFile     = "IMAPBENCH_NOFILE"
	envHeapRate   = "IMAPBENCH_HEAPRATE" // runtime.MemProfileRate, for an exact heap profile
)

// mailgateProc is mailgate in a child process. It talks over the child's
// stdin and stdout: "gc" answers "mem HEAP STACK GOROUTINES" after a GC that
// returns freed memory to the OS, "heap FILE" and "goroutine FILE" write
// profiles and answer "ok"; EOF shuts the gateway down.
type mailgateProc struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	addr string
}

// startMailgate runs bin (this program when "") in the mailgate role.
func startMailgate(bin, backend, cpuprofile string, nofile uint64, heapRate int) (*mailgateProc, error) {
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin = self
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envRole+"="+roleMailgate, envBackend+"="+backend,
		envCPUProfile+"="+cpuprofile, envNoFile+"="+strconv.FormatUint(nofile, 10), envHeapRate+"="+strconv.Itoa(heapRate))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &mailgateProc{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	line, err := p.read()
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("mailgate child: %w", err)
	}
	addr, ok := strings.CutPrefix(line, "addr ")
	if !ok {
		p.Stop()
		return nil, fmt.Errorf("mailgate child said %q", line)
	}
	p.addr = addr
	return p, nil
}

func (p *mailgateProc) read() (string, error) {
	if !p.out.Scan() {
		return "", fmt.Errorf("no answer: %v", p.out.Err())
	}
	return p.out.Text(), nil
}

func (p *mailgateProc) ask(req string) (string, error) {
	if _, err := fmt.Fprintln(p.in, req); err != nil {
		return "", err
	}
	return p.read()
}

func (p *mailgateProc) Addr() string { return p.addr }

func (p *mailgateProc) Mem() (procMem, error) {
	line, err := p.ask("gc")
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	if m.heap, m.stack, m.goroutines, err = procmem.ParseGCReport(line); err != nil {
		return procMem{}, fmt.Errorf("mailgate child: %w", err)
	}
	m.goRuntimeReported = true
	m.rss, m.pss, err = procmem.SmapsRollup(p.cmd.Process.Pid)
	return m, err
}

// Profile writes the named runtime/pprof profile (heap, goroutine) to file.
func (p *mailgateProc) Profile(name, file string) error {
	line, err := p.ask(name + " " + file)
	if err == nil && line != "ok" {
		err = fmt.Errorf("mailgate child: %s", line)
	}
	return err
}

func (p *mailgateProc) Stop() {
	p.in.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// mailgateChild is the child's side: mailgate with one cleartext IMAP
// listener in front of IMAPBENCH_BACKEND (backend tls: none, so after login
// the relay is between two TCP sockets).
func mailgateChild() error {
	if r, err := strconv.Atoi(os.Getenv(envHeapRate)); err == nil && r > 0 {
		runtime.MemProfileRate = r
	}
	if n, err := strconv.ParseUint(os.Getenv(envNoFile), 10, 64); err == nil && n > 0 {
		if err := raiseFileLimit(n); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	yaml := fmt.Sprintf(`log: {level: warn}
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  bench: {address: %q, tls: none}
routing: {default: bench}
limits: {connections: 100000, per_ip: 100000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: 30s, shutdown: 5s}
`, os.Getenv(envBackend))
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		return fmt.Errorf("mailgate config: %w", err)
	}
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	log, err := logCfg.Build()
	if err != nil {
		return err
	}
	if f := os.Getenv(envCPUProfile); f != "" {
		out, err := os.Create(f)
		if err != nil {
			return err
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	gw, err := gateway.New(cfg, log)
	if err != nil {
		return err
	}
	if err := gw.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		gw.Shutdown(sctx)
	}()
	fmt.Println("addr", gw.Addr("imap").String())
	procmem.Serve(os.Stdin, os.Stdout)
	return nil
}

// nginxModule is Debian's libnginx-mod-mail.
const nginxModule = "/usr/lib/nginx/modules/ngx_mail_module.so"

// nginxProc is nginx's mail proxy with its own prefix directory, pid file
// and error log. Every login asks auth_http, which this process answers:
// the user goes to the backend, which checks the password.
type nginxProc struct {
	cmd    *exec.Cmd
	dir    string
	addr   string
	auth   *http.Server
	done   chan struct{}
	errLog string
}

// nginxMissing says why nginx cannot be measured here, or "".
func nginxMissing() string {
	if _, err := exec.LookPath("nginx"); err != nil {
		return "nginx not installed (Debian: apt-get install nginx-light libnginx-mod-mail)"
	}
	if _, err := os.Stat(nginxModule); err != nil {
		return "nginx's mail module " + nginxModule + " not installed (Debian: apt-get install libnginx-mod-mail)"
	}
	return ""
}

func startNginx(backend string, workers int, nofile uint64) (*nginxProc, error) {
	host, port, err := net.SplitHostPort(backend)
	if err != nil {
		return nil, err
	}
	authLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	auth := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("Auth-Server", host)
		w.Header().Set("Auth-Port", port)
	}), ReadHeaderTimeout: 10 * time.Second}
	go auth.Serve(authLn)

	listen, err := freePort()
	if err != nil {
		auth.Close()
		return nil, err
	}
	dir, err := os.MkdirTemp("", "imapbench-nginx-")
	if err != nil {
		auth.Close()
		return nil, err
	}
	n := &nginxProc{dir: dir, addr: listen, auth: auth, done: make(chan struct{}), errLog: filepath.Join(dir, "error.log")}
	conf := fmt.Sprintf(`load_module %s;
daemon off;
master_process on;
worker_processes %d;
worker_rlimit_nofile %d;
pid %s;
error_log %s warn;
events { worker_connections %d; }
mail {
    server_name imapbench.test;
    auth_http %s/auth;
    proxy_pass_error_message on;
    # With the default buffer nginx stalls on loopback (Nagle plus delayed ACK).
    proxy_buffer 64k;
    server {
        listen %s;
        protocol imap;
    }
}
`, nginxModule, workers, nofile, filepath.Join(dir, "nginx.pid"), n.errLog, nofile/2,
		authLn.Addr().String(), listen)
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		n.Stop()
		return nil, err
	}
	n.cmd = exec.Command("nginx", "-p", dir, "-c", confFile, "-e", n.errLog)
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	if err := n.cmd.Start(); err != nil {
		close(n.done)
		n.Stop()
		return nil, err
	}
	go func() { n.cmd.Wait(); close(n.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-n.done:
			n.Stop()
			return nil, fmt.Errorf("nginx exited: %s", n.log())
		default:
		}
		if time.Now().After(deadline) {
			n.Stop()
			return nil, fmt.Errorf("nginx does not listen on %s: %s", listen, n.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The workers start after the master listens.
	for time.Now().Before(deadline) {
		if len(n.workers()) == workers {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n, nil
}

func (n *nginxProc) log() string {
	b, _ := os.ReadFile(n.errLog)
	return strings.TrimSpace(string(b))
}

func (n *nginxProc) Addr() string { return n.addr }

// workers are the master's children.
func (n *nginxProc) workers() []int {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	pid := n.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Mem sums the workers' memory: they hold the connections.
func (n *nginxProc) Mem() (procMem, error) {
	var m procMem
	ws := n.workers()
	if len(ws) == 0 {
		return m, errors.New("nginx has no workers")
	}
	for _, p := range ws {
		rss, pss, err := procmem.SmapsRollup(p)
		if err != nil {
			return m, err
		}
		m.rss += rss
		m.pss += pss
	}
	return m, nil
}

func (n *nginxProc) Stop() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Signal(syscall.SIGTERM) // fast shutdown: idle clients would hold a graceful one
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			n.cmd.Process.Kill()
			<-n.done
		}
	}
	n.auth.Close()
	os.RemoveAll(n.dir)
}

// freePort returns a loopback address nobody listens on just now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
