package config

import (
	"net"
	"time"

	"mailgate/gateway/imap"
	"mailgate/gateway/pop3"
	"mailgate/upstream"
)

// Default values. A zero value in the file means "use the default", so a
// limit cannot be switched off by writing 0.
// The fronts' settings take the fronts' own defaults (the keys shared by
// both fronts take the IMAP front's; TestSharedFrontDefaultsAgree checks that
// POP3's are the same), the backend timeouts upstream's.
const (
	DefaultPOP3Idle       = pop3.DefaultIdleTimeout
	DefaultPOP3Preauth    = pop3.DefaultPreauthTimeout
	DefaultIMAPPreauth    = imap.DefaultPreauthTimeout
	DefaultIMAPIdle       = imap.DefaultIdleTimeout
	DefaultTLSHandshake   = imap.DefaultTLSHandshakeTimeout
	DefaultBackendDial    = upstream.DefaultDialTimeout
	DefaultBackendCommand = upstream.DefaultCommandTimeout
	DefaultShutdown       = 30 * time.Second
	DefaultTCPKeepalive   = 60 * time.Second

	DefaultConnections        = 10000
	DefaultPerIP              = 50
	DefaultIPv6Prefix         = 64
	DefaultAuthFailuresPerIP  = "10/min"
	DefaultPreauthBadCommands = imap.DefaultBadCommandLimit
	DefaultBadCommands        = pop3.DefaultBadCommandLimit
	DefaultAuthFailureDelay   = imap.DefaultAuthFailureDelay
)

// ApplyDefaults fills every zero value, here and in each package's section.
// Parse calls it; call it yourself on a Config built in code, before
// Validate.
func (c *Config) ApplyDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.TLS.MinVersion == "" {
		c.TLS.MinVersion = "1.2"
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.TLS == "" {
			// RFC 8314 §3: 993 and 995 are the implicit-TLS ports.
			l.TLS = upstream.TLSStartTLS
			if _, port, err := net.SplitHostPort(l.Address); err == nil && (port == "993" || port == "995") {
				l.TLS = upstream.TLSImplicit
			}
		}
	}
	for _, b := range c.Backends {
		if b != nil {
			b.ApplyDefaults()
		}
	}
	// With a single backend there is nowhere else to send anyone.
	if c.Routing.Default == "" && len(c.Routing.Rules) == 0 && len(c.Backends) == 1 {
		for name := range c.Backends {
			c.Routing.Default = name
		}
	}
	c.POP3.ApplyDefaults()
	if c.Cluster != nil {
		c.Cluster.ApplyDefaults()
	}

	t := &c.Timeouts
	setDuration(&t.POP3Idle, DefaultPOP3Idle)
	setDuration(&t.IMAPPreauth, DefaultIMAPPreauth)
	setDuration(&t.POP3Preauth, DefaultPOP3Preauth)
	setDuration(&t.IMAPIdle, DefaultIMAPIdle)
	setDuration(&t.TLSHandshake, DefaultTLSHandshake)
	setDuration(&t.BackendDial, DefaultBackendDial)
	setDuration(&t.BackendCommand, DefaultBackendCommand)
	setDuration(&t.Shutdown, DefaultShutdown)
	setDuration(&t.TCPKeepalive, DefaultTCPKeepalive)

	l := &c.Limits
	setInt(&l.Connections, DefaultConnections)
	setInt(&l.PerIP, DefaultPerIP)
	setInt(&l.IPv6Prefix, DefaultIPv6Prefix)
	setInt(&l.BadCommands, DefaultBadCommands)
	setInt(&l.PreauthBadCommands, DefaultPreauthBadCommands)
	setDuration(&l.AuthFailureDelay, DefaultAuthFailureDelay)
	if l.AuthFailuresPerIP == "" {
		l.AuthFailuresPerIP = DefaultAuthFailuresPerIP
	}
}

func setDuration(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func setInt(n *int, def int) {
	if *n == 0 {
		*n = def
	}
}
