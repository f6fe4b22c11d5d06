// Package harness runs mailgate in-process for end-to-end tests: from a
// generated YAML file (through config.Parse, as users' files go), with every
// log entry kept as JSON so a test can read it and check that no credential
// ever appears: credentials never appear in logs, metrics or error messages.
//
//	g := harness.Start(t, yaml)             // stopped and checked in t.Cleanup
//	conn, _ := net.Dial("tcp", g.Addr("pop3"))
//	harness.Secret("s3cret")                 // searched for in every gateway's logs
//
// It also holds the small helpers every end-to-end package needs: programs
// that must be installed (skip, or fail under CI=true), a shared test CA.
package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"mailgate/gateway"
	"mailgate/gateway/config"
	"mailgate/test/mailserver"
	"mailgate/test/pop3client"
	"mailgate/test/syncbuf"
	"mailgate/test/testca"
)

// POP3Config is the configuration most end-to-end tests start from: JSON
// logs at debug level (what Start reads), one cleartext POP3 listener named
// pop3 that allows plaintext logins, and one backend, name, at the IMAP
// address backendAddr, the default route. settings (more top-level YAML:
// pop3, limits, timeouts...) follow.
func POP3Config(name, backendAddr, settings string) string {
	return fmt.Sprintf(`log: {level: debug, format: json}
listeners:
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  %s: {address: %q, tls: none}
routing: {default: %s}
`, name, backendAddr, name) + settings
}

// Quit ends the POP3 session c with QUIT, failing t if it is refused.
func Quit(t testing.TB, c *pop3client.Client) {
	t.Helper()
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

// WantGone checks the answer to what, a command on a message another client
// expunged during the session: a plain -ERR, not [SYS/TEMP] (RFC 3206: the
// session goes on, and trying again would not help).
func WantGone(t testing.TB, what string, err error) {
	t.Helper()
	if code, ok := pop3client.ErrCode(err); !ok || code == "SYS/TEMP" {
		t.Errorf("%s of a message expunged elsewhere: err = %v, want a plain -ERR", what, err)
	}
}

// Gateway is an in-process mailgate.
type Gateway struct {
	t    testing.TB
	Srv  *gateway.Server
	YAML []byte
	logs *syncbuf.Buffer
}

// Start parses yaml, starts mailgate and registers its shutdown (15s grace)
// and the credential check of its logs with t.Cleanup.
func Start(t testing.TB, yaml string) *Gateway {
	t.Helper()
	g := &Gateway{t: t, YAML: []byte(yaml), logs: &syncbuf.Buffer{}}
	g.start()
	t.Cleanup(func() {
		g.Stop(15 * time.Second)
		g.CheckNoSecrets()
		if t.Failed() {
			t.Logf("gateway log (last 60 lines):\n%s", mailserver.Tail(g.Logs(), 60))
		}
	})
	return g
}

func (g *Gateway) start() {
	g.t.Helper()
	cfg, err := config.Parse(g.YAML)
	if err != nil {
		g.t.Fatalf("config.Parse:\n%v\n--- config ---\n%s", err, g.YAML)
	}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(g.logs), zapcore.DebugLevel)
	srv, err := gateway.New(cfg, zap.New(core))
	if err != nil {
		g.t.Fatalf("gateway.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		g.t.Fatalf("gateway Start: %v", err)
	}
	g.Srv = srv
}

// Stop shuts the gateway down, cutting sessions still open after grace. Safe
// to call twice.
func (g *Gateway) Stop(grace time.Duration) {
	if g.Srv == nil {
		return
	}
	srv := g.Srv
	g.Srv = nil
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			g.t.Errorf("gateway Shutdown: %v", err)
		}
	case <-time.After(grace + 15*time.Second):
		// Shutdown must cut sessions once ctx is done; carry on with the
		// other tests rather than hang the package.
		g.t.Errorf("gateway Shutdown did not return 15s after its grace ended")
	}
}

// Restart stops the gateway and starts a new one from the same file: nothing
// kept in memory (body cache, locks), as after a process restart.
func (g *Gateway) Restart() {
	g.t.Helper()
	g.Stop(15 * time.Second)
	g.start()
}

// Addr is the address of the named listener ("metrics" for the metrics one).
func (g *Gateway) Addr(listener string) string {
	g.t.Helper()
	a := g.Srv.Addr(listener)
	if a == nil {
		g.t.Fatalf("gateway has no listener %q", listener)
	}
	return a.String()
}

// Logs returns every log entry so far, one JSON object a line.
func (g *Gateway) Logs() string { return g.logs.String() }

var secrets struct {
	mu   sync.Mutex
	list []string
}

// Secret registers a credential: every gateway's logs are searched for it
// when its test ends.
func Secret(s string) {
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	secrets.list = append(secrets.list, s)
}

// CheckNoSecrets fails the test when a registered credential appears in the
// gateway's logs, which must never hold one.
func (g *Gateway) CheckNoSecrets() {
	logs := g.Logs()
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	for _, s := range secrets.list {
		if i := strings.Index(logs, s); i >= 0 {
			g.t.Errorf("invariant 5: a credential (%q) appears in the gateway log: ...%s...", s,
				logs[max(0, i-200):min(len(logs), i+len(s)+50)])
		}
	}
}

// NeedProgram returns the path of an installed program. When it is missing
// the test is skipped with a loud message, or fails under CI=true, where
// .ci/run must have installed it.
func NeedProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s is not installed: %v", name, err)
	}
	t.Skipf("SKIPPING: %s is not installed (%v); .ci/run installs it", name, err)
	return ""
}

var ca struct {
	once sync.Once
	ca   *testca.CA
	dir  string
	file string
	err  error
}

// CA is a test CA shared by the process, and the path of its certificate
// (for curl --cacert and the like). Its files live until RemoveCAFiles.
func CA(t testing.TB) (*testca.CA, string) {
	t.Helper()
	ca.once.Do(func() {
		if ca.ca, ca.err = testca.New(); ca.err != nil {
			return
		}
		if ca.dir, ca.err = os.MkdirTemp("", "mailgate-ca-"); ca.err != nil {
			return
		}
		ca.file, ca.err = ca.ca.WriteCA(ca.dir)
	})
	if ca.err != nil {
		t.Fatal(ca.err)
	}
	return ca.ca, ca.file
}

// RemoveCAFiles removes the shared CA's files, if CA made any; TestMain
// calls it after m.Run, when no test can ask for them any more.
func RemoveCAFiles() {
	if ca.dir != "" {
		os.RemoveAll(ca.dir)
	}
}

// ClientTLS trusts the test CA, for 127.0.0.1.
func ClientTLS(t testing.TB) *tls.Config {
	c, _ := CA(t)
	return &tls.Config{RootCAs: c.Pool(), ServerName: "127.0.0.1"}
}

// LeafFiles writes a certificate and key signed by the test CA for
// 127.0.0.1 and localhost into dir, for the gateway's tls.certificates.
func LeafFiles(t testing.TB, dir string) (cert, key string) {
	t.Helper()
	c, _ := CA(t)
	cert, key, err := c.WriteLeaf(dir, "gateway", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}
