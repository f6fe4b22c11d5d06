package main

// peers.go starts the proxies under test, each in a process of its own so
// that its memory can be read from /proc: mailgate (this program again,
// role "mailgate"), nginx's mail proxy (Debian's nginx with
// libnginx-mod-mail, from a generated configuration), each also with
// implicit TLS towards the client, and Dovecot as an IMAP proxy.

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
	"mailgate/test/dovecot"
	"mailgate/test/procmem"
	"mailgate/test/testca"
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
	envCA         = "IMAPBENCH_CA"       // the run's CA (PEM), which the clients trust
	envCert       = "IMAPBENCH_CERT"     // the IMAPS peers' certificate and key (PEM files)
	envKey        = "IMAPBENCH_KEY"
)

// tlsFiles are the IMAPS peers' certificate (for localhost and 127.0.0.1,
// signed by the run's CA) and key; nil: the peer is cleartext.
type tlsFiles struct{ dir, ca, cert, key string }

// benchCerts makes the run's CA and the IMAPS peers' certificate under a
// new directory, and sets envCA for the clients (this process and its
// children).
func benchCerts() (*tlsFiles, error) {
	ca, err := testca.New()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "imapbench-tls-")
	if err != nil {
		return nil, err
	}
	tf := &tlsFiles{dir: dir}
	if tf.ca, err = ca.WriteCA(dir); err == nil {
		tf.cert, tf.key, err = ca.WriteLeaf(dir, "imaps", "localhost", "127.0.0.1")
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	os.Setenv(envCA, tf.ca)
	return tf, nil
}

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

// startMailgate runs bin (this program when "") in the mailgate role; with
// tf its listener is implicit TLS.
func startMailgate(bin, backend, cpuprofile string, nofile uint64, heapRate int, tf *tlsFiles) (*mailgateProc, error) {
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
	if tf != nil {
		cmd.Env = append(cmd.Env, envCert+"="+tf.cert, envKey+"="+tf.key)
	}
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
	if tf != nil {
		p.addr = tlsScheme + addr
	}
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
// the relay is between two TCP sockets), or with IMAPBENCH_CERT one
// implicit-TLS listener (the relay is then between a *tls.Conn and a TCP
// socket).
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
	listener := `{name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}`
	if cert := os.Getenv(envCert); cert != "" {
		listener = fmt.Sprintf(`{name: imap, protocol: imap, address: "127.0.0.1:0", tls: implicit}
tls:
  certificates:
    - {cert: %q, key: %q}`, cert, os.Getenv(envKey))
	}
	yaml := fmt.Sprintf(`log: {level: warn}
listeners:
  - %s
backends:
  bench: {address: %q, tls: none}
routing: {default: bench}
limits: {connections: 100000, per_ip: 100000, auth_failures_per_ip: 100000/min, auth_failure_delay: 1ms}
timeouts: {backend_dial: 30s, shutdown: 5s}
`, listener, os.Getenv(envBackend))
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
	tls    bool // listens with implicit TLS
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

// startNginx starts nginx's mail proxy in front of backend; with tf it
// listens with implicit TLS (listen ... ssl).
func startNginx(backend string, workers int, nofile uint64, tf *tlsFiles) (*nginxProc, error) {
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
	sslListen, sslConf := "", ""
	if tf != nil {
		sslListen = " ssl"
		sslConf = fmt.Sprintf("\n        ssl_certificate %s;\n        ssl_certificate_key %s;", tf.cert, tf.key)
	}
	conf := fmt.Sprintf(`load_module %s;
daemon off;
master_process on;
worker_processes %d;
worker_rlimit_nofile %d;
pid %s;
error_log %s warn;
# Any one worker may get every client (two connections each, and auth_http).
events { worker_connections %d; }
mail {
    server_name imapbench.test;
    auth_http %s/auth;
    proxy_pass_error_message on;
    # With the default buffer nginx stalls on loopback (Nagle plus delayed ACK).
    proxy_buffer 64k;
    server {
        listen %s%s;
        protocol imap;%s
    }
}
`, nginxModule, workers, nofile, filepath.Join(dir, "nginx.pid"), n.errLog, nofile,
		authLn.Addr().String(), listen, sslListen, sslConf)
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
	if tf != nil {
		n.tls = true
	}
	return n, nil
}

func (n *nginxProc) log() string {
	b, _ := os.ReadFile(n.errLog)
	return strings.TrimSpace(string(b))
}

func (n *nginxProc) Addr() string {
	if n.tls {
		return tlsScheme + n.addr
	}
	return n.addr
}

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

// dovecotProxy is Dovecot as an IMAP proxy tier (test/dovecot
// Options.Proxy): its login processes, in performance mode, relay every
// session to the backend, which checks the passwords.
type dovecotProxy struct{ s *dovecot.Server }

func startDovecotProxy(backend string) (*dovecotProxy, error) {
	s, err := dovecot.Start(dovecot.Options{Proxy: backend})
	if err != nil {
		return nil, err
	}
	return &dovecotProxy{s}, nil
}

func (d *dovecotProxy) Addr() string { return d.s.IMAPAddr }

// Mem sums the imap-login processes' memory: they hold the proxied
// connections.
func (d *dovecotProxy) Mem() (procMem, error) {
	var m procMem
	pid := d.s.Pid()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return m, err
	}
	found := false
	for _, f := range strings.Fields(string(b)) {
		comm, err := os.ReadFile("/proc/" + f + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "imap-login" {
			continue
		}
		p, _ := strconv.Atoi(f)
		rss, pss, err := procmem.SmapsRollup(p)
		if err != nil {
			return m, err
		}
		m.rss += rss
		m.pss += pss
		found = true
	}
	if !found {
		return m, errors.New("dovecot proxy has no imap-login process")
	}
	return m, nil
}

func (d *dovecotProxy) Stop() { d.s.Stop() }

// freePort returns a loopback address nobody listens on just now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
