package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c := &Config{Redis: RedisConfig{Addresses: []string{"redis:6379"}}}
	c.ApplyDefaults()
	host, _ := os.Hostname()
	if c.KeyPrefix != "mailgate:" || c.LockLease != 30*time.Second || c.Instance != host || c.Redis.TLS != TLSNone {
		t.Fatalf("defaults: %+v", c)
	}
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" = valid
	}{
		{"no address", func(c *Config) { c.Redis.Addresses = nil }, "redis.addresses: required"},
		{"bad address", func(c *Config) { c.Redis.Addresses = []string{"redis"} }, `redis.addresses[0]: "redis" is not host:port`},
		{"bad port", func(c *Config) { c.Redis.Addresses = []string{"redis:0"} }, "has no valid port"},
		{"db on Redis Cluster", func(c *Config) { c.Redis.Addresses = []string{"a:1", "b:1"}; c.Redis.DB = 2 }, "Redis Cluster"},
		{"db with Sentinel", func(c *Config) {
			c.Redis.Addresses = []string{"a:26379", "b:26379"}
			c.Redis.MasterName = "mymaster"
			c.Redis.DB = 2
		}, ""},
		{"negative db", func(c *Config) { c.Redis.DB = -1 }, "redis.db"},
		{"missing password file", func(c *Config) { c.Redis.PasswordFile = filepath.Join(dir, "nope") }, "redis.password_file: open"},
		{"empty password file", func(c *Config) { c.Redis.PasswordFile = empty }, "is empty"},
		{"password file", func(c *Config) { c.Redis.PasswordFile = pw }, ""},
		{"tls typo", func(c *Config) { c.Redis.TLS = "starttls" }, `redis.tls: "starttls" is not one of none, implicit`},
		{"ca without tls", func(c *Config) { c.Redis.CA = notPEM }, "need tls: implicit"},
		{"ca not PEM", func(c *Config) { c.Redis.TLS = TLSImplicit; c.Redis.CA = notPEM }, "holds no PEM certificate"},
		{"implicit", func(c *Config) { c.Redis.TLS = TLSImplicit; c.Redis.ServerName = "redis.internal" }, ""},
		{"short lease", func(c *Config) { c.LockLease = 100 * time.Millisecond }, "lock_lease: 100ms: at least 1s"},
		{"instance with a space", func(c *Config) { c.Instance = "gw 1" }, "instance:"},
		{"prefix with a space", func(c *Config) { c.KeyPrefix = "mail gate:" }, "key_prefix:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{Redis: RedisConfig{Addresses: []string{"redis:6379"}}, Instance: "gw-1"}
			tc.edit(c)
			c.ApplyDefaults()
			errs := c.Validate()
			if tc.want == "" {
				if len(errs) > 0 {
					t.Fatalf("want valid, got %v", errs)
				}
				return
			}
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("got %v, want one error containing %q", errs, tc.want)
			}
		})
	}
}

// The password is read from its file, without the line end.
func TestConfigPasswordFromFile(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("s3cret\r\n"), 0o600)
	c := &Config{Redis: RedisConfig{Addresses: []string{"redis:6379"}, PasswordFile: pw}, Instance: "gw"}
	c.ApplyDefaults()
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	if c.Redis.password != "s3cret" {
		t.Fatalf("password %q, want the file's line", c.Redis.password)
	}
}

func TestSameSettings(t *testing.T) {
	mk := func(edit func(*Config)) *Config {
		c := &Config{Redis: RedisConfig{Addresses: []string{"redis:6379"}}, Instance: "gw"}
		if edit != nil {
			edit(c)
		}
		c.ApplyDefaults()
		c.Validate()
		return c
	}
	if !SameSettings(mk(nil), mk(nil)) || !SameSettings(nil, nil) {
		t.Fatal("equal settings differ")
	}
	for name, edit := range map[string]func(*Config){
		"addresses": func(c *Config) { c.Redis.Addresses = []string{"other:6379"} },
		"lease":     func(c *Config) { c.LockLease = time.Minute },
		"instance":  func(c *Config) { c.Instance = "gw2" },
	} {
		if SameSettings(mk(nil), mk(edit)) {
			t.Errorf("a change of %s is not seen", name)
		}
	}
	if SameSettings(mk(nil), nil) {
		t.Error("removing the section is not seen")
	}
}
