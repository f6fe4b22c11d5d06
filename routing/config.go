// Package routing decides, for a login name, which backend serves the user and
// under which name the backend knows them. It knows nothing of POP3 or IMAP
// and dials nothing itself; it returns a Decision that the gateway resolves.
// Backends are named by the keys of the configuration's `backends:` section.
//
//	r, err := routing.New(cfg)
//	defer r.Close()
//	d, err := r.Route(ctx, routing.Login{User: "alice@example.org", Protocol: "pop3"})
//	// d.Backend == "store", d.User == "alice"
//
// Sources, in order: exact `user` rules, `domain` rules (exact, then
// wildcards), then the external lookup when `lookup:` is configured (a
// service speaking nginx's mail auth_http protocol, lookup.go), else
// `default`. A Router is immutable: a reload builds a new one.
//
// Pools (a backend with several servers) are resolved with Pick, which hashes
// the user onto one server so that a user always lands on the same one, or
// with Health.Pick, which also skips servers that recently refused
// connections (health.go).
package routing

import (
	"fmt"
	"net/http"
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
//	  lookup: {url: "http://127.0.0.1:9000/auth", cache: 60s}
//	  pool_cooldown: 30s
type Config struct {
	// Default is the backend for users no rule matches when there is no
	// Lookup; empty means such users are refused (ErrNoRoute). With a
	// Lookup, users no rule matches go to the lookup instead, and Default
	// only names the backend whose TLS settings apply to the servers the
	// lookup service names (unless lookup.backend says otherwise).
	Default string `yaml:"default"`
	// Rules are tried as: every exact `user` rule first, then `domain` rules
	// (an exact domain before wildcards, a longer wildcard before a shorter
	// one), then Lookup, then Default. The order of the list does not matter.
	Rules []Rule `yaml:"rules"`
	// Lookup asks an external service speaking nginx's mail auth_http
	// protocol for every user that no rule matches. Nil: no lookup.
	Lookup *LookupConfig `yaml:"lookup"`
	// PoolCooldown is how long a server of a pool (a backend with
	// `addresses:`) that refused a connection is skipped: its users go to
	// their next choice by rendezvous order meanwhile, then it is tried
	// again. 0 means DefaultPoolCooldown (30s). It is under routing: because
	// it changes which server a user is routed to, for every pool at once.
	PoolCooldown time.Duration `yaml:"pool_cooldown"`
}

// LookupConfig is `routing.lookup`: an external routing (and optionally
// authentication) service speaking nginx's mail auth_http protocol, so a
// service written for nginx's mail proxy works unchanged. See lookup.go for
// the exact request and answer.
//
//	lookup:
//	  url: "http://127.0.0.1:9000/auth"
//	  cache: 60s
//	  timeout: 5s
//	  send_password: true
//	  backend: store
//	  headers: {X-Auth-Key: "secret"}
type LookupConfig struct {
	// URL is the auth_http endpoint, http:// or https://. Credentials in it
	// (http://user:pass@host/) are sent as HTTP basic authentication.
	URL string `yaml:"url"`
	// Cache keeps OK answers this long, keyed by login name, protocol and,
	// when SendPassword is on, a salted hash of the password (never the
	// password itself). 0 asks the service for every login. Rejections are
	// never cached.
	Cache time.Duration `yaml:"cache"`
	// Timeout bounds one request to the service, from dialing to the end of
	// the answer's headers. 0 means DefaultLookupTimeout (5s; nginx's
	// auth_http_timeout defaults to 60s, far longer than a mail client
	// waits). A service that does not answer in time gives the client a
	// temporary error ([SYS/TEMP] / UNAVAILABLE).
	Timeout time.Duration `yaml:"timeout"`
	// SendPassword sends the client's password in Auth-Pass, as nginx always
	// does; turn it on when the service authenticates users. Default false:
	// Auth-Pass is left out and the service sees only the user name (the
	// backend still checks the password). nginx-written services that read
	// Auth-Pass need `send_password: true`.
	SendPassword bool `yaml:"send_password"`
	// Backend names the entry of `backends:` whose settings (TLS mode, CA,
	// server_name, ...) apply when dialing the server the service names in
	// Auth-Server/Auth-Port, and whose own servers are used when the answer
	// names none. Empty means Default.
	Backend string `yaml:"backend"`
	// Headers are sent with every request, like nginx's auth_http_header:
	// typically a shared secret proving the request comes from the gateway.
	// The Auth-*, Client-* and Host headers are the protocol's and cannot be
	// set here.
	Headers map[string]string `yaml:"headers"`
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
	// "(known: a, b)", or, with no backends at all, what to do instead of
	// an empty list.
	knownList := "(known: " + strings.Join(known, ", ") + ")"
	if len(known) == 0 {
		knownList = "(no backends are configured: add one under backends:)"
	}
	checkBackend := func(key, name string) {
		switch {
		case name == "":
			bad(key, "required: the name of an entry of backends %s", knownList)
		case !slices.Contains(known, name):
			bad(key, "%q is not a backend %s", name, knownList)
		}
	}
	if c.Default != "" {
		checkBackend("default", c.Default)
	}
	if c.Default == "" && len(c.Rules) == 0 && c.Lookup == nil {
		bad("default", "required when there are no rules: every login would be refused")
	}
	if c.PoolCooldown < 0 {
		bad("pool_cooldown", "%v: must not be negative (0 means the default, %v)", c.PoolCooldown, DefaultPoolCooldown)
	}
	if l := c.Lookup; l != nil {
		if u, err := url.Parse(l.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The URL may carry credentials: never echo it whole.
			bad("lookup.url", "%q is not an http:// or https:// URL", redactURL(l.URL))
		}
		if l.Cache < 0 {
			bad("lookup.cache", "%v: must not be negative", l.Cache)
		}
		if l.Timeout < 0 {
			bad("lookup.timeout", "%v: must not be negative", l.Timeout)
		}
		switch {
		case l.Backend != "":
			checkBackend("lookup.backend", l.Backend)
		case c.Default == "":
			bad("lookup.backend", "required when routing.default is empty: it names the backend whose TLS settings apply to the servers the lookup service names")
		}
		names := make([]string, 0, len(l.Headers))
		for name := range l.Headers {
			names = append(names, name)
		}
		slices.Sort(names) // one order for the messages
		for _, name := range names {
			if err := checkLookupHeader(name, l.Headers[name]); err != nil {
				bad("lookup.headers."+name, "%v", err)
			}
		}
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

// checkLookupHeader accepts an extra header of the lookup request.
func checkLookupHeader(name, value string) error {
	canon := http.CanonicalHeaderKey(name)
	switch {
	case name == "" || strings.IndexFunc(name, func(r rune) bool { return !isTokenChar(r) }) >= 0:
		return fmt.Errorf("%q is not a valid header name", name)
	case canon == "Host" || strings.HasPrefix(canon, "Auth-") || strings.HasPrefix(canon, "Client-"):
		return fmt.Errorf("%s is set by the auth_http protocol itself", name)
	case strings.ContainsFunc(value, func(r rune) bool { return (r < ' ' && r != '\t') || r == 0x7f }):
		return fmt.Errorf("the value contains a control character")
	}
	return nil
}

// isTokenChar reports whether r may appear in an HTTP header name (RFC 9110
// §5.6.2 tchar).
func isTokenChar(r rune) bool {
	return r < 0x7f && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		strings.ContainsRune("!#$%&'*+-.^_`|~", r))
}

// redactURL hides the password of a URL that has one, for messages.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	if strings.Contains(s, "@") {
		return "(an unparsable URL with credentials)"
	}
	return s
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
