package upstream

import (
	"math"
	"strconv"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// CacheKey identifies one message body on one backend for one user. User is
// part of the key so that one user's body is never served to another user's
// session, even when two users share a mailbox on the backend. UIDVALIDITY is part of it so that bodies of a recreated mailbox
// are never served for the new messages that reuse their UIDs (RFC 3501
// §2.3.1.1); stale entries simply age out.
//
// Server (the address dialed) is in it as well as Backend: the servers of a
// pool may be shards with stores of their own, whose UIDVALIDITY and UIDs can
// coincide (UIDVALIDITY is often a creation time).
type CacheKey struct {
	Backend, Server, User, Mailbox string
	UIDValidity                    uint32
	UID                            imap.UID
}

// String is the key's singleflight name: fields are length-prefixed so that
// no two keys share a name.
func (k CacheKey) String() string {
	b := make([]byte, 0, 64)
	for _, s := range []string{k.Backend, k.Server, k.User, k.Mailbox} {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	b = strconv.AppendUint(b, uint64(k.UIDValidity), 10)
	b = append(b, '/')
	b = strconv.AppendUint(b, uint64(k.UID), 10)
	return string(b)
}

// CacheStats are the cache's counters since it was made, for metrics.
type CacheStats struct {
	Hits, Misses, Evictions uint64
	Bytes                   int64 // bytes held now
	Items                   int   // bodies held now
}

// Cache is an LRU of message bodies bounded by their total size (not by
// their count, which is all golang-lru offers) and by the size of one body,
// so a single huge message cannot flush everybody's cache. It is safe for
// concurrent use. Cached slices are shared and must never be modified.
//
// A nil *Cache, or one with maxBytes <= 0, caches nothing.
type Cache struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[CacheKey, []byte]
	bytes    int64
	maxBytes int64
	maxItem  int64
	evicting bool // inside add: removals are replacements, not evictions
	stats    CacheStats
}

// NewCache makes a cache of at most maxBytes in total and maxItem per body.
func NewCache(maxBytes, maxItem int64) *Cache {
	c := &Cache{maxBytes: maxBytes, maxItem: min(maxItem, maxBytes)}
	// The count bound is never reached: the byte bound evicts first.
	l, err := simplelru.NewLRU[CacheKey, []byte](math.MaxInt32, c.onEvict)
	if err != nil {
		panic(err) // only for size <= 0
	}
	c.lru = l
	return c
}

// onEvict runs under c.mu, from the LRU's Remove/RemoveOldest.
func (c *Cache) onEvict(_ CacheKey, v []byte) {
	c.bytes -= int64(len(v))
	if c.evicting {
		c.stats.Evictions++
	}
}

// fits reports whether a body of n bytes would be cached.
func (c *Cache) fits(n int64) bool {
	return c != nil && c.maxBytes > 0 && n <= c.maxItem
}

// itemMax is the largest body the cache takes; 0 when it is disabled.
func (c *Cache) itemMax() int64 {
	if c == nil || c.maxBytes <= 0 {
		return 0
	}
	return c.maxItem
}

// Get returns the body and counts a hit or a miss.
func (c *Cache) Get(k CacheKey) ([]byte, bool) {
	if c == nil || c.maxBytes <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.lru.Get(k)
	if ok {
		c.stats.Hits++
	} else {
		c.stats.Misses++
	}
	return v, ok
}

// peek returns the body without counting or touching its recency.
func (c *Cache) peek(k CacheKey) ([]byte, bool) {
	if c == nil || c.maxBytes <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Peek(k)
}

// Add stores a body the caller will not modify again. Bodies larger than
// the per-item bound are not stored. The least recently used bodies are
// evicted until the total fits.
func (c *Cache) Add(k CacheKey, v []byte) {
	if !c.fits(int64(len(v))) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(k) // a replacement: onEvict keeps the byte count right
	c.lru.Add(k, v)
	c.bytes += int64(len(v))
	c.evicting = true
	for c.bytes > c.maxBytes {
		if _, _, ok := c.lru.RemoveOldest(); !ok {
			break
		}
	}
	c.evicting = false
}

// Stats returns a copy of the counters.
func (c *Cache) Stats() CacheStats {
	if c == nil {
		return CacheStats{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Bytes = c.bytes
	s.Items = c.lru.Len()
	return s
}
