// Package tls owns the certificates mailgate presents to clients: obtained and
// renewed through ACME (certmagic), or static PEM files reloaded on SIGHUP.
// One Manager serves every TLS listener, implicit TLS and STLS/STARTTLS alike.
//
// Files that also need the standard library's crypto/tls import this package
// as mgtls:
//
//	import mgtls "mailgate/tls"
package tls

import "time"

// Config is the `tls:` section.
type Config struct {
	// ACME obtains and renews certificates automatically.
	ACME *ACMEConfig `yaml:"acme"`
	// Certificates are static PEM pairs; the first is the default for clients
	// that send no SNI (when ACME is not configured).
	Certificates []CertificateFile `yaml:"certificates"`
	// MinVersion is the oldest TLS version offered to clients: "1.2" (default)
	// or "1.3" (RFC 8314 §4.1 asks for 1.2 or later).
	MinVersion string `yaml:"min_version"`
}

// StorageRedis as tls.acme.storage keeps the ACME account, keys,
// certificates and certmagic's locks in the cluster's Redis (cluster mode).
const StorageRedis = "redis"

// CertificateFile is one static certificate and its key.
type CertificateFile struct {
	Cert string `yaml:"cert"` // PEM chain, leaf first
	Key  string `yaml:"key"`  // PEM private key
}

// ACMEConfig is `tls.acme`.
type ACMEConfig struct {
	Domains []string `yaml:"domains"` // names to obtain; the first is the default for clients without SNI
	Email   string   `yaml:"email"`   // account contact
	// CA is the ACME directory URL. Default Let's Encrypt production; for
	// trials use https://acme-staging-v02.api.letsencrypt.org/directory.
	CA string `yaml:"ca"`
	// CARoot is a PEM file of roots that sign the CA's HTTPS endpoint (a
	// private CA such as Pebble).
	CARoot string `yaml:"ca_root"`
	// Storage is the directory for accounts, keys and certificates, or
	// StorageRedis: in the cluster's Redis, shared by every instance.
	Storage    string     `yaml:"storage"`
	Challenges Challenges `yaml:"challenges"`
	// ObtainTimeout bounds obtaining certificates at startup. Default 2m.
	ObtainTimeout time.Duration `yaml:"obtain_timeout"`
	// RenewCheckInterval is how often the managed certificates are checked
	// for renewal. It is not part of the file format: the zero value means
	// certmagic's default (10m), which suits every real CA; tests against a
	// CA issuing certificates that live seconds set it to a fraction of a
	// second.
	RenewCheckInterval time.Duration `yaml:"-"`
}

// Challenges says where mailgate answers ACME validations. A CA validates
// HTTP-01 on port 80 and TLS-ALPN-01 on port 443 only: listen there, or have
// those ports forwarded here.
type Challenges struct {
	HTTP    string `yaml:"http"`     // address of the HTTP-01 listener, e.g. ":80"; empty: off
	TLSALPN string `yaml:"tls_alpn"` // address of the TLS-ALPN-01 listener, e.g. ":443"; empty: off
}
