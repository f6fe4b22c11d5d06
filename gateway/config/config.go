// Package config is the file users write. It composes the sections each
// package owns (tls.Config, upstream.BackendConfig, routing.Config,
// upstream.MaildropConfig) with the gateway's own (log, listeners, timeouts,
// limits, metrics), decodes YAML strictly, applies defaults in one place and
// validates everything at once.
//
//	cfg, err := config.Load("mailgate.yaml") // err lists every problem with its path
package config

import (
	"net/netip"
	"time"

	"mailgate/gateway/cluster"
	"mailgate/routing"
	mgtls "mailgate/tls"
	"mailgate/upstream"
)

// Config is the whole configuration file.
type Config struct {
	Log       Log                                `yaml:"log"`
	TLS       mgtls.Config                       `yaml:"tls"`
	Listeners []Listener                         `yaml:"listeners"`
	Backends  map[string]*upstream.BackendConfig `yaml:"backends"`
	Routing   routing.Config                     `yaml:"routing"`
	POP3      upstream.MaildropConfig            `yaml:"pop3"`
	Limits    Limits                             `yaml:"limits"`
	Timeouts  Timeouts                           `yaml:"timeouts"`
	Metrics   Metrics                            `yaml:"metrics"`
	// Cluster makes several instances one gateway, their shared state in
	// Redis; nil (no `cluster:` section): this instance alone.
	Cluster *cluster.Config `yaml:"cluster"`

	lines map[string]int // path -> line in the file, set by Parse
}

// Log is the `log:` section.
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or console
}

// Listener is one entry of `listeners:`.
type Listener struct {
	Name     string `yaml:"name"`     // unique; appears in logs and metrics
	Protocol string `yaml:"protocol"` // pop3 or imap
	Address  string `yaml:"address"`  // host:port, e.g. ":995"
	// TLS is none, starttls (STLS/STARTTLS offered) or implicit (995/993).
	TLS string `yaml:"tls"`
	// AllowPlaintextAuth permits USER/PASS, AUTH, LOGIN before TLS. Default
	// false (RFC 8314).
	AllowPlaintextAuth bool `yaml:"allow_plaintext_auth"`
	// ProxyProtocol lists CIDRs whose connections must start with a PROXY
	// protocol header (v1 or v2); connections from elsewhere must not.
	// A bare address ("10.0.0.5") means that one host.
	ProxyProtocol []string `yaml:"proxy_protocol"`

	proxyPrefixes []netip.Prefix // ProxyProtocol, parsed by Validate
}

// ProxyPrefixes returns the proxy_protocol networks parsed by Validate; empty
// means no peer may send a PROXY header.
func (l Listener) ProxyPrefixes() []netip.Prefix { return l.proxyPrefixes }

// Protocols of a listener.
const (
	ProtocolPOP3 = "pop3"
	ProtocolIMAP = "imap"
)

// Timeouts is the `timeouts:` section.
type Timeouts struct {
	POP3Idle       time.Duration `yaml:"pop3_idle"`       // default 10m; RFC 1939 §3 wants at least 10m
	POP3Preauth    time.Duration `yaml:"pop3_preauth"`    // default 3m from connect to login, not renewed by commands
	IMAPPreauth    time.Duration `yaml:"imap_preauth"`    // default 60s: time to authenticate
	IMAPIdle       time.Duration `yaml:"imap_idle"`       // default 30m (RFC 9051 §5.4) after login
	TLSHandshake   time.Duration `yaml:"tls_handshake"`   // default 30s
	BackendDial    time.Duration `yaml:"backend_dial"`    // default 10s: connect, TLS, greeting, login
	BackendCommand time.Duration `yaml:"backend_command"` // default 60s per backend command
	Shutdown       time.Duration `yaml:"shutdown"`        // default 30s grace for sessions on SIGTERM
	// TCPKeepalive is the idle time before TCP keepalive probes on client
	// connections, so that a half-open connection (a phone that lost its
	// network) ends its session and frees its maildrop lock. Default 60s.
	TCPKeepalive time.Duration `yaml:"tcp_keepalive"`
}

// Limits is the `limits:` section. Limits are per mailgate instance.
type Limits struct {
	Connections int `yaml:"connections"` // total client connections; default 10000
	PerIP       int `yaml:"per_ip"`      // connections from one client network; default 50
	// IPv6Prefix is the prefix length that makes IPv6 addresses one client
	// network for per_ip and the failed-login limits (a subscriber usually
	// has a whole /64); IPv4 addresses count alone. Default 64.
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// AuthFailuresPerIP is "N/min" (or /s, /h): failed logins from one address
	// before it is refused for a while. Default 10/min.
	AuthFailuresPerIP string `yaml:"auth_failures_per_ip"`
	// PreauthBadCommands is how many erroneous commands (and, on IMAP,
	// failed logins) a client may send before login until it is
	// disconnected. Default 3.
	PreauthBadCommands int `yaml:"preauth_bad_commands"`
	// BadCommands is the same for a logged-in POP3 client (a logged-in
	// IMAP client talks to its backend). Default 10.
	BadCommands int `yaml:"bad_commands"`
	// AuthFailureDelay is how long a client waits for the answer to a failed
	// login, to slow down password guessing. Default 1s.
	AuthFailureDelay time.Duration `yaml:"auth_failure_delay"`

	authFailures    int           // parsed from AuthFailuresPerIP by Validate
	authFailuresPer time.Duration // per this period
}

// AuthFailureRate returns auth_failures_per_ip as parsed by Validate: n
// failed logins per period.
func (l Limits) AuthFailureRate() (n int, per time.Duration) {
	return l.authFailures, l.authFailuresPer
}

// Metrics is the `metrics:` section.
type Metrics struct {
	Address string `yaml:"address"` // host:port for /metrics, /healthz, /readyz; empty: off
}
