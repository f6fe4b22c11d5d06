package tls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Validate checks the `tls:` section as the gateway will use it: static
// certificates load as pairs, the ACME account has what a CA needs and its
// storage is writable. It runs after defaults are applied (min_version
// "1.2"). Each message starts with the key it is about, relative to `tls:`,
// e.g. `certificates[0].key: open /etc/mailgate/tls.key: no such file or directory`.
// Validate creates and writes nothing (check-config may run as root on a
// file that is not deployed yet): a missing acme.storage is fine when it can
// be created; startACME creates it.
func (c *Config) Validate() []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}

	// RFC 8314 §4.1: TLS 1.2 or later towards mail clients.
	switch c.MinVersion {
	case "1.2", "1.3":
	default:
		bad("min_version", "%q is not one of 1.2, 1.3 (RFC 8314 §4.1 asks for TLS 1.2 or later)", c.MinVersion)
	}

	for i, f := range c.Certificates {
		key := fmt.Sprintf("certificates[%d]", i)
		missing := false
		if f.Cert == "" {
			bad(key+".cert", "required: a PEM certificate chain file, leaf first")
			missing = true
		}
		if f.Key == "" {
			bad(key+".key", "required: a PEM private key file")
			missing = true
		}
		if missing {
			continue
		}
		// Name the unreadable file itself before trying the pair, so the
		// message says which of the two is wrong.
		unreadable := false
		for _, p := range []struct{ key, path string }{{".cert", f.Cert}, {".key", f.Key}} {
			if _, err := os.ReadFile(p.path); err != nil {
				bad(key+p.key, "%v", err)
				unreadable = true
			}
		}
		if unreadable {
			continue
		}
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			bad(key, "%s and %s do not load as a certificate and its key: %v", f.Cert, f.Key, err)
			continue
		}
		if pair.Leaf != nil && len(pair.Leaf.DNSNames) == 0 && len(pair.Leaf.IPAddresses) == 0 {
			bad(key+".cert", "%s names no host (no DNS or IP subjectAltName): clients cannot verify it", f.Cert)
		}
	}

	if a := c.ACME; a != nil {
		if len(a.Domains) == 0 {
			bad("acme.domains", "required: the names to obtain certificates for, e.g. [mail.example.com]")
		}
		for i, d := range a.Domains {
			if d == "" || strings.ContainsAny(d, " \t/:@") || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") {
				bad(fmt.Sprintf("acme.domains[%d]", i), "%q is not a host name", d)
			}
		}
		if a.Email == "" {
			bad("acme.email", "required: the account contact the CA writes to about expiring certificates")
		} else if !strings.Contains(a.Email, "@") {
			bad("acme.email", "%q is not an email address", a.Email)
		}
		if a.CA != "" {
			if u, err := url.Parse(a.CA); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				bad("acme.ca", "%q is not the URL of an ACME directory (e.g. https://acme-v02.api.letsencrypt.org/directory)", a.CA)
			}
		}
		if a.CARoot != "" {
			if pem, err := os.ReadFile(a.CARoot); err != nil {
				bad("acme.ca_root", "%v", err)
			} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				bad("acme.ca_root", "%s holds no PEM certificate", a.CARoot)
			}
		}
		if a.Storage == "" {
			bad("acme.storage", "required: a directory for the ACME account, keys and certificates, or redis (cluster mode)")
		} else if a.Storage == StorageRedis {
			// The cluster's Redis: gateway/config checks that there is one.
		} else if err := checkStorageDir(a.Storage); err != nil {
			bad("acme.storage", "%v", err)
		}
		for _, ch := range []struct{ key, addr string }{{"acme.challenges.http", a.Challenges.HTTP}, {"acme.challenges.tls_alpn", a.Challenges.TLSALPN}} {
			if ch.addr == "" {
				continue
			}
			if _, port, err := net.SplitHostPort(ch.addr); err != nil {
				bad(ch.key, "%q is not host:port", ch.addr)
			} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
				bad(ch.key, "%q has no valid port", ch.addr)
			}
		}
		if a.ObtainTimeout < 0 {
			bad("acme.obtain_timeout", "must not be negative")
		}
	}
	return errs
}

// checkStorageDir reports whether dir is a writable directory, or could be
// created as one: its nearest existing ancestor is a writable directory. It
// only looks (stat, access(2)); nothing is created.
func checkStorageDir(dir string) error {
	p := filepath.Clean(dir)
	for {
		fi, err := os.Stat(p)
		// ENOTDIR: a file on the way; the walk up finds it and says so.
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			parent := filepath.Dir(p)
			if parent == p {
				return err
			}
			p = parent
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			if p == filepath.Clean(dir) {
				return fmt.Errorf("%s is not a directory", dir)
			}
			return fmt.Errorf("%s cannot be created: %s is not a directory", dir, p)
		}
		if err := writable(p); err != nil {
			if p == filepath.Clean(dir) {
				return fmt.Errorf("%s is not writable: %v", dir, err)
			}
			return fmt.Errorf("%s cannot be created: %s is not writable: %v", dir, p, err)
		}
		return nil
	}
}

// prepareStorage creates the ACME storage directory if needed and proves it
// writable with a temporary file, so a read-only volume fails at startup, not
// at the first renewal two months later. Only serve runs it (startACME).
func prepareStorage(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tls.acme.storage: cannot create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".mailgate-write-check-*")
	if err != nil {
		return fmt.Errorf("tls.acme.storage: %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}
