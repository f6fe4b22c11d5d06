package tls

// Static certificates: PEM pairs read from disk at start and on Reload.
//
// Invariants:
//   - A staticSet is immutable once built; the Manager swaps whole sets
//     atomically, so a handshake in flight keeps the set it started with and
//     a reload never exposes half of a new set.
//   - Loading is all or nothing: if any pair fails, the previous set stays.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// staticSet is one generation of static certificates, indexed for SNI.
type staticSet struct {
	certs  []*tls.Certificate          // in configuration order; certs[0] is the default
	byName map[string]*tls.Certificate // lower-case DNS SAN ("*.example.org" kept as is) -> certificate
}

// loadStaticSet reads every pair in files. It fails on the first pair that
// cannot be used, naming its files; nothing is returned in that case.
func loadStaticSet(files []CertificateFile, log *zap.Logger) (*staticSet, error) {
	if len(files) == 0 {
		return nil, errors.New("no certificates")
	}
	set := &staticSet{byName: make(map[string]*tls.Certificate)}
	now := time.Now()
	for i, f := range files {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("certificates[%d] (cert %s, key %s): %w", i, f.Cert, f.Key, err)
		}
		leaf := cert.Leaf
		if leaf == nil { // LoadX509KeyPair fills Leaf since Go 1.23; stay correct if not
			if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return nil, fmt.Errorf("certificates[%d] (cert %s): %w", i, f.Cert, err)
			}
			cert.Leaf = leaf
		}
		if now.After(leaf.NotAfter) {
			// Served anyway: refusing to start would take every listener
			// down for the sake of one stale file; clients will complain
			// and the log says why.
			log.Warn("static certificate has expired",
				zap.Int("index", i), zap.String("cert", f.Cert), zap.Time("not_after", leaf.NotAfter))
		}
		if len(leaf.DNSNames) == 0 {
			log.Warn("static certificate has no DNS names; it can only serve as the default",
				zap.Int("index", i), zap.String("cert", f.Cert))
		}
		c := &cert
		set.certs = append(set.certs, c)
		for _, name := range leaf.DNSNames {
			name = normalizeServerName(name)
			if _, dup := set.byName[name]; dup {
				continue // the first pair that names it wins, like the configuration order says
			}
			set.byName[name] = c
		}
	}
	return set, nil
}

// lookup returns the certificate whose DNS SANs match serverName, or nil.
// Matching follows RFC 6125 §6.4.3: case-insensitive, and a wildcard stands
// for exactly one whole left-most label ("*.example.org" matches
// "mail.example.org" but neither "example.org" nor "a.b.example.org").
func (s *staticSet) lookup(serverName string) *tls.Certificate {
	name := normalizeServerName(serverName)
	if name == "" {
		return nil
	}
	if c, ok := s.byName[name]; ok {
		return c
	}
	if i := strings.IndexByte(name, '.'); i > 0 && i < len(name)-1 {
		if c, ok := s.byName["*"+name[i:]]; ok {
			return c
		}
	}
	return nil
}

// get returns the certificate for serverName, else the default (the first
// configured pair) for clients that send no SNI or a name we do not have.
func (s *staticSet) get(serverName string) *tls.Certificate {
	if c := s.lookup(serverName); c != nil {
		return c
	}
	return s.certs[0]
}

// names lists the DNS names the set serves, for logs.
func (s *staticSet) names() []string {
	out := make([]string, 0, len(s.byName))
	for _, c := range s.certs {
		out = append(out, c.Leaf.DNSNames...)
	}
	return out
}

// normalizeServerName lower-cases a DNS name and drops a trailing dot (SNI
// carries no trailing dot, RFC 6066 §3, but configured names may).
func normalizeServerName(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}
