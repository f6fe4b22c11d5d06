// Package mailserver is what the throwaway IMAP servers of the end-to-end
// tests (test/dovecot, test/cyrus, test/courier) share: the IMAP helpers a
// test uses as "another client" of a user (IMAP: APPEND, EXPUNGE, flags, a
// mailbox's state), free ports, waiting for the greeting, a server process
// that is our child and dies with us, and skipping loudly (failing under
// CI=true) when a server is not installed.
package mailserver

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailgate/test/syncbuf"
)

// ErrNotInstalled: the server's programs are not where the starter looks.
var ErrNotInstalled = errors.New("not installed")

// ErrNotRoot: the servers bind, switch users and (Courier) mount.
var ErrNotRoot = errors.New("the IMAP server tests must run as root")

// SkipOrFail ends t after a server named name failed to start. A missing
// prerequisite (ErrNotInstalled, ErrNotRoot) skips the test loudly, or fails
// it when the environment variable CI is "true"; any other error fails it.
// how says how to install the server.
func SkipOrFail(t testing.TB, name, how string, err error) {
	t.Helper()
	unavailable := errors.Is(err, ErrNotInstalled) || errors.Is(err, ErrNotRoot)
	switch {
	case !unavailable:
		t.Fatalf("%s: %v", name, err)
	case os.Getenv("CI") == "true":
		t.Fatalf("CI=true but the %s end-to-end tests cannot run: %v", name, err)
	default:
		t.Skipf("SKIPPING: %s: %v (these tests need a real %s; %s)", name, err, name, how)
	}
}

// User is a system user that mail belongs to.
type User struct {
	Name     string
	UID, GID int
}

var mailUserMu sync.Mutex

// MailUser returns the vmail user, creating it as a system user without a
// home or shell when it does not exist (the servers' mail processes refuse
// to run as root).
func MailUser() (User, error) {
	mailUserMu.Lock()
	defer mailUserMu.Unlock()
	u, err := user.Lookup("vmail")
	if err != nil {
		out, addErr := exec.Command("useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "vmail").CombinedOutput()
		// Another test binary may have created it at the same moment: look again.
		if u, err = user.Lookup("vmail"); err != nil {
			return User{}, fmt.Errorf("creating user vmail: %v: %s", addErr, out)
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return User{}, fmt.Errorf("user vmail has a non-numeric uid/gid %s/%s", u.Uid, u.Gid)
	}
	return User{Name: "vmail", UID: uid, GID: gid}, nil
}

// FreePorts returns n distinct ports of 127.0.0.1 that were free a moment
// ago (for servers that cannot listen on port 0; retry on a clash).
func FreePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Addr is 127.0.0.1:port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// Greets reports whether addr answers with an IMAP "* OK" greeting.
func Greets(a string) error {
	c, err := net.DialTimeout("tcp", a, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("greeting %q", strings.TrimSpace(line))
	}
	return nil
}

// Tail is the last lines lines of s.
func Tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// Process is a server process in the foreground, our child: stopped by its
// pid, and killed by the kernel if the test binary dies first.
type Process struct {
	Output  *syncbuf.Buffer // its stdout and stderr
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error // set before exited is closed
}

// StartProcess starts cmd (its Stdout and Stderr are set here).
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Output: &syncbuf.Buffer{}, cmd: cmd, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Output, p.Output
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// WaitGreeting waits until addr greets, the process exits (an error with
// its output), or timeout passes (then the process is stopped).
func (p *Process) WaitGreeting(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := Greets(addr)
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during startup (%v):\n%s", p.cmd.Path, p.exitErr, Tail(p.Output.String(), 40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return fmt.Errorf("%s did not greet on %s within %v (last: %v):\n%s", p.cmd.Path, addr, timeout, err,
				Tail(p.Output.String(), 40))
		}
	}
}

// Stop sends SIGTERM, then SIGKILL after 10 s, and waits for the exit.
func (p *Process) Stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for 10s; killed", p.cmd.Path, p.cmd.Process.Pid)
	}
}

// Instance is the lifecycle the starters share: a directory of its own and
// the server process. Embed it; Stop ends the process and removes Dir.
type Instance struct {
	Dir  string // everything the instance writes; removed by Stop
	Proc *Process

	stopOnce sync.Once
	stopErr  error
}

// Run starts cmd as the instance's process (StartProcess) and waits until
// addr greets (WaitGreeting).
func (in *Instance) Run(cmd *exec.Cmd, addr string, timeout time.Duration) error {
	p, err := StartProcess(cmd)
	if err != nil {
		return err
	}
	in.Proc = p
	return p.WaitGreeting(addr, timeout)
}

// Stop stops the process (SIGTERM, SIGKILL after 10 s) and removes Dir. It is
// safe to call more than once.
func (in *Instance) Stop() error {
	in.stopOnce.Do(func() {
		if in.Proc != nil {
			in.stopErr = in.Proc.Stop()
		}
		if err := os.RemoveAll(in.Dir); err != nil && in.stopErr == nil {
			in.stopErr = err
		}
	})
	return in.stopErr
}

// NeedPrograms checks that paths exist (ErrNotInstalled otherwise) and that
// we are root (ErrNotRoot).
func NeedPrograms(name string, paths ...string) error {
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s %w: %v", name, ErrNotInstalled, err)
		}
	}
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	return nil
}

// PackagesDir is where .ci/install-imap-servers unpacked the server
// packages that conflict with Dovecot: $MAILGATE_IMAP_SERVERS, else
// /opt/mailgate-imap.
func PackagesDir() string {
	if d := os.Getenv("MAILGATE_IMAP_SERVERS"); d != "" {
		return d
	}
	return "/opt/mailgate-imap"
}

// ForTest starts a server with start for t and stops it in t.Cleanup. A
// server that is not installed (or needs root) skips t loudly, or fails it
// under CI=true (SkipOrFail, with how to install it).
func ForTest[S interface{ Stop() error }](t testing.TB, name, how string, start func() (S, error)) S {
	t.Helper()
	s, err := start()
	if err != nil {
		SkipOrFail(t, name, how, err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping %s: %v", name, err)
		}
	})
	return s
}

// OnFreePort runs start with a port of 127.0.0.1 that was free a moment ago,
// for servers that cannot listen on port 0; another process may take it in
// between, so an error that says "in use" is retried (three tries in all).
func OnFreePort(start func(port int) error) error {
	for attempt := 1; ; attempt++ {
		ports, err := FreePorts(1)
		if err != nil {
			return err
		}
		err = start(ports[0])
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "in use") {
			return err
		}
	}
}
