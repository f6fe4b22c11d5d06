package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is the `cluster:` section. Without it (a nil *Config in
// gateway/config) mailgate runs alone, its state in its own process.
//
//	cluster:
//	  redis: {addresses: ["redis:6379"], password_file: /run/secrets/redis}
//	  lock_lease: 30s
type Config struct {
	Redis RedisConfig `yaml:"redis"`
	// KeyPrefix starts every key and channel name mailgate uses, so that
	// several gateways (or other programs) can share one Redis. Default
	// "mailgate:".
	KeyPrefix string `yaml:"key_prefix"`
	// LockLease is the life of a POP3 maildrop lock in Redis; it is renewed
	// every third of it while the session lives, so an instance that dies
	// holds its locks at most this long. Default 30s.
	LockLease time.Duration `yaml:"lock_lease"`
	// Instance names this gateway in logs and lock owners. Default: the
	// host name (a pod's name in Kubernetes).
	Instance string `yaml:"instance"`
}

// RedisConfig is `cluster.redis`: how to reach the Redis that holds the
// shared state. One address is a single Redis; several are the seeds of a
// Redis Cluster; with MasterName they are Sentinels.
type RedisConfig struct {
	Addresses  []string `yaml:"addresses"`
	MasterName string   `yaml:"master_name"` // Sentinel: the monitored master's name
	Username   string   `yaml:"username"`    // Redis 6 ACL user; empty: default
	// PasswordFile holds the password (a mounted Secret); the password
	// itself is never written in the configuration file.
	PasswordFile string `yaml:"password_file"`
	DB           int    `yaml:"db"` // a single Redis or Sentinel only; Redis Cluster has only 0
	// TLS is none (default) or implicit; CA and ServerName as for backends.
	TLS        string `yaml:"tls"`
	CA         string `yaml:"ca"`
	ServerName string `yaml:"server_name"`

	password  string      // read from PasswordFile by Validate
	tlsConfig *tls.Config // built by Validate for tls: implicit
}

// Defaults of the section.
const (
	DefaultKeyPrefix = "mailgate:"
	DefaultLockLease = 30 * time.Second
	// MinLockLease bounds lock_lease from below: renewals run every third
	// of it and each has a deadline of its own.
	MinLockLease = time.Second
)

// TLS modes towards Redis.
const (
	TLSNone     = "none"
	TLSImplicit = "implicit"
)

// ApplyDefaults fills the zero values; the instance name comes from the
// host name.
func (c *Config) ApplyDefaults() {
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if c.LockLease == 0 {
		c.LockLease = DefaultLockLease
	}
	if c.Instance == "" {
		if h, err := os.Hostname(); err == nil {
			c.Instance = h
		}
	}
	if c.Redis.TLS == "" {
		c.Redis.TLS = TLSNone
	}
}

// instanceName: it is part of lock values and of a channel name.
var instanceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate checks the section after ApplyDefaults, reads the password file
// and builds the TLS configuration. Each error starts with its key,
// relative to the section.
func (c *Config) Validate() []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	r := &c.Redis
	if len(r.Addresses) == 0 {
		bad("redis.addresses", "required: the Redis to share state in, e.g. [\"redis:6379\"] (several: Redis Cluster seeds, or Sentinels with master_name)")
	}
	for i, a := range r.Addresses {
		if _, port, err := net.SplitHostPort(a); err != nil {
			bad(fmt.Sprintf("redis.addresses[%d]", i), "%q is not host:port", a)
		} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			bad(fmt.Sprintf("redis.addresses[%d]", i), "%q has no valid port", a)
		}
	}
	switch {
	case r.DB < 0:
		bad("redis.db", "%d: a database number is 0 or more", r.DB)
	case r.DB != 0 && len(r.Addresses) > 1 && r.MasterName == "":
		bad("redis.db", "%d: Redis Cluster (several addresses without master_name) has only database 0", r.DB)
	}
	r.password = ""
	if r.PasswordFile != "" {
		b, err := os.ReadFile(r.PasswordFile)
		switch {
		case err != nil:
			bad("redis.password_file", "%v", err)
		case strings.TrimRight(string(b), "\r\n") == "":
			bad("redis.password_file", "%s is empty", r.PasswordFile)
		default:
			r.password = strings.TrimRight(string(b), "\r\n")
		}
	}
	r.tlsConfig = nil
	switch r.TLS {
	case TLSNone:
		if r.CA != "" || r.ServerName != "" {
			bad("redis.tls", "ca and server_name need tls: implicit")
		}
	case TLSImplicit:
		var roots *x509.CertPool
		if r.CA != "" {
			pem, err := os.ReadFile(r.CA)
			if err != nil {
				bad("redis.ca", "%v", err)
			} else if roots = x509.NewCertPool(); !roots.AppendCertsFromPEM(pem) {
				bad("redis.ca", "%s holds no PEM certificate", r.CA)
			}
		}
		r.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: r.ServerName}
	default:
		bad("redis.tls", "%q is not one of none, implicit", r.TLS)
	}
	if strings.ContainsAny(c.KeyPrefix, " \t\r\n") {
		bad("key_prefix", "%q: no spaces or line breaks", c.KeyPrefix)
	}
	if c.LockLease < MinLockLease {
		bad("lock_lease", "%v: at least %v (it is renewed every third of it)", c.LockLease, MinLockLease)
	}
	if !instanceName.MatchString(c.Instance) {
		bad("instance", "%q: 1-128 letters, digits, '.', '_' and '-' (the host name is the default)", c.Instance)
	}
	return errs
}

// SameSettings reports whether a and b (nil: no cluster) configure the same
// cluster, as far as the file says (a reload compares them: the cluster
// client is built once, at start).
func SameSettings(a, b *Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	ra, rb := a.Redis, b.Redis
	return slices.Equal(ra.Addresses, rb.Addresses) && ra.MasterName == rb.MasterName &&
		ra.Username == rb.Username && ra.PasswordFile == rb.PasswordFile && ra.password == rb.password &&
		ra.DB == rb.DB && ra.TLS == rb.TLS && ra.CA == rb.CA && ra.ServerName == rb.ServerName &&
		a.KeyPrefix == b.KeyPrefix && a.LockLease == b.LockLease && a.Instance == b.Instance
}
