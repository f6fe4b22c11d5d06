package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mailgate/gateway/imap"
	"mailgate/gateway/pop3"
	"mailgate/test/testca"
	"mailgate/upstream"
)

// designDir makes the files design.yaml refers to: a certificate pair for
// mail.example.com, a CA file, and room for acme/.
func designDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ca := testca.NewT(t)
	ca.WriteLeafT(t, dir, "tls", "mail.example.com")
	if err := os.WriteFile(filepath.Join(dir, "old-ca.pem"), ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// readTestdata reads testdata/name with $DIR replaced by dir.
func readTestdata(t *testing.T, name, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.ReplaceAll(string(b), "$DIR", dir))
}

func problemsOf(t *testing.T, err error) Problems {
	t.Helper()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %v (%T) is not a Problems", err, err)
	}
	return ps
}

// TestDesignExample parses testdata/design.yaml, the example configuration
// of the design (auth_http lookup included): every key of the file format's
// contract is accepted.
func TestDesignExample(t *testing.T) {
	dir := designDir(t)
	data := readTestdata(t, "design.yaml", dir)
	cfg, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse(design.yaml):\n%v", err)
	}
	if cfg.Routing.Lookup == nil || cfg.Routing.Lookup.URL != "http://127.0.0.1:9000/auth" {
		t.Errorf("routing.lookup = %+v", cfg.Routing.Lookup)
	}
	if got := *cfg.POP3.Cache.MaxBytes; got != 256<<20 {
		t.Errorf("pop3.cache.max_bytes = %d, want 256MiB", got)
	}
	if got := cfg.POP3.Cache.MaxMessageBytes; got != 4<<20 {
		t.Errorf("pop3.cache.max_message_bytes = %d, want 4MiB", got)
	}
	if cfg.Timeouts.POP3Idle != 10*time.Minute || cfg.Timeouts.IMAPPreauth != time.Minute || cfg.Timeouts.BackendDial != 10*time.Second {
		t.Errorf("timeouts = %+v", cfg.Timeouts)
	}
	if n, per := cfg.Limits.AuthFailureRate(); n != 10 || per != time.Minute {
		t.Errorf("AuthFailureRate() = %d/%v, want 10/min", n, per)
	}
	if got, want := cfg.Listeners[3].ProxyPrefixes(), []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}; !slices.Equal(got, want) {
		t.Errorf("imaps ProxyPrefixes() = %v, want %v", got, want)
	}
	if got := cfg.Listeners[0].ProxyPrefixes(); len(got) != 0 {
		t.Errorf("pop3 ProxyPrefixes() = %v, want none", got)
	}
	if got := cfg.Backends["store"].Servers(); !slices.Equal(got, []string{"10.1.3.1:993", "10.1.3.2:993"}) {
		t.Errorf("store servers = %v", got)
	}
	if tc := cfg.Backends["legacy"].TLSConfig("10.1.2.3:143"); tc.RootCAs == nil || tc.ServerName != "10.1.2.3" {
		t.Errorf("legacy TLS config not built: %+v", tc)
	}
	if r := cfg.Routing.Rules[0]; r.Domain != "example.org" || r.Backend != "store" || r.RewriteUser != "{local}" {
		t.Errorf("routing rule = %+v", r)
	}
	if cfg.TLS.ACME == nil || cfg.TLS.ACME.Challenges.TLSALPN != ":443" {
		t.Errorf("tls.acme = %+v", cfg.TLS.ACME)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("validation touched the acme storage directory (it must create nothing; serve does): %v", err)
	}
	if cfg.Metrics.Address != "127.0.0.1:9110" || cfg.Log.Format != "json" || !*cfg.POP3.MarkSeen {
		t.Errorf("metrics/log/mark_seen = %+v %+v %v", cfg.Metrics, cfg.Log, *cfg.POP3.MarkSeen)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"log.level", cfg.Log.Level, "info"},
		{"log.format", cfg.Log.Format, "json"},
		{"tls.min_version", cfg.TLS.MinVersion, "1.2"},
		{"timeouts.pop3_idle", cfg.Timeouts.POP3Idle, 10 * time.Minute},
		{"timeouts.imap_preauth", cfg.Timeouts.IMAPPreauth, 60 * time.Second},
		{"timeouts.pop3_preauth", cfg.Timeouts.POP3Preauth, 3 * time.Minute},
		{"timeouts.imap_idle", cfg.Timeouts.IMAPIdle, 30 * time.Minute},
		{"timeouts.tls_handshake", cfg.Timeouts.TLSHandshake, 30 * time.Second},
		{"timeouts.backend_dial", cfg.Timeouts.BackendDial, 10 * time.Second},
		{"timeouts.backend_command", cfg.Timeouts.BackendCommand, 60 * time.Second},
		{"timeouts.shutdown", cfg.Timeouts.Shutdown, 30 * time.Second},
		{"timeouts.tcp_keepalive", cfg.Timeouts.TCPKeepalive, 60 * time.Second},
		{"limits.connections", cfg.Limits.Connections, 10000},
		{"limits.per_ip", cfg.Limits.PerIP, 50},
		{"limits.ipv6_prefix", cfg.Limits.IPv6Prefix, 64},
		{"limits.auth_failures_per_ip", cfg.Limits.AuthFailuresPerIP, "10/min"},
		{"limits.bad_commands", cfg.Limits.BadCommands, 10},
		{"limits.preauth_bad_commands", cfg.Limits.PreauthBadCommands, 3},
		{"pop3.mailbox", cfg.POP3.Mailbox, "INBOX"},
		{"pop3.lock", cfg.POP3.Lock, "exclusive"},
		{"pop3.takeover_after", cfg.POP3.TakeoverAfter, 10 * time.Second},
		{"pop3.reuse (off)", cfg.POP3.Reuse, time.Duration(0)},
		{"pop3.cache.max_bytes", *cfg.POP3.Cache.MaxBytes, upstream.Size(256 << 20)},
		{"backends.store.tls_min_version", cfg.Backends["store"].TLSMinVersion, "1.2"},
		{"routing.default (the only backend)", cfg.Routing.Default, "store"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if n, per := cfg.Limits.AuthFailureRate(); n != 10 || per != time.Minute {
		t.Errorf("AuthFailureRate() = %d/%v", n, per)
	}
}

func TestListenerTLSDefault(t *testing.T) {
	cfg := &Config{Listeners: []Listener{
		{Address: ":995"}, {Address: "[::1]:993"}, {Address: ":110"}, {Address: ":1995"}, {Address: ":143", TLS: "none"},
	}}
	cfg.ApplyDefaults()
	want := []string{"implicit", "implicit", "starttls", "starttls", "none"}
	for i, l := range cfg.Listeners {
		if l.TLS != want[i] {
			t.Errorf("listener %s: tls = %q, want %q", l.Address, l.TLS, want[i])
		}
	}
}

func TestUnknownKeyNamesItsLine(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "unknown-key.yaml"))
	ps := problemsOf(t, err)
	if len(ps) != 1 {
		t.Fatalf("problems:\n%v\nwant exactly one", err)
	}
	want := `log.fromat: unknown key (known: level, format); did you mean "format"? (line 3)`
	if got := ps[0].String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestDecodeProblems(t *testing.T) {
	const ok = "listeners: [{name: p, protocol: pop3, address: \"127.0.0.1:1110\", tls: none}]\nbackends: {store: {address: \"127.0.0.1:1143\"}}\n"
	tests := []struct {
		name string
		yaml string
		want []Problem
	}{
		{"unknown top-level key", ok + "lsiteners: []\n",
			[]Problem{{"lsiteners", `unknown key (known: log, tls, listeners, backends, routing, pop3, limits, timeouts, metrics, cluster); did you mean "listeners"?`, 3}}},
		{"unknown key in a list item", "listeners:\n  - name: p\n    protocol: pop3\n    adress: \":1110\"\n" + "backends: {store: {address: \"127.0.0.1:1143\"}}\n",
			[]Problem{{"listeners[0].tls", "starttls needs a certificate", 2}, {"listeners[0].adress", `did you mean "address"?`, 4}}},
		{"unknown key in a map entry", ok[:len(ok)-3] + ", tsl: none}}\n",
			[]Problem{{"backends.store.tsl", `did you mean "tls"?`, 2}}},
		{"unknown key in a leaf section", ok + "pop3:\n  cache: {max_byte: 1MiB}\n",
			[]Problem{{"pop3.cache.max_byte", `did you mean "max_bytes"?`, 4}}},
		{"bad size", ok + "pop3:\n  cache:\n    max_bytes: 256 MiBs\n",
			[]Problem{{"pop3.cache.max_bytes", `unknown unit`, 5}}},
		{"bad duration", ok + "timeouts:\n  pop3_idle: 10 minutes\n",
			[]Problem{{"timeouts.pop3_idle", `want a duration such as 90s, 10m or 1h, got "10 minutes"`, 4}}},
		{"duration without unit", ok + "timeouts: {backend_dial: 600}\n",
			[]Problem{{"timeouts.backend_dial", `want a duration such as 90s, 10m or 1h, got "600"`, 3}}},
		{"word for a number", ok + "limits: {connections: many}\n",
			[]Problem{{"limits.connections", `want a whole number, got "many"`, 3}}},
		{"mapping for a list", ok + "tls:\n  certificates: {cert: a, key: b}\n",
			[]Problem{{"tls.certificates", `want a list, got a mapping`, 4}}},
		{"not a bool", ok + "pop3: {mark_seen: maybe}\n",
			[]Problem{{"pop3.mark_seen", `want true or false, got "maybe"`, 3}}},
		{"duplicate key", ok + "log: {level: info}\nlog: {level: debug}\n",
			[]Problem{{"log", "given twice (first at line 3)", 4}}},
		{"syntax error", ok + "log: {level: info\n",
			[]Problem{{"", "YAML syntax:", 0}}},
		{"second document", ok + "---\nlog: {level: info}\n",
			[]Problem{{"", "a second YAML document", 3}}},
		{"not a mapping", "- a\n- b\n",
			[]Problem{{"", "must be a mapping of sections", 1}}},
		{"several at once, in file order", "log: {levl: info}\n" + ok + "timeouts: {pop3_idle: soon}\nmetrics: {adress: x}\n",
			[]Problem{{"log.levl", "", 1}, {"timeouts.pop3_idle", "", 4}, {"metrics.adress", "", 5}}},
		{"decode problem hides its validation echo", ok + "limits: {auth_failures_per_ip: [10, min]}\n",
			[]Problem{{"limits.auth_failures_per_ip", "want a single value, got a list", 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			ps := problemsOf(t, err)
			if len(ps) != len(tt.want) {
				t.Fatalf("problems:\n%v\nwant %d", err, len(tt.want))
			}
			for i, w := range tt.want {
				p := ps[i]
				if p.Path != w.Path || !strings.Contains(p.Message, w.Message) || (w.Line != 0 && p.Line != w.Line) {
					t.Errorf("problem %d = %q\nwant path %q, line %d, message containing %q", i, p, w.Path, w.Line, w.Message)
				}
			}
		})
	}
}

// TestThreeMistakes is the acceptance test of issue 2: a config with three
// mistakes reports all three, with their paths and lines.
func TestThreeMistakes(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "three-mistakes.yaml"))
	want := strings.Join([]string{
		`listeners[0].tls: "tsl" is not one of none, starttls, implicit (line 4)`,
		`listeners[1].tls: port 995 is POP3S; use tls: implicit (line 5)`,
		`routing.rules[0].backend: "stor" is not a backend (known: legacy, store) (line 12)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("Load(three-mistakes.yaml) error:\n%v\nwant:\n%s", err, want)
	}
}

// The keys that set both fronts (tls_handshake, preauth_bad_commands,
// auth_failure_delay) take one default; the fronts must agree on it, or a
// front built without gateway/config would behave differently.
func TestSharedFrontDefaultsAgree(t *testing.T) {
	if pop3.DefaultTLSHandshakeTimeout != imap.DefaultTLSHandshakeTimeout ||
		pop3.DefaultPreauthBadCommands != imap.DefaultBadCommandLimit ||
		pop3.DefaultAuthFailureDelay != imap.DefaultAuthFailureDelay {
		t.Fatalf("pop3 and imap defaults differ for a shared key: tls_handshake %v/%v, preauth_bad_commands %v/%v, auth_failure_delay %v/%v",
			pop3.DefaultTLSHandshakeTimeout, imap.DefaultTLSHandshakeTimeout,
			pop3.DefaultPreauthBadCommands, imap.DefaultBadCommandLimit,
			pop3.DefaultAuthFailureDelay, imap.DefaultAuthFailureDelay)
	}
}
