package config

import (
	"fmt"

	"mailgate/upstream"
)

// Warnings returns what is valid but almost certainly not what the operator
// meant, each with its path and line like a problem. check-config prints
// them and still exits 0; serve logs them at start and on every reload.
//
// A `tls: none` listener without allow_plaintext_auth is a warning, not an
// error: such a listener refuses every login (no mechanism authenticates
// without a password), but files like it run today, and an upgrade must not
// stop a gateway from starting on a file it accepted before; nor is there a
// key to say "refuse on purpose" without adding a name to the file format.
func (c *Config) Warnings() Problems {
	v := &validator{lines: c.lines}
	for i, l := range c.Listeners {
		if l.TLS == upstream.TLSNone && !l.AllowPlaintextAuth {
			v.bad(fmt.Sprintf("listeners[%d]", i),
				"tls: none without allow_plaintext_auth: true accepts no login: passwords are refused before TLS, and this listener has none; "+
					"set allow_plaintext_auth: true (a private network, or behind a TLS terminator) or use tls: starttls")
		}
	}
	sortProblems(v.probs)
	return v.probs
}
