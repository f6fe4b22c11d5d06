package tls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// ALPN protocol IDs (IANA "TLS Application-Layer Protocol Negotiation (ALPN)
// Protocol IDs").
const (
	alpnIMAP = "imap"
	alpnPOP3 = "pop3"
	alpnACME = "acme-tls/1" // RFC 8737 §6.2
)

// Manager is the one certificate source for every client-facing listener:
// certificates obtained and renewed through ACME, static PEM pairs, or both.
// It is safe for concurrent use; handshakes never block on a Reload.
//
//	m, err := mgtls.New(ctx, cfg.TLS, log) // obtains ACME certificates before returning
//	if err != nil { ... }                   // names the domain and the CA's answer
//	defer m.Close()
//	tc := m.ServerConfig()                  // nil: no certificates configured
//	ln = tls.NewListener(ln, tc)            // implicit TLS (993, 995)
//	conn = tls.Server(plain, tc)            // STLS / STARTTLS, same certificates
//	...
//	case syscall.SIGHUP: err := m.Reload() // static files; the old ones stay on error
type Manager struct {
	log        *zap.Logger
	minVersion uint16
	files      []CertificateFile

	static atomic.Pointer[staticSet] // nil when no static certificates are configured
	acme   *acmeSource               // nil when ACME is not configured

	reloadMu  sync.Mutex // one Reload at a time, so the newest files win
	closeOnce sync.Once
}

// Option changes what New starts with.
type Option func(*options)

type options struct {
	storage certmagic.Storage
}

// WithStorage is the certmagic Storage (and its locks) for tls.acme.storage:
// redis, which the gateway makes from its cluster's Redis. Other values of
// tls.acme.storage are a directory and ignore it.
func WithStorage(s certmagic.Storage) Option { return func(o *options) { o.storage = s } }

// New reads the static certificates and, when ACME is configured, starts the
// challenge listeners and obtains a certificate for every domain (or loads
// it from storage) before it returns; ctx and tls.acme.obtain_timeout bound
// that work. Every error names the setting or file at fault; an ACME failure
// names the domain, the CA and the CA's answer. Close releases what New
// started.
//
// Which certificate a client gets:
//   - SNI names an ACME domain: that domain's (a TLS-ALPN-01 validation gets
//     its challenge certificate);
//   - SNI matches a static certificate's DNS names (wildcards included):
//     that one;
//   - anything else, including no SNI: the first ACME domain's certificate,
//     or without ACME the first static pair.
func New(ctx context.Context, cfg Config, log *zap.Logger, opts ...Option) (*Manager, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = zap.NewNop()
	}
	minVersion, err := clientTLSVersion(cfg.MinVersion)
	if err != nil {
		return nil, fmt.Errorf("tls.min_version: %w", err)
	}
	m := &Manager{
		log:        log,
		minVersion: minVersion,
		files:      append([]CertificateFile(nil), cfg.Certificates...),
	}
	if len(m.files) > 0 {
		set, err := loadStaticSet(m.files, log)
		if err != nil {
			return nil, fmt.Errorf("tls.%w", err)
		}
		m.static.Store(set)
		log.Info("static certificates loaded", zap.Int("count", len(set.certs)), zap.Strings("names", set.names()))
	}
	if cfg.ACME != nil {
		a, err := startACME(ctx, cfg.ACME, o.storage, log)
		if err != nil {
			return nil, err
		}
		m.acme = a
	}
	return m, nil
}

// ServerConfig returns the TLS configuration for client-facing listeners,
// implicit TLS and STLS/STARTTLS alike, or nil when neither ACME nor static
// certificates are configured. Each call returns a new Config that the
// caller may adjust (per-listener ALPN, for one).
//
// NextProtos is imap, pop3 and, with ACME, acme-tls/1, so a TLS-ALPN-01
// validation forwarded to a mail port also succeeds. A client that offers
// no ALPN is served as usual; one that offers only other protocols (a
// browser's h2, http/1.1) is refused with no_application_protocol
// (RFC 7301 §3.2), which is also the ALPACA cross-protocol defence.
func (m *Manager) ServerConfig() *tls.Config {
	if m.static.Load() == nil && m.acme == nil {
		return nil
	}
	protos := []string{alpnIMAP, alpnPOP3}
	if m.acme != nil {
		protos = append(protos, alpnACME)
	}
	return &tls.Config{
		MinVersion:     m.minVersion,
		GetCertificate: m.getCertificate,
		NextProtos:     protos,
	}
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	a, s := m.acme, m.static.Load()
	if a != nil && (hello.ServerName == "" || a.handles(hello.ServerName) || offersACMETLS(hello)) {
		return a.getCertificate(hello)
	}
	if s != nil {
		if a == nil {
			return s.get(hello.ServerName), nil
		}
		if c := s.lookup(hello.ServerName); c != nil {
			return c, nil
		}
	}
	if a != nil {
		return a.getCertificate(hello)
	}
	return nil, errors.New("tls: no certificates configured")
}

// Reload re-reads the static certificate files (SIGHUP). All pairs load or
// none do: on any error the certificates in use stay, the error is logged
// and returned. New handshakes use the new certificates at once; sessions
// already established are untouched. ACME certificates are not affected:
// certmagic renews them by itself.
func (m *Manager) Reload() error {
	if len(m.files) == 0 {
		return nil
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	set, err := loadStaticSet(m.files, m.log)
	if err != nil {
		m.log.Error("static certificates not reloaded; keeping the previous ones", zap.Error(err))
		return fmt.Errorf("tls: reload: %w", err)
	}
	m.static.Store(set)
	m.log.Info("static certificates reloaded", zap.Int("count", len(set.certs)), zap.Strings("names", set.names()))
	return nil
}

// Close stops the ACME challenge listeners and certificate maintenance and
// waits for their goroutines. Connections already handed a ServerConfig keep
// working; new handshakes still get the certificates in memory. Close is
// idempotent.
func (m *Manager) Close() {
	m.closeOnce.Do(func() {
		if m.acme != nil {
			m.acme.close()
		}
	})
}

// clientTLSVersion parses tls.min_version. Clients get TLS 1.2 or newer
// (RFC 8314 §4.1; RFC 8996 deprecates 1.0 and 1.1); the empty string means
// 1.2.
func clientTLSVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	case "1.0", "1.1":
		return 0, fmt.Errorf("%q is deprecated for clients (RFC 8996); use 1.2 or 1.3", s)
	default:
		return 0, fmt.Errorf("%q is not a TLS version; use 1.2 or 1.3", s)
	}
}
