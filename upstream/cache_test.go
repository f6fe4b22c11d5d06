package upstream

import (
	"bytes"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func key(user string, uid imap.UID) CacheKey {
	return CacheKey{Backend: "b", User: user, Mailbox: "INBOX", UIDValidity: 7, UID: uid}
}

func TestCacheByteBoundAndEviction(t *testing.T) {
	c := NewCache(100, 40)
	c.Add(key("a", 1), bytes.Repeat([]byte("1"), 40))
	c.Add(key("a", 2), bytes.Repeat([]byte("2"), 40))
	if _, ok := c.Get(key("a", 1)); !ok { // 1 is now the most recent
		t.Fatal("miss for a body just added")
	}
	c.Add(key("a", 3), bytes.Repeat([]byte("3"), 40)) // 120 > 100: evicts 2
	s := c.Stats()
	if s.Bytes != 80 || s.Items != 2 || s.Evictions != 1 {
		t.Fatalf("stats %+v, want 80 bytes, 2 items, 1 eviction", s)
	}
	if _, ok := c.Get(key("a", 2)); ok {
		t.Error("the least recently used body survived")
	}
	if v, ok := c.Get(key("a", 3)); !ok || v[0] != '3' {
		t.Error("the newest body is missing")
	}

	// Too big for one item: not cached, nothing evicted.
	c.Add(key("a", 4), make([]byte, 41))
	if _, ok := c.Get(key("a", 4)); ok {
		t.Error("a body over max_message_bytes was cached")
	}
	// Replacing a key keeps the byte count right.
	c.Add(key("a", 3), []byte("short"))
	if s := c.Stats(); s.Bytes != 45 || s.Items != 2 || s.Evictions != 1 {
		t.Errorf("after a replacement: %+v, want 45 bytes, 2 items, still 1 eviction", s)
	}
	s = c.Stats()
	if s.Hits != 2 || s.Misses != 2 {
		t.Errorf("hits %d misses %d, want 2 and 2", s.Hits, s.Misses)
	}
}

func TestCacheKeyIncludesUserAndUIDValidity(t *testing.T) {
	c := NewCache(1000, 1000)
	c.Add(key("alice", 1), []byte("alice"))
	if _, ok := c.Get(key("bob", 1)); ok {
		t.Error("bob hit alice's body")
	}
	k := key("alice", 1)
	k.UIDValidity++
	if _, ok := c.Get(k); ok {
		t.Error("a body from another UIDVALIDITY was served")
	}
	// Another server of the same backend (a shard of a pool) never shares
	// bodies, even with equal UIDVALIDITY and UID.
	k = key("alice", 1)
	k.Server = "10.0.0.2:143"
	if _, ok := c.Get(k); ok {
		t.Error("a body from another server of the pool was served")
	}
	// The singleflight names differ too, also for fields that would
	// collide if simply concatenated.
	a := CacheKey{Backend: "b", User: "ab", Mailbox: "c"}
	b := CacheKey{Backend: "b", User: "a", Mailbox: "bc"}
	if a.String() == b.String() {
		t.Errorf("keys %+v and %+v share the name %q", a, b, a.String())
	}
}

func TestCacheDisabled(t *testing.T) {
	for _, c := range []*Cache{nil, NewCache(0, 100)} {
		c.Add(key("a", 1), []byte("x"))
		if _, ok := c.Get(key("a", 1)); ok {
			t.Error("a disabled cache returned a body")
		}
		if c.fits(1) {
			t.Error("a disabled cache claims a body fits")
		}
		_ = c.Stats()
	}
}
