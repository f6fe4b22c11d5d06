// Package routing decides, for a login name, which backend serves the user and
// under which name the backend knows them. It is a pure decision: it knows
// nothing of POP3 or IMAP and dials nothing.
//
//	r, _ := routing.New(cfg, backendNames)
//	d, err := r.Route(ctx, routing.Login{User: "alice@example.org"})
//	// d.Backend == "store", d.User == "alice"
package routing

// Config is the `routing:` section.
//
//	routing:
//	  default: legacy
//	  rules:
//	    - {domain: example.org, backend: store, rewrite_user: "{local}"}
//	    - {user: boss@example.com, backend: store}
type Config struct {
	// Default is the backend for users no rule matches; empty means such users
	// are refused.
	Default string `yaml:"default"`
	// Rules are tried as: every exact `user` rule first, then `domain` rules,
	// then Default.
	Rules []Rule `yaml:"rules"`
}

// Rule sends a user or a domain to a backend.
type Rule struct {
	// User matches one login name exactly (case-insensitively).
	User string `yaml:"user"`
	// Domain matches the part after the last @ (case-insensitively);
	// "*.example.org" matches every subdomain of example.org.
	Domain string `yaml:"domain"`
	// Backend names an entry of `backends:`.
	Backend string `yaml:"backend"`
	// RewriteUser is the name to log in to the backend with: a template over
	// {user} (the whole login), {local} (before the @) and {domain} (after
	// it). Empty means {user}.
	RewriteUser string `yaml:"rewrite_user"`
}
