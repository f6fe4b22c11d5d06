package routing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestRoute(t *testing.T) {
	cfg := Config{
		Default: "legacy",
		Rules: []Rule{
			{Domain: "*.example.org", Backend: "wild"},
			{Domain: "*.deep.example.org", Backend: "deepwild"},
			{Domain: "example.org", Backend: "store", RewriteUser: "{local}"},
			{Domain: "sub.example.org", Backend: "exactsub"},
			{User: "Boss@Example.org", Backend: "vip", RewriteUser: "vip-{local}@{domain}"},
			{Domain: "example.net", Backend: "store", RewriteUser: "{domain}/{local}"},
			{User: "root", Backend: "admin"},
		},
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, user          string
		wantBackend, wantAs string
	}{
		{"user rule beats domain rule", "boss@example.org", "vip", "vip-boss@example.org"},
		{"user rule ignores case, rewrite keeps the client's case", "BOSS@example.ORG", "vip", "vip-BOSS@example.ORG"},
		{"exact domain with {local}", "alice@example.org", "store", "alice"},
		{"domain ignores case, rewrite keeps case", "Alice@EXAMPLE.org", "store", "Alice"},
		{"exact domain beats wildcard", "bob@sub.example.org", "exactsub", "bob@sub.example.org"},
		{"wildcard one level", "bob@a.example.org", "wild", "bob@a.example.org"},
		{"wildcard two levels", "bob@x.y.example.org", "wild", "bob@x.y.example.org"},
		{"longer wildcard beats shorter", "bob@a.deep.example.org", "deepwild", "bob@a.deep.example.org"},
		{"wildcard does not match its own base", "bob@deep.example.org", "wild", "bob@deep.example.org"},
		{"not a suffix match on a label", "bob@badexample.org", "legacy", "bob@badexample.org"},
		{"{domain} and {local}", "carol@example.net", "store", "example.net/carol"},
		{"last @ splits", `"a@b"@example.org`, "store", `"a@b"`},
		{"default", "dave@elsewhere.com", "legacy", "dave@elsewhere.com"},
		{"login without @: user rule", "ROOT", "admin", "ROOT"},
		{"login without @: no domain rule, default", "example.org", "legacy", "example.org"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := r.Route(context.Background(), Login{User: tt.user, Protocol: "pop3"})
			if err != nil {
				t.Fatalf("Route(%q): %v", tt.user, err)
			}
			if d.Backend != tt.wantBackend || d.User != tt.wantAs {
				t.Errorf("Route(%q) = %+v, want backend %q user %q", tt.user, d, tt.wantBackend, tt.wantAs)
			}
			if d.Address != "" || d.Password != "" {
				t.Errorf("Route(%q) = %+v: a rule sets neither Address nor Password", tt.user, d)
			}
		})
	}
	for user, want := range map[string]string{"boss@example.org": SourceUser, "root": SourceUser,
		"alice@example.org": SourceDomain, "bob@a.example.org": SourceDomain, "dave@elsewhere.com": SourceDefault} {
		if d, _ := r.Route(context.Background(), Login{User: user}); d.Source != want {
			t.Errorf("Route(%q).Source = %q, want %q", user, d.Source, want)
		}
	}
}

func TestRouteNoDefault(t *testing.T) {
	r, err := New(Config{Rules: []Rule{
		{Domain: "example.org", Backend: "store"},
		{Domain: "example.com", Backend: "store", RewriteUser: "{domain}"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"x@example.net", "plain", "", "x@sub.example.org"} {
		if d, err := r.Route(context.Background(), Login{User: user}); !errors.Is(err, ErrNoRoute) {
			t.Errorf("Route(%q) = %+v, %v; want ErrNoRoute", user, d, err)
		}
	}
	if d, err := r.Route(context.Background(), Login{User: "x@example.org"}); err != nil || d.Backend != "store" {
		t.Errorf("Route(x@example.org) = %+v, %v", d, err)
	}
}

func TestValidate(t *testing.T) {
	backends := []string{"store", "legacy"}
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings, one per expected error, in order
	}{
		{"ok", Config{Default: "legacy", Rules: []Rule{{Domain: "*.a.org", Backend: "store", RewriteUser: "x-{local}"}}}, nil},
		{"ok without default", Config{Rules: []Rule{{User: "a", Backend: "store"}}}, nil},
		{"empty", Config{}, []string{"default: required when there are no rules"}},
		{"unknown default", Config{Default: "stor"}, []string{`default: "stor" is not a backend (known: legacy, store)`}},
		{"unknown rule backend", Config{Default: "store", Rules: []Rule{
			{User: "a", Backend: "store"}, {User: "b", Backend: "store"}, {Domain: "c.org", Backend: "stor"}}},
			[]string{`rules[2].backend: "stor" is not a backend (known: legacy, store)`}},
		{"missing backend", Config{Rules: []Rule{{User: "a"}}}, []string{"rules[0].backend: required"}},
		{"neither", Config{Rules: []Rule{{Backend: "store"}}}, []string{"rules[0]: set user or domain"}},
		{"both", Config{Rules: []Rule{{User: "a", Domain: "b.org", Backend: "store"}}}, []string{"rules[0]: set user or domain, not both"}},
		{"bad wildcard", Config{Rules: []Rule{{Domain: "a.*.org", Backend: "store"}}}, []string{"rules[0].domain: \"a.*.org\": a wildcard is only allowed"}},
		{"address as domain", Config{Rules: []Rule{{Domain: "a@b.org", Backend: "store"}}}, []string{"rules[0].domain: \"a@b.org\": give the part after the @"}},
		{"bare star", Config{Rules: []Rule{{Domain: "*.", Backend: "store"}}}, []string{"rules[0].domain: \"*.\" is not a domain name"}},
		{"duplicate user ignoring case", Config{Rules: []Rule{{User: "A@b.org", Backend: "store"}, {User: "a@B.org", Backend: "legacy"}}},
			[]string{`rules[1].user: "a@B.org" is already routed by rules[0]`}},
		{"duplicate domain", Config{Rules: []Rule{{Domain: "b.org", Backend: "store"}, {Domain: "B.org", Backend: "legacy"}}},
			[]string{`rules[1].domain: "B.org" is already routed by rules[0]`}},
		{"unknown template variable", Config{Rules: []Rule{{User: "a", Backend: "store", RewriteUser: "{usr}"}}},
			[]string{"rules[0].rewrite_user: \"{usr}\": unknown variable {usr}"}},
		{"unclosed template", Config{Rules: []Rule{{User: "a", Backend: "store", RewriteUser: "{local"}}},
			[]string{"rules[0].rewrite_user: \"{local\" has a { without }"}},
		{"stray close", Config{Rules: []Rule{{User: "a", Backend: "store", RewriteUser: "local}"}}},
			[]string{"rules[0].rewrite_user: \"local}\" has a } without {"}},
		{"several at once", Config{Default: "nope", Rules: []Rule{{User: "a", Backend: "x", RewriteUser: "{x}"}}},
			[]string{`default: "nope"`, `rules[0].backend: "x"`, `rules[0].rewrite_user`}},
		{"lookup with default", Config{Default: "legacy", Lookup: &LookupConfig{URL: "http://127.0.0.1:9000/auth", Cache: time.Minute}}, nil},
		{"lookup alone with its backend", Config{Lookup: &LookupConfig{URL: "https://auth.example/x", Backend: "store",
			Headers: map[string]string{"X-Auth-Key": "secret"}}}, nil},
		{"lookup without default or backend", Config{Lookup: &LookupConfig{URL: "http://127.0.0.1:9000/auth"}},
			[]string{"lookup.backend: required when routing.default is empty"}},
		{"lookup unknown backend", Config{Default: "legacy", Lookup: &LookupConfig{URL: "http://a/", Backend: "stor"}},
			[]string{`lookup.backend: "stor" is not a backend (known: legacy, store)`}},
		{"lookup bad url, password not echoed", Config{Default: "legacy", Lookup: &LookupConfig{URL: "ftp://u:topsecret@a/"}},
			[]string{`lookup.url: "ftp://u:xxxxx@a/" is not an http:// or https:// URL`}},
		{"lookup relative url", Config{Default: "legacy", Lookup: &LookupConfig{URL: "/auth"}},
			[]string{`lookup.url: "/auth" is not an http://`}},
		{"lookup negative durations", Config{Default: "legacy", Lookup: &LookupConfig{URL: "http://a/", Cache: -1, Timeout: -time.Second}},
			[]string{"lookup.cache: -1ns: must not be negative", "lookup.timeout: -1s: must not be negative"}},
		{"lookup headers", Config{Default: "legacy", Lookup: &LookupConfig{URL: "http://a/", Headers: map[string]string{
			"Auth-Pass": "x", "Bad Name": "x", "Client-IP": "x", "X-Ok": "line\r\nInjected: 1", "host": "x"}}},
			[]string{"lookup.headers.Auth-Pass: Auth-Pass is set by the auth_http protocol",
				`lookup.headers.Bad Name: "Bad Name" is not a valid header name`,
				"lookup.headers.Client-IP: Client-IP is set by the auth_http protocol",
				"lookup.headers.X-Ok: the value contains a control character",
				"lookup.headers.host: host is set by the auth_http protocol"}},
		{"negative pool cool-down", Config{Default: "legacy", PoolCooldown: -time.Second},
			[]string{"pool_cooldown: -1s: must not be negative (0 means the default, 30s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := tt.cfg.Validate(backends)
			if len(errs) != len(tt.want) {
				t.Fatalf("Validate() = %v, want %d errors %q", errs, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %q, want it to contain %q", i, errs[i], w)
				}
			}
		})
	}
}

func TestNewRejectsBadRules(t *testing.T) {
	_, err := New(Config{Rules: []Rule{{Domain: "a.*.org", Backend: "x"}, {User: "u", Backend: "x", RewriteUser: "{bad}"}}})
	if err == nil {
		t.Fatal("New accepted invalid rules")
	}
	for _, w := range []string{"rules[0].domain", "rules[1].rewrite_user"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("New error %q lacks %q", err, w)
		}
	}
}

func TestRouteEmptyRewrite(t *testing.T) {
	r, err := New(Config{Default: "store", Rules: []Rule{{User: "solo", Backend: "store", RewriteUser: "{domain}"}}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := r.Route(context.Background(), Login{User: "solo"}); !errors.Is(err, ErrNoRoute) {
		t.Errorf("Route(solo) = %+v, %v; want ErrNoRoute for an empty rewritten name", d, err)
	}
}

func BenchmarkRoute(b *testing.B) {
	cfg := Config{Default: "legacy"}
	for i := range 1000 {
		cfg.Rules = append(cfg.Rules, Rule{Domain: fmt.Sprintf("*.d%d.example", i), Backend: "store"})
	}
	r, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		if _, err := r.Route(ctx, Login{User: "alice@x.d999.example"}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestValidateWithoutBackends: with no backends configured the message says
// so, instead of "(known: )".
func TestValidateWithoutBackends(t *testing.T) {
	errs := (&Config{Default: "store"}).Validate(nil)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `default: "store" is not a backend (no backends are configured: add one under backends:)`) {
		t.Errorf("Validate without backends: %v", errs)
	}
	for _, err := range errs {
		if strings.Contains(err.Error(), "known: )") {
			t.Errorf("empty list of known backends: %v", err)
		}
	}
}
