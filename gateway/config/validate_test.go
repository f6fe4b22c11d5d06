package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mailgate/test/testca"
)

// doc builds a configuration: listeners and backends fall back to a valid
// cleartext setup when empty; extra adds sections.
func doc(listeners, backends, extra string) string {
	if listeners == "" {
		listeners = `[{name: p, protocol: pop3, address: "127.0.0.1:1110", tls: none}]`
	}
	if backends == "" {
		backends = `{store: {address: "127.0.0.1:1143"}}`
	}
	return fmt.Sprintf("listeners: %s\nbackends: %s\n%s", listeners, backends, extra)
}

func TestValidateProblems(t *testing.T) {
	dir := t.TempDir()
	ca := testca.NewT(t)
	certA, keyA := ca.WriteLeafT(t, dir, "a", "mail.example.com")
	_, keyB := ca.WriteLeafT(t, dir, "b", "other.example.com")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	certs := fmt.Sprintf("tls: {certificates: [{cert: %s, key: %s}]}\n", certA, keyA)
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		yaml string
		want []string // "path: message substring", in order
	}{
		{"valid cleartext", doc("", "", ""), nil},
		{"valid TLS listeners", doc(`[{name: a, protocol: pop3, address: ":995"}, {name: b, protocol: imap, address: ":143"}]`, "", certs), nil},
		{"log", doc("", "", "log: {level: verbose, format: text}\n"),
			[]string{`log.level: "verbose" is not one of debug, info, warn, error`, `log.format: "text" is not one of json, console`}},
		{"no listeners", doc("[]", "", ""), []string{"listeners: required"}},
		{"listener basics", doc(`[{protocol: smtp, address: "localhost", tls: none}, {name: x, protocol: pop3, address: ":1110", tls: none}, {name: x, protocol: pop3, address: ":1110", tls: none}]`, "", ""),
			[]string{"listeners[0].name: required", `listeners[0].protocol: "smtp" is not one of pop3, imap`, `listeners[0].address: "localhost" is not host:port`,
				`listeners[2].name: "x" is already the name of listeners[1]`, `listeners[2].address: ":1110" is already the address of listeners[1]`}},
		{"bad tls mode", doc(`[{name: a, protocol: pop3, address: ":1110", tls: tsl}]`, "", ""),
			[]string{`listeners[0].tls: "tsl" is not one of none, starttls, implicit`}},
		{"well-known port hints", doc(`[{name: a, protocol: pop3, address: ":995", tls: starttls}, {name: b, protocol: imap, address: ":993", tls: none}, {name: c, protocol: pop3, address: ":110", tls: implicit}, {name: d, protocol: pop3, address: "127.0.0.1:993", tls: implicit}]`, "", certs),
			[]string{"listeners[0].tls: port 995 is POP3S; use tls: implicit", "listeners[1].tls: port 993 is IMAPS; use tls: implicit",
				"listeners[2].tls: port 110 is POP3; use tls: starttls", "listeners[3].protocol: port 993 is IMAPS; clients connecting there expect imap"}},
		{"TLS listener without a certificate", doc(`[{name: a, protocol: imap, address: ":1993", tls: implicit}]`, "", ""),
			[]string{"listeners[0].tls: implicit needs a certificate: set tls.certificates or tls.acme"}},
		{"proxy_protocol", doc(`[{name: a, protocol: pop3, address: ":1110", tls: none, proxy_protocol: [10.0.0.0/8, 192.0.2.7, "::1", 10.0.0.0/33, haproxy]}]`, "", ""),
			[]string{`listeners[0].proxy_protocol[3]: "10.0.0.0/33" is not a network`, `listeners[0].proxy_protocol[4]: "haproxy" is not a network`}},
		{"no backends", doc("", "{}", ""), []string{"backends: required", "routing.default: required when there are no rules"}},
		{"backend problems, prefixed", doc("", `{"bad name": {address: ":143"}, empty: , store: {address: "x", tls: tsl, ca: `+missing+`}}`, "routing: {default: store}\n"),
			[]string{`backends.bad name: name "bad name"`, "backends.empty: empty", `backends.store.address: "x" is not host:port`,
				`backends.store.tls: "tsl" is not one of none, starttls, implicit`, "backends.store.ca: open " + missing}},
		{"routing, prefixed", doc("", `{legacy: {address: ":143"}, store: {address: ":144"}}`, "routing:\n  default: stor\n  rules:\n    - {domain: a.org, user: b@a.org, backend: store}\n    - {user: c, backend: store, rewrite_user: \"{usr}\"}\n"),
			[]string{`routing.default: "stor" is not a backend (known: legacy, store)`, "routing.rules[0]: set user or domain, not both", "routing.rules[1].rewrite_user: \"{usr}\": unknown variable"}},
		{"pop3, prefixed", doc("", "", "pop3: {delete: shred, uidl_format: \"%v\"}\n"),
			[]string{`pop3.uidl_format: "%v" has no %u`, `pop3.delete: "shred" is not one of expunge, flag, move:MAILBOX`}},
		{"pop3.uidl_map", doc("", "", "pop3: {uidl_map: {store: uidl.db, max_messages: -1}}\n"),
			[]string{`pop3.uidl_map.store: "uidl.db" must be an absolute path (or redis)`, "pop3.uidl_map.max_messages: -1 must not be negative"}},
		{"pop3.uidl_map without store", doc("", "", "pop3: {uidl_map: {max_messages: 10}}\n"),
			[]string{"pop3.uidl_map.store: required: a file for the embedded store (/var/lib/mailgate/uidl.db) or redis"}},
		{"pop3.uidl_map redis without a cluster", doc("", "", "pop3: {uidl_map: {store: redis}}\n"),
			[]string{"pop3.uidl_map.store: redis keeps the UIDL maps in the cluster's Redis: add a cluster: section (cluster.redis), or name a file for the embedded store, e.g. /var/lib/mailgate/uidl.db"}},
		{"pop3.uidl_map valid", doc("", "", "pop3: {uidl_map: {store: /var/lib/mailgate/uidl.db}}\n"), nil},
		{"pop3.lock", doc("", "", "pop3: {lock: shared, takeover_after: -1s}\n"),
			[]string{`pop3.lock: "shared" is not one of exclusive, takeover, none`, `pop3.takeover_after: -1s must not be negative`}},
		{"pop3.reuse", doc("", "", "pop3: {reuse: -30s}\n"), []string{`pop3.reuse: -30s must not be negative (0 turns reuse off)`}},
		{"tls min_version", doc("", "", "tls: {min_version: \"1.1\"}\n"), []string{`tls.min_version: "1.1" is not one of 1.2, 1.3`}},
		{"certificate files", doc("", "", fmt.Sprintf("tls:\n  certificates:\n    - {cert: %s, key: %s}\n    - {cert: %s, key: %s}\n    - {cert: %s, key: %s}\n    - {cert: %s}\n", missing, keyA, certA, keyB, notPEM, notPEM, certA)),
			[]string{"tls.certificates[0].cert: open " + missing, "tls.certificates[1]: " + certA + " and " + keyB + " do not load",
				"tls.certificates[2]: " + notPEM + " and " + notPEM + " do not load", "tls.certificates[3].key: required"}},
		{"acme", doc("", "", fmt.Sprintf("tls:\n  acme: {ca: \"letsencrypt\", storage: %s, ca_root: %s, challenges: {http: \"80\"}}\n", notPEM, notPEM)),
			[]string{"tls.acme.domains: required", "tls.acme.email: required", `tls.acme.ca: "letsencrypt" is not the URL`,
				"tls.acme.ca_root: " + notPEM + " holds no PEM certificate", "tls.acme.storage: " + notPEM + " is not a directory", `tls.acme.challenges.http: "80" is not host:port`}},
		{"acme valid", doc(`[{name: a, protocol: pop3, address: ":995"}]`, "", fmt.Sprintf("tls:\n  acme: {domains: [mail.example.com], email: pm@example.com, storage: %s}\n", filepath.Join(dir, "acme", "sub"))), nil},
		{"timeouts", doc("", "", "timeouts: {pop3_idle: 5m, imap_preauth: -1s, shutdown: -30s}\n"),
			[]string{"timeouts.pop3_idle: 5m0s is too short: RFC 1939 §3 requires at least 10m", "timeouts.imap_preauth: -1s: must be positive", "timeouts.shutdown: -30s: must be positive"}},
		{"limits", doc("", "", "limits: {connections: 10, per_ip: 20, bad_commands: -1, auth_failures_per_ip: 10/day}\n"),
			[]string{"limits.bad_commands: -1: must be positive", "limits.per_ip: 20 is more than limits.connections (10)", `limits.auth_failures_per_ip: "10/day": the period after / is one of s, min, h`}},
		{"limits ipv6_prefix", doc("", "", "limits: {ipv6_prefix: 129}\n"), []string{"limits.ipv6_prefix: 129: a prefix length from 1 to 128"}},
		{"limits rate", doc("", "", "limits: {auth_failures_per_ip: ten}\n"), []string{`limits.auth_failures_per_ip: "ten" is not a rate such as 10/min`}},
		{"metrics", doc("", "", "metrics: {address: localhost}\n"), []string{`metrics.address: "localhost" is not host:port`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Parse:\n%v", err)
				}
				return
			}
			ps := problemsOf(t, err)
			if len(ps) != len(tt.want) {
				t.Fatalf("problems:\n%v\nwant %d:\n%s", err, len(tt.want), strings.Join(tt.want, "\n"))
			}
			for i, w := range tt.want {
				path, msg, _ := strings.Cut(w, ": ")
				if ps[i].Path != path || !strings.Contains(ps[i].Message, msg) {
					t.Errorf("problem %d = %q\nwant      %q", i, ps[i], w)
				}
			}
		})
	}
}

func TestProxyPrefixesParsed(t *testing.T) {
	cfg, err := Parse([]byte(doc(`[{name: a, protocol: pop3, address: ":1110", tls: none, proxy_protocol: [10.1.2.3/8, 192.0.2.7, "::ffff:192.0.2.8", "2001:db8::/32"]}]`, "", "")))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("192.0.2.8/32"), netip.MustParsePrefix("2001:db8::/32"),
	}
	if got := cfg.Listeners[0].ProxyPrefixes(); !slices.Equal(got, want) {
		t.Errorf("ProxyPrefixes() = %v, want %v", got, want)
	}
}

// TestValidateWithoutParse: a Config built in code validates the same way,
// without lines.
func TestValidateWithoutParse(t *testing.T) {
	cfg := &Config{Listeners: []Listener{{Name: "a", Protocol: "pop3", Address: ":995", TLS: "none"}}}
	cfg.ApplyDefaults()
	err := cfg.Validate()
	want := "listeners[0].tls: port 995 is POP3S; use tls: implicit\nbackends: required: at least one backend IMAP server, e.g. store: {address: \"imap.internal:993\"}\nrouting.default: required when there are no rules: every login would be refused"
	if err == nil || err.Error() != want {
		t.Errorf("Validate() =\n%v\nwant\n%s", err, want)
	}
}

func TestProblemString(t *testing.T) {
	for _, tt := range []struct {
		p    Problem
		want string
	}{
		{Problem{"listeners[1].tls", `"tsl" is not one of none, starttls, implicit`, 7}, `listeners[1].tls: "tsl" is not one of none, starttls, implicit (line 7)`},
		{Problem{"listeners", "required", 0}, "listeners: required"},
		{Problem{"", "YAML syntax: did not find expected key", 3}, "YAML syntax: did not find expected key (line 3)"},
	} {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestRates(t *testing.T) {
	for in, want := range map[string]string{"10/min": "10/1m0s", "1/s": "1/1s", "100/h": "100/1h0m0s", " 5 / min ": "5/1m0s"} {
		n, per, err := parseRate(in)
		if err != nil || fmt.Sprintf("%d/%v", n, per) != want {
			t.Errorf("parseRate(%q) = %d, %v, %v; want %s", in, n, per, err, want)
		}
	}
	for _, in := range []string{"", "10", "0/min", "-1/s", "x/min", "10/fortnight"} {
		if _, _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) accepted", in)
		}
	}
}

func TestEmptyFile(t *testing.T) {
	for _, in := range []string{"", "# only a comment\n", "~\n"} {
		_, err := Parse([]byte(in))
		ps := problemsOf(t, err)
		if len(ps) == 0 || ps[0].Path != "listeners" {
			t.Errorf("Parse(%q) = %v; want listeners: required first", in, err)
		}
	}
}

// The cluster: section is validated with the rest, its problems under
// their full paths; tls.acme.storage: redis and pop3.uidl_map.store: redis
// need it.
func TestClusterSection(t *testing.T) {
	acme := "tls: {acme: {domains: [mail.example.com], email: postmaster@example.com, storage: redis, challenges: {http: \":80\"}}}\n"
	for _, tc := range []struct {
		name, extra string
		want        []string // problem paths; none: valid
	}{
		{"valid", "cluster: {redis: {addresses: [\"redis:6379\"]}, instance: gw1}\n", nil},
		{"problems with paths", "cluster: {redis: {addresses: [redis], tls: maybe}, lock_lease: 10ms, instance: gw1}\n",
			[]string{"cluster.lock_lease", "cluster.redis.addresses[0]", "cluster.redis.tls"}},
		{"unknown key", "cluster: {redis: {address: \"redis:6379\"}}\n", []string{"cluster.redis.address"}},
		{"acme storage redis without cluster", acme, []string{"tls.acme.storage"}},
		{"acme storage redis with cluster", acme + "cluster: {redis: {addresses: [\"redis:6379\"]}, instance: gw1}\n", nil},
		{"uidl_map store redis with cluster", "pop3: {uidl_map: {store: redis}}\ncluster: {redis: {addresses: [\"redis:6379\"]}, instance: gw1}\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(doc("", "", tc.extra)))
			var got []string
			if err != nil {
				for _, p := range err.(Problems) {
					got = append(got, p.Path)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("problems %v, want paths %v\n%v", got, tc.want, err)
			}
		})
	}
}
