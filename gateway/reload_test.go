package gateway

import (
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"mailgate/test/testca"
)

// TestReloadWarnsAboutListenerChanges: a SIGHUP that changes what a listener
// is bound with, or adds or removes one, logs at warn level which listener
// and which settings wait for a restart; the running listeners keep serving.
func TestReloadWarnsAboutListenerChanges(t *testing.T) {
	backend := memBackend(t, testMessage)
	srv, logs := startGateway(t, baseConfig, backend)
	reloadWarnings := func(yaml string) []string {
		t.Helper()
		logs.TakeAll()
		reload(t, srv, yaml, backend)
		var warnings []string
		for _, e := range logs.TakeAll() {
			if e.Level == zapcore.WarnLevel {
				fields := e.ContextMap()
				w := e.Message + " listener=" + fields["listener"].(string)
				if rn, ok := fields["restart_needed"]; ok {
					for _, c := range rn.([]any) {
						w += " [" + c.(string) + "]"
					}
				}
				warnings = append(warnings, w)
			}
		}
		slices.Sort(warnings)
		return warnings
	}

	if w := reloadWarnings(baseConfig); len(w) != 0 {
		t.Errorf("reloading the same configuration warned: %q", w)
	}

	changed := strings.NewReplacer(
		`{name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}`,
		`{name: pop3, protocol: pop3, address: "127.0.0.2:0", tls: none, allow_plaintext_auth: true, proxy_protocol: [10.0.0.0/8]}`,
		`{name: imap, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}`,
		`{name: imap2, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}`,
	).Replace(baseConfig)
	if changed == baseConfig {
		t.Fatal("baseConfig changed; update the replacements")
	}
	want := []string{
		"listener removed from the configuration; it keeps serving until the next restart listener=imap",
		`listener settings changed that need a restart; they keep their running values until then listener=pop3 [address: "127.0.0.1:0" -> "127.0.0.2:0"] [proxy_protocol: "[]" -> "[10.0.0.0/8]"]`,
		"new listener in the configuration; it starts at the next restart listener=imap2",
	}
	if got := reloadWarnings(changed); !slices.Equal(got, want) {
		t.Errorf("warnings after changing listeners:\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}

	protocol := strings.Replace(baseConfig, `{name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none`,
		`{name: pop3, protocol: imap, address: "127.0.0.1:0", tls: implicit`, 1)
	protocol += "tls: {certificates: [{cert: CERT, key: KEY}]}\n"
	cert, key := testCertFiles(t)
	protocol = strings.NewReplacer("CERT", cert, "KEY", key).Replace(protocol)
	want = []string{`listener settings changed that need a restart; they keep their running values until then listener=pop3 [protocol: "pop3" -> "imap"] [tls: "none" -> "implicit"]`}
	if got := reloadWarnings(protocol); !slices.Equal(got, want) {
		t.Errorf("warnings after changing protocol and tls:\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}

	// The running listener still serves POP3 on its old address.
	c := dialPOP3(t, srv.Addr("pop3"), "")
	if g := c.Line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting after the reloads: %q", g)
	}
	c.Command("QUIT", "")
}

// testCertFiles writes a certificate for localhost and its key.
func testCertFiles(t *testing.T) (cert, key string) {
	t.Helper()
	return testca.NewT(t).WriteLeafT(t, t.TempDir(), "gateway", "localhost")
}
