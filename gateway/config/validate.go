package config

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	mgtls "mailgate/tls"
	"mailgate/upstream"
)

// Validate checks the whole configuration after ApplyDefaults and builds the
// parsed values (proxy networks, the auth failure rate, each backend's TLS
// configuration). It returns nil or a Problems with every problem found,
// each with its path and, for a Config from Parse, its line.
func (c *Config) Validate() error {
	v := &validator{lines: c.lines}
	c.validateLog(v)
	c.validateListeners(v)
	c.validateBackends(v)
	v.section("routing", c.Routing.Validate(c.BackendNames()))
	v.section("pop3", c.POP3.Validate())
	c.validateUIDLMap(v)
	v.section("tls", c.TLS.Validate())
	c.validateTimeouts(v)
	c.validateLimits(v)
	if c.Cluster != nil {
		v.section("cluster", c.Cluster.Validate())
	} else if c.TLS.ACME != nil && c.TLS.ACME.Storage == mgtls.StorageRedis {
		v.bad("tls.acme.storage", "redis keeps certificates in the cluster's Redis: add a cluster: section, or name a directory")
	}
	if c.Metrics.Address != "" {
		if err := checkHostPort(c.Metrics.Address); err != nil {
			v.bad("metrics.address", "%v", err)
		}
	}
	if len(v.probs) == 0 {
		return nil
	}
	sortProblems(v.probs)
	return v.probs
}

// validateUIDLMap checks what pop3.uidl_map needs from other sections: the
// redis store is the cluster's (gateway/cluster.UIDLStore on cluster.redis),
// so without a cluster: section store: redis is refused here rather than
// run without the map, which would change every UIDL the map kept.
func (c *Config) validateUIDLMap(v *validator) {
	if m := c.POP3.UIDLMap; m != nil && m.Store == upstream.UIDLMapRedis && c.Cluster == nil {
		v.bad("pop3.uidl_map.store", "redis keeps the UIDL maps in the cluster's Redis: add a cluster: section (cluster.redis), "+
			"or name a file for the embedded store, e.g. /var/lib/mailgate/uidl.db")
	}
}

// BackendNames returns the names under `backends:`, sorted.
func (c *Config) BackendNames() []string {
	names := make([]string, 0, len(c.Backends))
	for name := range c.Backends {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

type validator struct {
	lines map[string]int
	probs Problems
}

func (v *validator) bad(path, format string, args ...any) {
	v.probs = append(v.probs, Problem{Path: path, Message: fmt.Sprintf(format, args...), Line: v.line(path)})
}

// section adds a leaf package's errors, whose messages start with their key
// relative to the section ("address: required"), under prefix.
func (v *validator) section(prefix string, errs []error) {
	for _, err := range errs {
		key, msg, ok := strings.Cut(err.Error(), ": ")
		if !ok || strings.ContainsAny(key, " \t\"") {
			v.bad(prefix, "%s", err.Error())
			continue
		}
		v.bad(prefix+"."+key, "%s", msg)
	}
}

// line returns the line of path, or of its nearest ancestor in the file (a
// defaulted key is not in the file, its section is).
func (v *validator) line(path string) int {
	for path != "" {
		if l, ok := v.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// sortProblems orders problems by line; problems without a line (missing
// sections) keep their order and come last.
func sortProblems(ps Problems) {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		switch {
		case a.Line == b.Line:
			return 0
		case a.Line == 0:
			return 1
		case b.Line == 0:
			return -1
		}
		return a.Line - b.Line
	})
}

func (c *Config) validateLog(v *validator) {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		v.bad("log.format", "%q is not one of json, console", c.Log.Format)
	}
}

// Well-known ports and what RFC 8314 / IANA say runs there.
var wellKnown = map[string]struct{ protocol, tls, name string }{
	"110": {ProtocolPOP3, upstream.TLSStartTLS, "POP3"},
	"995": {ProtocolPOP3, upstream.TLSImplicit, "POP3S"},
	"143": {ProtocolIMAP, upstream.TLSStartTLS, "IMAP"},
	"993": {ProtocolIMAP, upstream.TLSImplicit, "IMAPS"},
}

func (c *Config) validateListeners(v *validator) {
	if len(c.Listeners) == 0 {
		v.bad("listeners", "required: at least one, e.g. - {name: pop3s, protocol: pop3, address: \":995\", tls: implicit}")
		return
	}
	names := map[string]int{}
	addrs := map[string]int{}
	hasCert := len(c.TLS.Certificates) > 0 || c.TLS.ACME != nil
	for i := range c.Listeners {
		l := &c.Listeners[i]
		key := fmt.Sprintf("listeners[%d]", i)
		switch {
		case l.Name == "":
			v.bad(key+".name", "required: a unique name for logs and metrics")
		case names[l.Name] > 0:
			v.bad(key+".name", "%q is already the name of listeners[%d]", l.Name, names[l.Name]-1)
		default:
			names[l.Name] = i + 1
		}
		switch l.Protocol {
		case ProtocolPOP3, ProtocolIMAP:
		case "":
			v.bad(key+".protocol", "required: pop3 or imap")
		default:
			v.bad(key+".protocol", "%q is not one of pop3, imap", l.Protocol)
		}
		port := ""
		if err := checkHostPort(l.Address); err != nil {
			v.bad(key+".address", "%v", err)
		} else {
			_, port, _ = net.SplitHostPort(l.Address)
			if j, dup := addrs[l.Address]; dup && port != "0" { // port 0: any free port (tests)
				v.bad(key+".address", "%q is already the address of listeners[%d]", l.Address, j)
			} else {
				addrs[l.Address] = i
			}
		}
		switch l.TLS {
		case upstream.TLSNone, upstream.TLSStartTLS, upstream.TLSImplicit:
			if wk, ok := wellKnown[port]; ok && wk.protocol == l.Protocol && wk.tls != l.TLS {
				v.bad(key+".tls", "port %s is %s; use tls: %s", port, wk.name, wk.tls)
			} else if l.TLS != upstream.TLSNone && !hasCert {
				v.bad(key+".tls", "%s needs a certificate: set tls.certificates or tls.acme", l.TLS)
			}
		default:
			v.bad(key+".tls", "%q is not one of none, starttls, implicit", l.TLS)
		}
		if wk, ok := wellKnown[port]; ok && l.Protocol != "" && wk.protocol != l.Protocol {
			v.bad(key+".protocol", "port %s is %s; clients connecting there expect %s", port, wk.name, wk.protocol)
		}
		l.proxyPrefixes = nil
		for j, s := range l.ProxyProtocol {
			p, err := parsePrefix(s)
			if err != nil {
				v.bad(fmt.Sprintf("%s.proxy_protocol[%d]", key, j), "%q is not a network such as 10.0.0.0/8 or an address", s)
				continue
			}
			l.proxyPrefixes = append(l.proxyPrefixes, p)
		}
	}
}

// parsePrefix parses a CIDR, or a single address as a one-host network.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Backend names appear in logs, metrics labels and routing rules.
var backendName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

func (c *Config) validateBackends(v *validator) {
	if len(c.Backends) == 0 {
		v.bad("backends", "required: at least one backend IMAP server, e.g. store: {address: \"imap.internal:993\"}")
		return
	}
	for _, name := range c.BackendNames() {
		key := "backends." + name
		if !backendName.MatchString(name) {
			v.bad(key, "name %q: use letters, digits, - and _", name)
		}
		b := c.Backends[name]
		if b == nil {
			v.bad(key, "empty: give at least address: host:port")
			continue
		}
		v.section(key, b.Validate())
	}
}

func (c *Config) validateTimeouts(v *validator) {
	t := c.Timeouts
	// RFC 1939 §3: an autologout timer "MUST be of at least 10 minutes' duration".
	if t.POP3Idle > 0 && t.POP3Idle < 10*time.Minute {
		v.bad("timeouts.pop3_idle", "%v is too short: RFC 1939 §3 requires at least 10m", t.POP3Idle)
	}
	for _, d := range []struct {
		key string
		val time.Duration
	}{
		{"pop3_idle", t.POP3Idle}, {"pop3_preauth", t.POP3Preauth}, {"imap_preauth", t.IMAPPreauth}, {"imap_idle", t.IMAPIdle},
		{"tls_handshake", t.TLSHandshake}, {"backend_dial", t.BackendDial},
		{"backend_command", t.BackendCommand}, {"shutdown", t.Shutdown},
		{"tcp_keepalive", t.TCPKeepalive},
	} {
		if d.val < 0 {
			v.bad("timeouts."+d.key, "%v: must be positive", d.val)
		}
	}
}

func (c *Config) validateLimits(v *validator) {
	l := &c.Limits
	for _, n := range []struct {
		key string
		val int
	}{{"connections", l.Connections}, {"per_ip", l.PerIP}, {"bad_commands", l.BadCommands}, {"preauth_bad_commands", l.PreauthBadCommands}} {
		if n.val < 0 {
			v.bad("limits."+n.key, "%d: must be positive", n.val)
		}
	}
	if l.IPv6Prefix < 0 || l.IPv6Prefix > 128 {
		v.bad("limits.ipv6_prefix", "%d: a prefix length from 1 to 128 (64: one subscriber's network)", l.IPv6Prefix)
	}
	if l.AuthFailureDelay < 0 {
		v.bad("limits.auth_failure_delay", "%v: must not be negative", l.AuthFailureDelay)
	}
	if l.PerIP > l.Connections && l.Connections > 0 {
		v.bad("limits.per_ip", "%d is more than limits.connections (%d)", l.PerIP, l.Connections)
	}
	n, per, err := parseRate(l.AuthFailuresPerIP)
	if err != nil {
		v.bad("limits.auth_failures_per_ip", "%v", err)
		return
	}
	l.authFailures, l.authFailuresPer = n, per
}

// parseRate parses "10/min", "1/s", "100/h".
func parseRate(s string) (int, time.Duration, error) {
	num, unit, ok := strings.Cut(s, "/")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if !ok || err != nil || n <= 0 {
		return 0, 0, fmt.Errorf("%q is not a rate such as 10/min (a positive number per s, min or h)", s)
	}
	per, ok := map[string]time.Duration{"s": time.Second, "sec": time.Second, "min": time.Minute, "m": time.Minute, "h": time.Hour, "hour": time.Hour}[strings.TrimSpace(unit)]
	if !ok {
		return 0, 0, fmt.Errorf("%q: the period after / is one of s, min, h", s)
	}
	return n, per, nil
}

func checkHostPort(addr string) error {
	if addr == "" {
		return fmt.Errorf("required: host:port, e.g. \":995\"")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. \":995\" or \"127.0.0.1:9110\")", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q has no valid port", addr)
	}
	return nil
}
