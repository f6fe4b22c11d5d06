package harness

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Process is the real mailgate binary running `serve -config FILE`, the way
// operators run it: signals (SIGTERM, SIGHUP, and SIGKILL for a crash)
// reach it as they would in production.
//
//	p := harness.StartProcess(t, file)
//	addr := p.Listening(t)                  // the first listener's address
//	p.Cmd.Process.Kill()                     // kill -9
type Process struct {
	Cmd  *exec.Cmd
	Done chan error // the exit status, once
	mu   sync.Mutex
	logs strings.Builder
	addr chan string
}

var buildOnce struct {
	once sync.Once
	bin  string
	err  error
}

// Binary builds mailgate once per test binary and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.once.Do(func() {
		dir, err := os.MkdirTemp("", "mailgate-bin-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.bin = filepath.Join(dir, "mailgate")
		out, err := exec.Command("go", "build", "-o", buildOnce.bin, "mailgate/cmd/mailgate").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.bin
}

var listeningRE = regexp.MustCompile(`"msg":"listening".*"address":"([^"]+)"`)

// StartProcess runs the binary on configFile; t.Cleanup kills it and, if
// the test failed, logs its output.
func StartProcess(t testing.TB, configFile string) *Process {
	t.Helper()
	p := &Process{addr: make(chan string, 4), Done: make(chan error, 1)}
	p.Cmd = exec.Command(Binary(t), "serve", "-config", configFile)
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			if m := listeningRE.FindStringSubmatch(line); m != nil {
				select {
				case p.addr <- m[1]:
				default:
				}
			}
		}
		p.Done <- p.Cmd.Wait()
	}()
	t.Cleanup(func() {
		p.Cmd.Process.Kill()
		if t.Failed() {
			t.Logf("mailgate output:\n%s", p.Output())
		}
	})
	return p
}

// Output is everything the process has logged so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// Listening waits for the first listener's "listening" line and returns its
// address.
func (p *Process) Listening(t testing.TB) string {
	t.Helper()
	select {
	case a := <-p.addr:
		return a
	case err := <-p.Done:
		t.Fatalf("mailgate exited: %v\n%s", err, p.Output())
	case <-time.After(30 * time.Second):
		t.Fatalf("mailgate did not start\n%s", p.Output())
	}
	return ""
}

// WaitLog waits until the output contains s.
func (p *Process) WaitLog(t testing.TB, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(p.Output(), s); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in mailgate's output:\n%s", s, p.Output())
		}
	}
}
