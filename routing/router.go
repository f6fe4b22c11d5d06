package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ErrNoRoute is returned by Route when no rule matches the login and there is
// neither a lookup nor a default backend. The fronts answer it like a failed
// login ([AUTH] / AUTHENTICATIONFAILED): telling the client that the user does
// not exist here would let anyone probe for accounts.
var ErrNoRoute = errors.New("no backend for this user")

// Login is what a front knows about an authentication attempt when it asks
// for a route. Rules look only at User; the other fields are for the lookup
// service (the auth_http request headers named below).
type Login struct {
	User     string     // login name as the client sent it (Auth-User)
	Password string     // never logged; sent as Auth-Pass only with lookup.send_password
	Protocol string     // "pop3" or "imap" (Auth-Protocol)
	ClientIP netip.Addr // the client's address after PROXY protocol (Client-IP); zero when unknown
	// Attempt counts the authentication attempts of this connection,
	// starting at 1 (Auth-Login-Attempt); 0 is sent as 1. nginx's services
	// use it to stop answering with Auth-Wait after 10-20 attempts.
	Attempt int
}

// Decision is where a login goes. Sessions keep their Decision: a reload
// never moves a session in flight.
type Decision struct {
	Backend string // name of an entry of `backends:`: its TLS settings apply
	// Address, when set, is the server to dial ("ip:port", from the lookup
	// service's Auth-Server and Auth-Port), instead of the backend's own
	// address or pool. Empty: dial the backend's address, or Pick from its
	// pool.
	Address string
	User    string // login name to present to the backend (after rewrite_user or Auth-User)
	// Password, when set, replaces the client's password at the backend (the
	// lookup service's Auth-Pass, e.g. a master password). Empty: log in
	// with the client's password. Never log it.
	Password string
	// Source says what decided, for logs: "user", "domain", "lookup" or
	// "default".
	Source string

	// confirm, for a fresh answer of a caching lookup, is what Confirm
	// caches once the backend has accepted the login.
	confirm *pendingAnswer
}

// Sources of a Decision.
const (
	SourceUser    = "user"
	SourceDomain  = "domain"
	SourceLookup  = "lookup"
	SourceDefault = "default"
)

// Router holds the compiled rules and the lookup client. Its configuration
// is immutable after New and it is safe for concurrent use (the lookup's
// answer cache is internally synchronized); a configuration reload builds a
// new Router and swaps it in, sessions in flight keep the Decision they
// already have, and the old Router's Close releases its idle connections.
type Router struct {
	users     map[string]route // lower-cased login -> route
	domains   map[string]route // lower-cased exact domain -> route
	wildcards []wildcard       // longest suffix first
	def       *route
	lookup    *lookup // nil without routing.lookup
}

type route struct {
	backend string
	rewrite template
	source  string // SourceUser, SourceDomain or SourceDefault
}

type wildcard struct {
	suffix string // ".example.org" for "*.example.org"
	route
}

// New compiles cfg. It checks the rules' own syntax (each rule has exactly one
// of user and domain, wildcards, rewrite templates, duplicates); whether the
// backends exist is Config.Validate's job, which gateway/config runs first.
func New(cfg Config) (*Router, error) {
	referenced := []string{}
	if cfg.Default != "" {
		referenced = append(referenced, cfg.Default)
	}
	for _, r := range cfg.Rules {
		if r.Backend != "" {
			referenced = append(referenced, r.Backend)
		}
	}
	if cfg.Lookup != nil && cfg.Lookup.Backend != "" {
		referenced = append(referenced, cfg.Lookup.Backend)
	}
	if errs := cfg.Validate(referenced); len(errs) > 0 {
		return nil, fmt.Errorf("routing: %w", errors.Join(errs...))
	}
	rt := &Router{users: map[string]route{}, domains: map[string]route{}}
	for _, r := range cfg.Rules {
		ro := route{backend: r.Backend, rewrite: compileTemplate(r.RewriteUser), source: SourceDomain}
		switch {
		case r.User != "":
			ro.source = SourceUser
			rt.users[strings.ToLower(r.User)] = ro
		case strings.HasPrefix(r.Domain, "*."):
			rt.wildcards = append(rt.wildcards, wildcard{suffix: strings.ToLower(r.Domain[1:]), route: ro})
		default:
			rt.domains[strings.ToLower(r.Domain)] = ro
		}
	}
	// The most specific wildcard wins: *.a.example.org before *.example.org.
	slices.SortStableFunc(rt.wildcards, func(a, b wildcard) int { return len(b.suffix) - len(a.suffix) })
	if cfg.Default != "" {
		rt.def = &route{backend: cfg.Default, rewrite: compileTemplate(""), source: SourceDefault}
	}
	if cfg.Lookup != nil {
		backend := cfg.Lookup.Backend
		if backend == "" {
			backend = cfg.Default
		}
		rt.lookup = newLookup(*cfg.Lookup, backend)
	}
	return rt, nil
}

// Confirm tells the router that the backend accepted the login d was decided
// for. Only then does a lookup answer enter the cache (lookup.cache): an
// answer for a login that then failed (a guessed password, a name that does
// not exist at the backend) is never kept, so failed logins cannot fill the
// cache. Confirm of any other decision does nothing.
func (r *Router) Confirm(d Decision) {
	if p := d.confirm; p != nil {
		p.l.store(p.key, d)
	}
}

// Close releases the lookup client's idle connections. It is safe to call
// while Route calls are in flight (they finish normally), and Route still
// works afterwards; the gateway calls it on the Router a reload replaced.
func (r *Router) Close() {
	if r.lookup != nil {
		r.lookup.close()
	}
}

// Route decides the backend for l: an exact user rule, else a domain rule (an
// exact domain before any wildcard, a longer wildcard before a shorter one),
// else the lookup service when configured, else the default, else
// ErrNoRoute. Matching ignores case; the rewritten name keeps the case the
// client typed. A login without @ has only a local part and matches no domain
// rule.
//
// Errors: ErrNoRoute (answer as a failed login); from the lookup, a
// *RejectError matching ErrRejected (the service refused the login: show its
// text, after its Wait) or ErrLookupUnavailable (answer [SYS/TEMP] /
// UNAVAILABLE). No error text contains the password.
func (r *Router) Route(ctx context.Context, l Login) (Decision, error) {
	if l.User == "" {
		return Decision{}, fmt.Errorf("%w: empty login name", ErrNoRoute)
	}
	ro, ok := r.match(l.User)
	if !ok {
		if r.lookup != nil {
			return r.lookup.route(ctx, l)
		}
		if r.def == nil {
			return Decision{}, ErrNoRoute
		}
		ro = *r.def
	}
	local, domain := splitLogin(l.User)
	user := ro.rewrite.expand(l.User, local, domain)
	if user == "" {
		// e.g. rewrite_user: "{domain}" for a login without @.
		return Decision{}, fmt.Errorf("%w: the rewrite gives an empty name", ErrNoRoute)
	}
	return Decision{Backend: ro.backend, User: user, Source: ro.source}, nil
}

// match finds the rule for user, without the default.
func (r *Router) match(user string) (route, bool) {
	lower := strings.ToLower(user)
	if ro, ok := r.users[lower]; ok {
		return ro, true
	}
	if _, domain := splitLogin(lower); domain != "" {
		if ro, ok := r.domains[domain]; ok {
			return ro, true
		}
		for _, w := range r.wildcards {
			// len check: "*.example.org" does not match "example.org".
			if len(domain) > len(w.suffix) && strings.HasSuffix(domain, w.suffix) {
				return w.route, true
			}
		}
	}
	return route{}, false
}

// splitLogin splits at the last @ (a local part may itself contain a quoted
// @, RFC 5321 §4.1.2). Without @, the whole name is the local part.
func splitLogin(user string) (local, domain string) {
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		return user[:i], user[i+1:]
	}
	return user, ""
}

// template is a compiled rewrite_user: literal text and variables.
type template []tmplPart

type tmplPart struct {
	lit string
	v   string // "{user}", "{local}", "{domain}" or "" for literal text
}

// compileTemplate compiles a template that checkTemplate accepted; "" means
// {user}.
func compileTemplate(t string) template {
	if t == "" {
		t = "{user}"
	}
	var out template
	for t != "" {
		i := strings.IndexByte(t, '{')
		if i < 0 {
			out = append(out, tmplPart{lit: t})
			break
		}
		if i > 0 {
			out = append(out, tmplPart{lit: t[:i]})
		}
		j := strings.IndexByte(t[i:], '}')
		out = append(out, tmplPart{v: t[i : i+j+1]})
		t = t[i+j+1:]
	}
	return out
}

func (t template) expand(user, local, domain string) string {
	var b strings.Builder
	for _, p := range t {
		switch p.v {
		case "":
			b.WriteString(p.lit)
		case "{user}":
			b.WriteString(user)
		case "{local}":
			b.WriteString(local)
		case "{domain}":
			b.WriteString(domain)
		}
	}
	return b.String()
}
