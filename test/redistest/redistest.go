// Package redistest runs a throwaway Redis for tests: Debian's
// /usr/bin/redis-server on 127.0.0.1, on a free port, without persistence.
//
//	addr, stop := redistest.Start(t)
//	client := redis.NewClient(&redis.Options{Addr: addr})
//	...
//	stop()                          // Redis goes away mid-test
//	redistest.StartAt(t, addr)      // and comes back, empty, at the same address
//
// StartCluster runs a one-node Redis Cluster instead, for redis.ClusterClient.
//
// When redis-server is missing, Start skips the test loudly, or fails it
// under CI=true. It stops only the process it started, in t.Cleanup (or
// when stop is called first).
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/syncbuf"
)

// Bin is the Debian package's server.
const Bin = "/usr/bin/redis-server"

// startTimeout bounds waiting for a started server to answer PING.
const startTimeout = 15 * time.Second

// Require skips t loudly when redis-server is not installed, or fails it
// under CI=true, where the tests must run.
func Require(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(Bin); err != nil {
		msg := fmt.Sprintf("!!! %s is not installed (Debian package `redis-server`): Redis tests NOT RUN: %v", Bin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// Start runs a redis-server on a free port of 127.0.0.1 and returns its
// address and a function that stops it (at most once; t.Cleanup calls it
// too).
func Start(t testing.TB) (addr string, stop func()) {
	t.Helper()
	return startOnFreePort(t)
}

// startOnFreePort runs a redis-server with extra arguments on a free port of
// 127.0.0.1. A port found free can be taken before the server binds it:
// it retries with another.
func startOnFreePort(t testing.TB, extra ...string) (addr string, stop func()) {
	t.Helper()
	Require(t)
	var err error
	for range 3 {
		addr = freeAddr(t)
		if stop, err = start(t, addr, extra...); err == nil {
			return addr, stop
		}
	}
	t.Fatalf("redistest: %v", err)
	return "", nil
}

// StartAt runs a redis-server at addr (a 127.0.0.1 address a stopped
// server had, to bring it back) and returns the function that stops it.
func StartAt(t testing.TB, addr string) (stop func()) {
	t.Helper()
	Require(t)
	stop, err := start(t, addr)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return stop
}

// StartCluster runs a one-node Redis Cluster owning all 16384 slots and
// returns its address (for redis.ClusterOptions.Addrs) and the function
// that stops it. One node is enough to make Redis refuse what a cluster
// refuses: a multi-key command or script whose keys are in several slots
// (CROSSSLOT).
func StartCluster(t testing.TB) (addr string, stop func()) {
	t.Helper()
	// nodes.conf goes in the attempt's --dir, the server's working directory.
	addr, stop = startOnFreePort(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	// CLUSTER ADDSLOTS 0 ... 16383 (ADDSLOTSRANGE needs Redis 7).
	args := []string{"CLUSTER", "ADDSLOTS"}
	for slot := range 16384 {
		args = append(args, strconv.Itoa(slot))
	}
	if reply, err := command(addr, args...); err != nil || reply != "+OK\r\n" {
		t.Fatalf("redistest: CLUSTER ADDSLOTS on %s: %q, %v", addr, reply, err)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		reply, err := command(addr, "CLUSTER", "INFO")
		if err == nil && strings.Contains(reply, "cluster_state:ok") {
			return addr, stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: cluster on %s not ok after %s: %q, %v", addr, startTimeout, reply, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(t testing.TB, addr string, extra ...string) (func(), error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	out := &syncbuf.Buffer{}
	cmd := exec.Command(Bin, append([]string{
		"--bind", host, "--port", port,
		"--save", "", "--appendonly", "no",
		"--dir", t.TempDir(),
		"--daemonize", "no",
	}, extra...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", Bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("redis-server %s output:\n%s", addr, out.String())
		}
	})
	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(addr)
		if err == nil {
			return stop, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("redis-server on %s exited at start: %s", addr, strings.TrimSpace(out.String()))
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("redis-server on %s not answering after %s: %v", addr, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends PING and expects +PONG.
func ping(addr string) error {
	reply, err := command(addr, "PING")
	if err != nil {
		return err
	}
	if reply != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// command sends one command in RESP on a new connection and returns the
// reply: a status or error line as it came, a bulk string's content.
func command(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var req strings.Builder
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, req.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "$") {
		return line, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return line, err
	}
	body := make([]byte, n+2)
	_, err = io.ReadFull(r, body)
	return string(body[:n]), err
}

// freeAddr returns a 127.0.0.1 address with a TCP port free at the time of
// the call.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	defer ln.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
}
