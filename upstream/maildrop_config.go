package upstream

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Deletion policies for POP3 QUIT (`pop3.delete`).
const (
	DeleteExpunge = "expunge" // UID STORE +FLAGS.SILENT \Deleted, then UID EXPUNGE (UIDPLUS)
	DeleteFlag    = "flag"    // only set \Deleted; the store's own expiry removes them
	DeleteMovePfx = "move:"   // move:NAME moves the messages to mailbox NAME (MOVE, or COPY+expunge)
)

// MaildropConfig is the `pop3:` section: how a POP3 maildrop is made out of an
// IMAP mailbox.
type MaildropConfig struct {
	// Mailbox is the IMAP mailbox POP3 clients see. Default INBOX.
	Mailbox string `yaml:"mailbox"`
	// UIDLFormat builds each message's UIDL (see FormatUIDL for the variables).
	// Default "%08Xu%08Xv", Dovecot's, so clients migrating from a Dovecot POP3
	// server download nothing twice.
	UIDLFormat string `yaml:"uidl_format"`
	// Delete is expunge (default), flag or move:NAME.
	Delete string `yaml:"delete"`
	// MarkSeen sets \Seen on messages fetched by RETR (not TOP). Default true.
	MarkSeen *bool `yaml:"mark_seen"`
	// Cache bounds the shared LRU of message bodies.
	Cache CacheConfig `yaml:"cache"`
	// FetchAhead is the per-session byte budget of bodies fetched before the
	// client asks for them. Default 8MiB; 0B turns fetch-ahead off.
	FetchAhead *Size `yaml:"fetch_ahead"`
	// SpoolMemory is how much of one body a session keeps in memory before it
	// spools the rest to a temporary file. Default 1MiB.
	SpoolMemory Size `yaml:"spool_memory"`
	// Lock is the maildrop lock policy: exclusive (default; RFC 1939 §4, a
	// second session gets -ERR [IN-USE]), takeover (a new session ends an
	// older one that has waited for a command for TakeoverAfter, never one
	// inside UPDATE) or none (no lock, as Dovecot).
	Lock string `yaml:"lock"`
	// TakeoverAfter: with lock: takeover, how long an older session must
	// have waited for a command before a new one may end it. Default 10s.
	TakeoverAfter time.Duration `yaml:"takeover_after"`
	// UIDLMap keeps each message's UIDL across UIDVALIDITY changes and
	// moves between backends (uidlmap.go). nil (the default): UIDLs are
	// FormatUIDL's, as always.
	UIDLMap *UIDLMapConfig `yaml:"uidl_map"`
	// Reuse keeps the backend connection of a session that ended with a
	// successful QUIT, logged in and selected, for this long, for the same
	// user's next login with the same password from the same client
	// address (pollers). 0 (default) turns it off. See reuse.go.
	Reuse time.Duration `yaml:"reuse"`
}

// UIDLMapConfig is `pop3.uidl_map`.
type UIDLMapConfig struct {
	// Store is the file of the embedded store (bbolt), for example
	// /var/lib/mailgate/uidl.db, or "redis" for the cluster's Redis
	// (cluster.redis). Required.
	Store string `yaml:"store"`
	// MaxMessages bounds one user's map of one mailbox. Default 100000.
	MaxMessages int `yaml:"max_messages"`
	// MaxBytes bounds the store's records in all. Default 1GiB. At the
	// bound no new map is made (those users' UIDLs are FormatUIDL's, as
	// without the map; a warning is logged); existing maps go on, each
	// within MaxMessages.
	MaxBytes Size `yaml:"max_bytes"`
}

// UIDLMapRedis is the Store value that keeps the maps in the cluster's
// Redis.
const UIDLMapRedis = "redis"

// Defaults of pop3.uidl_map.
const (
	DefaultUIDLMapMaxMessages = 100000
	DefaultUIDLMapMaxBytes    = Size(1 << 30)
)

// CacheConfig is `pop3.cache`.
type CacheConfig struct {
	MaxBytes        *Size `yaml:"max_bytes"`         // default 256MiB; 0B disables the cache
	MaxMessageBytes Size  `yaml:"max_message_bytes"` // default 4MiB: larger bodies are never cached
}

// ApplyDefaults fills the zero values.
func (c *MaildropConfig) ApplyDefaults() {
	if c.Mailbox == "" {
		c.Mailbox = "INBOX"
	}
	if c.UIDLFormat == "" {
		c.UIDLFormat = "%08Xu%08Xv"
	}
	if c.Delete == "" {
		c.Delete = DeleteExpunge
	}
	if c.MarkSeen == nil {
		t := true
		c.MarkSeen = &t
	}
	if c.Cache.MaxBytes == nil {
		s := Size(256 << 20)
		c.Cache.MaxBytes = &s
	}
	if c.Cache.MaxMessageBytes == 0 {
		c.Cache.MaxMessageBytes = 4 << 20
	}
	if c.FetchAhead == nil {
		s := Size(8 << 20)
		c.FetchAhead = &s
	}
	if c.SpoolMemory == 0 {
		c.SpoolMemory = 1 << 20
	}
	if c.Lock == "" {
		c.Lock = DefaultLock
	}
	if c.TakeoverAfter == 0 {
		c.TakeoverAfter = DefaultTakeoverAfter
	}
	if m := c.UIDLMap; m != nil {
		if m.MaxMessages == 0 {
			m.MaxMessages = DefaultUIDLMapMaxMessages
		}
		if m.MaxBytes == 0 {
			m.MaxBytes = DefaultUIDLMapMaxBytes
		}
	}
}

// Validate checks the section; each message starts with its key.
func (c *MaildropConfig) Validate() []error {
	var errs []error
	if _, err := FormatUIDL(c.UIDLFormat, 1, 1); err != nil {
		errs = append(errs, fmt.Errorf("uidl_format: %v", err))
	}
	switch {
	case c.Delete == DeleteExpunge, c.Delete == DeleteFlag:
	case strings.HasPrefix(c.Delete, DeleteMovePfx) && len(c.Delete) > len(DeleteMovePfx):
	default:
		errs = append(errs, fmt.Errorf("delete: %q is not one of expunge, flag, move:MAILBOX", c.Delete))
	}
	switch c.Lock {
	case LockExclusive, LockTakeover, LockNone:
	default:
		errs = append(errs, fmt.Errorf("lock: %q is not one of exclusive, takeover, none", c.Lock))
	}
	if c.Reuse < 0 {
		errs = append(errs, fmt.Errorf("reuse: %v must not be negative (0 turns reuse off)", c.Reuse))
	}
	if c.TakeoverAfter < 0 {
		errs = append(errs, fmt.Errorf("takeover_after: %v must not be negative", c.TakeoverAfter))
	}
	if m := c.UIDLMap; m != nil {
		switch {
		case strings.TrimSpace(m.Store) == "":
			errs = append(errs, fmt.Errorf("uidl_map.store: required: a file for the embedded store (/var/lib/mailgate/uidl.db) or redis"))
		case m.Store != UIDLMapRedis && !filepath.IsAbs(m.Store):
			errs = append(errs, fmt.Errorf("uidl_map.store: %q must be an absolute path (or redis)", m.Store))
		}
		if m.MaxMessages < 0 {
			errs = append(errs, fmt.Errorf("uidl_map.max_messages: %d must not be negative", m.MaxMessages))
		}
	}
	if (c.Cache.MaxBytes != nil && *c.Cache.MaxBytes < 0) || c.Cache.MaxMessageBytes < 0 {
		errs = append(errs, fmt.Errorf("cache: sizes must not be negative"))
	}
	return errs
}

// Size is a number of bytes written as 4096, 64KiB, 256MiB, 1GiB (also KB, MB,
// GB as powers of 1000).
type Size int64

// UnmarshalText parses a size; yaml decoding uses it.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

func (s Size) String() string {
	for _, u := range []struct {
		n    int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if s != 0 && int64(s)%u.n == 0 {
			return strconv.FormatInt(int64(s)/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// ParseSize parses "256MiB", "4 KiB", "1000", "10MB".
func ParseSize(text string) (Size, error) {
	t := strings.TrimSpace(text)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)", text)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", text, err)
	}
	units := map[string]int64{"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gib": 1 << 30, "kb": 1000, "mb": 1000 * 1000, "gb": 1000 * 1000 * 1000}
	mul, ok := units[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (B, KiB, MiB, GiB, KB, MB, GB)", text, t[i:])
	}
	if n > (1<<62)/mul {
		return 0, fmt.Errorf("size %q is too large", text)
	}
	return Size(n * mul), nil
}
