package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// TLS modes towards a backend (and, in gateway/config, towards clients).
const (
	TLSNone     = "none"     // cleartext IMAP (port 143), only sensible on a private network
	TLSStartTLS = "starttls" // cleartext greeting, then STARTTLS before login (RFC 3501 §6.2.1)
	TLSImplicit = "implicit" // TLS from the first byte (port 993, RFC 8314)
)

// BackendConfig is one entry under `backends:` in the configuration file.
//
//	legacy: {address: "10.1.2.3:143", tls: starttls, tls_min_version: "1.0", ca: /etc/ssl/old-ca.pem}
type BackendConfig struct {
	// Address is host:port of a single IMAP server. Exactly one of Address and
	// Addresses is set.
	Address string `yaml:"address"`
	// Addresses makes the backend a pool; routing picks one server per user.
	Addresses []string `yaml:"addresses"`
	// TLS is none, starttls or implicit. The zero value means implicit for
	// port 993 and starttls otherwise (see ApplyDefaults).
	TLS string `yaml:"tls"`
	// CA is a PEM file of roots to verify the backend with; empty means the
	// system roots.
	CA string `yaml:"ca"`
	// ServerName is the name verified in the backend certificate; empty means
	// the host part of the address.
	ServerName string `yaml:"server_name"`
	// TLSMinVersion is the oldest TLS version accepted from this backend:
	// "1.0", "1.1", "1.2" (default) or "1.3".
	TLSMinVersion string `yaml:"tls_min_version"`
	// InsecureSkipVerify turns certificate verification off. Never in
	// production: anybody on the path can read every password.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// ForwardClientIP sends an ID command with x-originating-ip before login
	// (the way Dovecot's proxy does), so the backend sees the real client.
	ForwardClientIP bool `yaml:"forward_client_ip"`
	// SendProxyProtocol prefixes every connection to this backend with a
	// PROXY protocol header carrying the client's address: "v1", "v2" or
	// empty (none). The backend must expect it (Dovecot: haproxy = yes on
	// the listener and haproxy_trusted_networks naming mailgate).
	SendProxyProtocol string `yaml:"send_proxy_protocol"`
	// PipelineLogin says whether POP3 logins send the snapshot's SELECT and
	// UID FETCH in the login's own write: "auto" (default: when the
	// greeting names Dovecot, see pipelineSafe), "on" or "off".
	PipelineLogin string `yaml:"pipeline_login"`

	tlsConfig *tls.Config // built by Validate
}

// Values of pipeline_login.
const (
	PipelineAuto = "auto"
	PipelineOn   = "on"
	PipelineOff  = "off"
)

// ApplyDefaults fills the zero values.
func (c *BackendConfig) ApplyDefaults() {
	if c.PipelineLogin == "" {
		c.PipelineLogin = PipelineAuto
	}
	if c.TLS == "" {
		c.TLS = TLSStartTLS
		if a := c.firstAddress(); strings.HasSuffix(a, ":993") {
			c.TLS = TLSImplicit
		}
	}
	if c.TLSMinVersion == "" {
		c.TLSMinVersion = "1.2"
	}
}

func (c *BackendConfig) firstAddress() string {
	if c.Address != "" {
		return c.Address
	}
	if len(c.Addresses) > 0 {
		return c.Addresses[0]
	}
	return ""
}

// Servers returns the backend's server addresses (one unless it is a pool).
func (c *BackendConfig) Servers() []string {
	if c.Address != "" {
		return []string{c.Address}
	}
	return c.Addresses
}

// Validate checks the section and builds the TLS configuration. Each error
// message starts with the key it is about, relative to this backend.
func (c *BackendConfig) Validate() []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	switch {
	case c.Address == "" && len(c.Addresses) == 0:
		bad("address", "required (host:port of the backend IMAP server), or addresses: [...] for a pool")
	case c.Address != "" && len(c.Addresses) > 0:
		bad("address", "set either address or addresses, not both")
	}
	for i, a := range c.Servers() {
		key := "address"
		if len(c.Addresses) > 0 {
			key = fmt.Sprintf("addresses[%d]", i)
		}
		if _, port, err := net.SplitHostPort(a); err != nil {
			bad(key, "%q is not host:port", a)
		} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			bad(key, "%q has no valid port", a)
		}
	}
	switch c.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		bad("tls", "%q is not one of none, starttls, implicit", c.TLS)
	}
	switch c.PipelineLogin {
	case "", PipelineAuto, PipelineOn, PipelineOff:
	default:
		bad("pipeline_login", "%q is not one of auto, on, off", c.PipelineLogin)
	}
	switch c.SendProxyProtocol {
	case "", "v1", "v2":
	default:
		bad("send_proxy_protocol", "%q is not one of v1, v2", c.SendProxyProtocol)
	}
	minVersion, err := ParseTLSVersion(c.TLSMinVersion)
	if err != nil {
		bad("tls_min_version", "%v", err)
	}
	var roots *x509.CertPool
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			bad("ca", "%v", err)
		} else {
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				bad("ca", "%s holds no PEM certificate", c.CA)
			}
		}
	}
	if len(errs) == 0 {
		c.tlsConfig = &tls.Config{
			MinVersion:         minVersion,
			RootCAs:            roots,
			ServerName:         c.ServerName,
			InsecureSkipVerify: c.InsecureSkipVerify,
		}
	}
	return errs
}

// TLSConfig returns the client TLS configuration built by Validate, with
// ServerName set for addr when the configuration names none.
//
// On a configuration that was never validated it returns the safe default
// (system roots, TLS 1.2 or later, verification unless insecure_skip_verify)
// rather than panic.
func (c *BackendConfig) TLSConfig(addr string) *tls.Config {
	cfg := c.tlsConfig.Clone()
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify}
	}
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		cfg.ServerName = host
	}
	return cfg
}

// ParseTLSVersion parses "1.0" .. "1.3".
func ParseTLSVersion(s string) (uint16, error) {
	switch s {
	case "1.0":
		return tls.VersionTLS10, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q is not one of 1.0, 1.1, 1.2, 1.3", s)
}

// Timeouts bound every exchange with a backend.
type Timeouts struct {
	Dial    time.Duration // TCP connect, TLS handshake, greeting, login
	Command time.Duration // any one IMAP command, including a body FETCH
}
