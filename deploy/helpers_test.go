package deploy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"mailgate/gateway/config"
	"mailgate/test/harness"
)

// optionalProgram returns the path of a program CI does not install
// (systemd-analyze, haproxy): absent, the test is skipped loudly, and not
// failed under CI=true either, because these checks are extras on top of the
// static ones that always run.
func optionalProgram(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("SKIPPING: %s is not installed, so this check does not run (optional, also under CI): %v", name, err)
	}
	return p
}

// demoCerts runs compose/gen-certs.sh into a temporary directory and
// returns it: ca.crt, mailgate.crt/.key, dovecot.crt/.key.
func demoCerts(t *testing.T) string {
	t.Helper()
	harness.NeedProgram(t, "openssl")
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := exec.Command("sh", "compose/gen-certs.sh", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("compose/gen-certs.sh: %v\n%s", err, out)
	}
	return dir
}

// readFile returns the file's contents or fails the test.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseConfig validates a mailgate.yaml as `mailgate check-config` does
// (config.Parse: strict keys, defaults, every section's validation, files
// read) after replacing each key of paths by its value in the text, so that
// the absolute paths of a deployment (/etc/mailgate, /var/lib/mailgate)
// point at temporary files. No such path may remain: validation reads the
// files and creates the ACME storage directory, and must not touch this
// machine's /etc or /var. It returns the config and the substituted text.
func parseConfig(t *testing.T, name string, data []byte, paths map[string]string) (*config.Config, []byte) {
	t.Helper()
	text := string(data)
	for from, to := range paths {
		if !strings.Contains(text, from) {
			t.Errorf("%s: does not mention %s, which the test expected to redirect", name, from)
		}
		text = strings.ReplaceAll(text, from, to)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(text), &root); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for _, v := range scalars(&root) {
		for _, sys := range []string{"/etc/", "/var/", "/run/"} {
			if strings.HasPrefix(v, sys) {
				t.Fatalf("%s: the path %s is left after substitution; give the test a temporary stand-in", name, v)
			}
		}
	}
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		t.Fatalf("%s does not validate:\n%v", name, err)
	}
	return cfg, []byte(text)
}

// scalars returns the value of every scalar in the tree (comments are not
// scalars).
func scalars(n *yaml.Node) []string {
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	var vs []string
	for _, c := range n.Content {
		vs = append(vs, scalars(c)...)
	}
	return vs
}

// port returns the port number of a host:port address.
func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return n
}

// wellKnownPort is the IANA port of a protocol in a TLS mode (RFC 8314 §7
// for the implicit-TLS ones), where clients look for it.
func wellKnownPort(protocol, tlsMode string) int {
	switch {
	case protocol == config.ProtocolPOP3 && tlsMode == "implicit":
		return 995
	case protocol == config.ProtocolPOP3:
		return 110
	case protocol == config.ProtocolIMAP && tlsMode == "implicit":
		return 993
	default:
		return 143
	}
}

// decodeStrict decodes one YAML document into v, refusing keys v does not
// declare: the structs in these tests list every key the files may use, so
// a misspelt key fails here rather than being ignored by Docker.
func decodeStrict(t *testing.T, name string, data []byte, v any) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// yamlDocuments splits a multi-document YAML stream into its documents,
// each re-encoded so that it can be decoded into a struct.
func yamlDocuments(t *testing.T, name string, data []byte) []*yaml.Node {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		docs = append(docs, &n)
	}
}
