// Package routing decides, for a login name, which backend serves the user and
// under which name the backend knows them. It is a pure decision: it knows
// nothing of POP3 or IMAP and dials nothing. Backends are named by the keys of
// the configuration's `backends:` section; the caller resolves the name.
//
//	r, err := routing.New(cfg)
//	d, err := r.Route(ctx, routing.Login{User: "alice@example.org"})
//	// d.Backend == "store", d.User == "alice"
//
// Pools (a backend with several servers) are resolved with Pick, which hashes
// the user onto one server so that a user always lands on the same one.
package routing

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Config is the `routing:` section.
//
//	routing:
//	  default: legacy
//	  rules:
//	    - {domain: example.org, backend: store, rewrite_user: "{local}"}
//	    - {domain: "*.example.org", backend: store}
//	    - {user: boss@example.com, backend: store}
type Config struct {
	// Default is the backend for users no rule matches; empty means such users
	// are refused (ErrNoRoute).
	Default string `yaml:"default"`
	// Rules are tried as: every exact `user` rule first, then `domain` rules
	// (an exact domain before wildcards, a longer wildcard before a shorter
	// one), then Default. The order of the list does not matter.
	Rules []Rule `yaml:"rules"`
	// Lookup asks an external service speaking nginx's mail auth_http
	// protocol (issue 5). Its section is accepted so that configurations
	// written for it parse, but Validate reports it as not yet available:
	// silently routing without it would send users to the wrong backend.
	Lookup *LookupConfig `yaml:"lookup"`
}

// LookupConfig is `routing.lookup`.
//
//	lookup: {url: "http://127.0.0.1:9000/auth", cache: 60s}
type LookupConfig struct {
	URL string `yaml:"url"` // the auth_http endpoint
	// Cache keeps OK answers this long; 0 asks the service every time.
	Cache time.Duration `yaml:"cache"`
	// Timeout bounds one request to the service. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// SendPassword sends the client's password in Auth-Pass. Default false:
	// the service sees only the user name.
	SendPassword bool `yaml:"send_password"`
}

// Rule sends a user or a domain to a backend. Exactly one of User and Domain
// is set.
type Rule struct {
	// User matches one login name exactly (case-insensitively).
	User string `yaml:"user"`
	// Domain matches the part after the last @ (case-insensitively);
	// "*.example.org" matches every subdomain of example.org at any depth
	// (a.example.org, x.y.example.org) but not example.org itself.
	Domain string `yaml:"domain"`
	// Backend names an entry of `backends:`.
	Backend string `yaml:"backend"`
	// RewriteUser is the name to log in to the backend with: a template over
	// {user} (the whole login), {local} (before the last @) and {domain}
	// (after it, empty for a login without @). Empty means {user}. The
	// variables keep the case the client typed.
	RewriteUser string `yaml:"rewrite_user"`
}

// Validate checks the section against the names of the configured backends.
// Each message starts with the key it is about, relative to `routing:`, e.g.
// `rules[2].backend: "stor" is not a backend (known: legacy, store)`.
func (c *Config) Validate(backends []string) []error {
	known := slices.Clone(backends)
	slices.Sort(known)
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkBackend := func(key, name string) {
		switch {
		case name == "":
			bad(key, "required: the name of an entry of backends (known: %s)", strings.Join(known, ", "))
		case !slices.Contains(known, name):
			bad(key, "%q is not a backend (known: %s)", name, strings.Join(known, ", "))
		}
	}
	if c.Default != "" {
		checkBackend("default", c.Default)
	}
	if c.Default == "" && len(c.Rules) == 0 {
		bad("default", "required when there are no rules: every login would be refused")
	}
	if l := c.Lookup; l != nil {
		if u, err := url.Parse(l.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("lookup.url", "%q is not an http:// or https:// URL", l.URL)
		}
		if l.Cache < 0 {
			bad("lookup.cache", "%v: must not be negative", l.Cache)
		}
		if l.Timeout < 0 {
			bad("lookup.timeout", "%v: must not be negative", l.Timeout)
		}
		bad("lookup", "the auth_http lookup is not available in this version; route with default and rules")
	}
	seen := map[string]int{} // "user:x" or "domain:y" -> index of the first rule
	for i, r := range c.Rules {
		key := fmt.Sprintf("rules[%d]", i)
		switch {
		case r.User == "" && r.Domain == "":
			bad(key, "set user or domain")
		case r.User != "" && r.Domain != "":
			bad(key, "set user or domain, not both (make two rules)")
		case r.User != "":
			if strings.ContainsAny(r.User, " \t\r\n") {
				bad(key+".user", "%q contains white space", r.User)
			}
			if j, dup := seen["user:"+strings.ToLower(r.User)]; dup {
				bad(key+".user", "%q is already routed by rules[%d]", r.User, j)
			} else {
				seen["user:"+strings.ToLower(r.User)] = i
			}
		default:
			if err := checkDomain(r.Domain); err != nil {
				bad(key+".domain", "%v", err)
			} else if j, dup := seen["domain:"+strings.ToLower(r.Domain)]; dup {
				bad(key+".domain", "%q is already routed by rules[%d]", r.Domain, j)
			} else {
				seen["domain:"+strings.ToLower(r.Domain)] = i
			}
		}
		checkBackend(key+".backend", r.Backend)
		if err := checkTemplate(r.RewriteUser); err != nil {
			bad(key+".rewrite_user", "%v", err)
		}
	}
	return errs
}

// checkDomain accepts "example.org" and "*.example.org".
func checkDomain(d string) error {
	name := strings.TrimPrefix(d, "*.")
	switch {
	case strings.Contains(name, "*"):
		return fmt.Errorf("%q: a wildcard is only allowed as a leading \"*.\", as in *.example.org", d)
	case strings.Contains(name, "@"):
		return fmt.Errorf("%q: give the part after the @ only, or use user: for one address", d)
	case name == "" || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, ".."):
		return fmt.Errorf("%q is not a domain name", d)
	case strings.ContainsAny(name, " \t\r\n/:"):
		return fmt.Errorf("%q is not a domain name", d)
	}
	return nil
}

// Template variables of rewrite_user.
var templateVars = []string{"{user}", "{local}", "{domain}"}

// checkTemplate accepts text with {user}, {local} and {domain}; any other
// brace is an error, so that a typo such as {usr} fails at startup rather
// than sending a literal "{usr}" to the backend.
func checkTemplate(t string) error {
	for rest := t; rest != ""; {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			break
		}
		if rest[i] == '}' {
			return fmt.Errorf("%q has a } without {", t)
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return fmt.Errorf("%q has a { without }", t)
		}
		v := rest[i : i+j+1]
		if !slices.Contains(templateVars, v) {
			return fmt.Errorf("%q: unknown variable %s (known: {user}, {local}, {domain})", t, v)
		}
		rest = rest[i+j+1:]
	}
	if strings.ContainsAny(t, " \t\r\n") {
		return fmt.Errorf("%q contains white space", t)
	}
	return nil
}
