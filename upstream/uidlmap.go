package upstream

// The UIDL map (pop3.uidl_map): POP3 unique-ids that survive a change of
// UIDVALIDITY or of backend.
//
// RFC 1939 §7 wants a unique-id that "persists across sessions" and is never
// reused in a maildrop. UIDVALIDITY+UID (FormatUIDL) persist only while the
// backend keeps UIDVALIDITY (RFC 3501 §2.3.1.1); a restored mailbox, a
// migration or a move to another backend gives every message a new UID, and
// every POP3 client downloads everything again. The map remembers, per user
// and mailbox, the UIDL each message was shown with, keyed by what still
// identifies the message when its UID does not: a digest of its header block
// and its size, with byte-identical duplicates told apart by their order.
//
// Invariants kept here:
//   - The UIDLs of one maildrop are unique: the entries of a map have
//     distinct UIDLs, a session shows each entry at most once, and a new
//     UIDL is checked against every entry before it is given out.
//   - While the map's (backend, UIDVALIDITY) holds, a message the map knows
//     by UID keeps its UIDL and costs nothing: no header is fetched.
//   - A new UIDL never repeats an old one: it is FormatUIDL's, as without the
//     map, in the map's first epoch; every later confirmation against
//     another (backend, UIDVALIDITY) starts a new epoch, and UIDLs made in
//     epoch E > 0 end in "-" + E (base 36), so they differ from every UIDL
//     made before, remembered or forgotten (as long as pop3.uidl_format
//     itself never ends in "-" and base-36 digits).
//   - A map holds at most maxEntries entries: the messages present first,
//     then orphans (entries no message of the latest snapshot matched: kept
//     so that a mailbox copied in two steps still matches), oldest dropped
//     first.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
)

// uidlDigestLen is how much of the SHA-256 of a header block an entry keeps:
// 64 bits, with the size beside it, make an accidental match between two
// messages of one mailbox of even a million messages a chance of about
// 1 in 3*10^7.
const uidlDigestLen = 8

// uidlKey is what identifies a message across UIDVALIDITY changes.
type uidlKey struct {
	digest [uidlDigestLen]byte // of the header block (headerDigest)
	size   int64               // RFC822.SIZE (POP3: the LIST size)
}

// uidlEntry is one remembered message.
type uidlEntry struct {
	key uidlKey
	// uid is the message's UID under the map's (backend, uidValidity); 0
	// for an orphan (not matched by the latest snapshot) or an imported
	// entry (never seen on a backend yet).
	uid  uint32
	uidl string
}

// uidlMap is one user's map for one mailbox.
type uidlMap struct {
	// backend and uidValidity are what the map was last confirmed against:
	// while both hold, entries are found by UID. An imported map has
	// neither.
	backend     string
	uidValidity uint32
	epoch       uint32
	// entries: those with a UID, in UID order, then the orphans, oldest
	// first.
	entries []uidlEntry
}

// Encoding of a map (one record per user and mailbox in the store):
//
//	version 1 | uvarint len(backend) | backend | uvarint uidValidity | uvarint epoch | uvarint n
//	n times: 8 bytes digest | uvarint size | uvarint uid | uvarint len(uidl) | uidl
//
// A message costs 8 + about 3 + 3 + 1 + len(uidl) bytes: 31 with the
// default 16-character UIDL.
const uidlMapVersion = 1

func (m *uidlMap) encode() []byte {
	size := 16 + len(m.backend)
	for _, e := range m.entries {
		size += uidlDigestLen + 12 + len(e.uidl)
	}
	b := make([]byte, 0, size)
	b = append(b, uidlMapVersion)
	b = binary.AppendUvarint(b, uint64(len(m.backend)))
	b = append(b, m.backend...)
	b = binary.AppendUvarint(b, uint64(m.uidValidity))
	b = binary.AppendUvarint(b, uint64(m.epoch))
	b = binary.AppendUvarint(b, uint64(len(m.entries)))
	for _, e := range m.entries {
		b = append(b, e.key.digest[:]...)
		b = binary.AppendUvarint(b, uint64(e.key.size))
		b = binary.AppendUvarint(b, uint64(e.uid))
		b = binary.AppendUvarint(b, uint64(len(e.uidl)))
		b = append(b, e.uidl...)
	}
	return b
}

var errUIDLMapCorrupt = errors.New("uidl map record is corrupt")

// decodeUIDLMap reads a record; nil or empty data is no map (nil, nil).
func decodeUIDLMap(b []byte) (*uidlMap, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if b[0] != uidlMapVersion {
		return nil, fmt.Errorf("%w: version %d", errUIDLMapCorrupt, b[0])
	}
	r := uidlReader{b: b[1:]}
	m := &uidlMap{}
	m.backend = string(r.bytes(r.uvarint(1 << 16)))
	m.uidValidity = uint32(r.uvarint(1<<32 - 1))
	m.epoch = uint32(r.uvarint(1<<32 - 1))
	n := r.uvarint(uint64(len(b)) / (uidlDigestLen + 4)) // each entry takes at least 12 bytes
	m.entries = make([]uidlEntry, 0, n)
	for range n {
		var e uidlEntry
		copy(e.key.digest[:], r.bytes(uidlDigestLen))
		e.key.size = int64(r.uvarint(1 << 62))
		e.uid = uint32(r.uvarint(1<<32 - 1))
		e.uidl = string(r.bytes(r.uvarint(70)))
		if r.err == nil && !validUIDL(e.uidl) {
			r.err = fmt.Errorf("%w: UIDL %q", errUIDLMapCorrupt, e.uidl)
		}
		m.entries = append(m.entries, e)
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d bytes after the last entry", errUIDLMapCorrupt, len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	return m, nil
}

// uidlReader reads a record; the first error sticks and later reads return
// zero values.
type uidlReader struct {
	b   []byte
	err error
}

func (r *uidlReader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.err = fmt.Errorf("%w: bad number", errUIDLMapCorrupt)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *uidlReader) bytes(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.err = fmt.Errorf("%w: truncated", errUIDLMapCorrupt)
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

// validUIDL: RFC 1939 §7, 1 to 70 characters in the range 0x21 to 0x7E.
func validUIDL(s string) bool {
	if len(s) < 1 || len(s) > 70 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// headerDigester hashes a header block with its line ends made CRLF (a lone
// LF counts as CRLF), so that a server that stores LF line ends and one that
// stores CRLF agree.
type headerDigester struct {
	h    hash.Hash
	last byte
}

func newHeaderDigester() *headerDigester { return &headerDigester{h: sha256.New()} }

func (d *headerDigester) Write(p []byte) (int, error) {
	start := 0
	for i, c := range p {
		if c != '\n' {
			continue
		}
		prev := d.last
		if i > 0 {
			prev = p[i-1]
		}
		if prev != '\r' {
			d.h.Write(p[start:i])
			d.h.Write([]byte{'\r'})
			start = i
		}
	}
	d.h.Write(p[start:])
	if len(p) > 0 {
		d.last = p[len(p)-1]
	}
	return len(p), nil
}

func (d *headerDigester) sum() (out [uidlDigestLen]byte) {
	copy(out[:], d.h.Sum(nil))
	return out
}

// headerDigest is the digest of a message's header block: what IMAP's
// BODY[HEADER] returns (RFC 3501 §6.4.5: the header fields and the blank
// line after them), the same bytes as POP3's TOP n 0 (RFC 1939 §7).
func headerDigest(r io.Reader) ([uidlDigestLen]byte, error) {
	d := newHeaderDigester()
	if _, err := io.Copy(d, r); err != nil {
		return [uidlDigestLen]byte{}, err
	}
	return d.sum(), nil
}

// snapMsg is a message of a snapshot as the matcher sees it.
type snapMsg struct {
	uid  uint32
	size int64
}

// same reports whether the map was confirmed against this backend and
// UIDVALIDITY: its UIDs are then the backend's.
func (m *uidlMap) same(backend string, uidValidity uint32) bool {
	return m != nil && m.backend != "" && m.backend == backend && m.uidValidity == uidValidity
}

// needDigests lists the UIDs of the snapshot whose header digest the
// matcher needs: none the map knows by UID while (backend, UIDVALIDITY)
// holds; all of them when it does not (or there is no map yet).
func (m *uidlMap) needDigests(backend string, uidValidity uint32, snap []snapMsg) []uint32 {
	known := map[uint32]bool{}
	if m.same(backend, uidValidity) {
		for _, e := range m.entries {
			if e.uid != 0 {
				known[e.uid] = true
			}
		}
	}
	var need []uint32
	for _, s := range snap {
		if !known[s.uid] {
			need = append(need, s.uid)
		}
	}
	return need
}

// uidlMatch is the outcome of matching a snapshot against a map.
type uidlMatch struct {
	uidls []string // one per snapshot message
	next  *uidlMap // the map to store
	// matched counts the messages that kept a UIDL by digest (after a
	// change, or from an orphan); fresh those that got a new one.
	matched, fresh int
}

// matchUIDLs gives every message of the snapshot (sorted by UID) its UIDL
// and makes the map to store next. digests holds the header digests of the
// messages needDigests listed; a listed message without one (it was
// expunged before its header could be fetched) gets a new UIDL and is not
// remembered. format is pop3.uidl_format; maxEntries bounds the new map.
//
// old may be nil (no map yet: the first epoch, whose UIDLs are exactly
// FormatUIDL's, as without the map).
func matchUIDLs(old *uidlMap, backend string, uidValidity uint32, snap []snapMsg,
	digests map[uint32][uidlDigestLen]byte, format string, maxEntries int) (uidlMatch, error) {
	same := old.same(backend, uidValidity)
	next := &uidlMap{backend: backend, uidValidity: uidValidity}
	switch {
	case old == nil:
	case same:
		next.epoch = old.epoch
	default:
		next.epoch = old.epoch + 1
	}

	byUID := map[uint32]int{} // under same: UID -> index in old.entries
	var orphans []int         // indexes in old.entries that may match by digest
	if old != nil {
		for i, e := range old.entries {
			switch {
			case same && e.uid != 0:
				byUID[e.uid] = i
			case same:
				orphans = append(orphans, i)
			}
		}
		if !same {
			// Old UIDs mean nothing now; entries confirmed last come
			// first, in UID order, then the older orphans.
			for i := range old.entries {
				orphans = append(orphans, i)
			}
		}
	}
	queue := map[uidlKey][]int{}
	for _, i := range orphans {
		k := old.entries[i].key
		queue[k] = append(queue[k], i)
	}

	res := uidlMatch{uidls: make([]string, len(snap))}
	taken := make(map[int]bool)
	type pending struct {
		i      int
		key    uidlKey
		record bool
	}
	var present []uidlEntry
	var fresh []pending
	for i, s := range snap {
		if j, ok := byUID[s.uid]; ok {
			e := old.entries[j]
			res.uidls[i] = e.uidl
			present = append(present, e)
			taken[j] = true
			continue
		}
		d, ok := digests[s.uid]
		if !ok {
			fresh = append(fresh, pending{i: i})
			continue
		}
		k := uidlKey{digest: d, size: s.size}
		if q := queue[k]; len(q) > 0 {
			// Byte-identical duplicates: the k-th of the snapshot is the
			// k-th the map remembers.
			j := q[0]
			queue[k] = q[1:]
			e := old.entries[j]
			taken[j] = true
			res.uidls[i] = e.uidl
			e.uid = s.uid
			present = append(present, e)
			res.matched++
			continue
		}
		fresh = append(fresh, pending{i: i, key: k, record: true})
	}

	// Orphans stay, oldest first: under same, those that were orphans
	// already; otherwise every entry not taken.
	var kept []uidlEntry
	for _, j := range orphans {
		if !taken[j] {
			e := old.entries[j]
			e.uid = 0
			kept = append(kept, e)
		}
	}
	used := make(map[string]bool, len(present)+len(kept)+len(fresh))
	for _, e := range present {
		used[e.uidl] = true
	}
	for _, e := range kept {
		used[e.uidl] = true
	}
	// New UIDLs, in UID order; present stays in UID order.
	var all []uidlEntry
	pi := 0
	for _, p := range fresh {
		s := snap[p.i]
		u, err := newUIDL(format, s.uid, uidValidity, next.epoch, used)
		if err != nil {
			return uidlMatch{}, err
		}
		used[u] = true
		res.uidls[p.i] = u
		res.fresh++
		if !p.record {
			continue
		}
		for pi < len(present) && present[pi].uid < s.uid {
			all = append(all, present[pi])
			pi++
		}
		all = append(all, uidlEntry{key: p.key, uid: s.uid, uidl: u})
	}
	all = append(all, present[pi:]...)

	// The bound: orphans go first (oldest first), then the newest
	// messages (they are shown the UIDL computed here, and again next time
	// as long as the epoch holds).
	if over := len(all) + len(kept) - maxEntries; maxEntries > 0 && over > 0 {
		drop := min(over, len(kept))
		kept = kept[drop:]
		over -= drop
		all = all[:len(all)-over]
	}
	next.entries = append(all, kept...)
	res.next = next
	return res, nil
}

// newUIDL makes the UIDL of a message the map does not know: FormatUIDL's
// in the first epoch (exactly what it would be without the map), with the
// epoch as a suffix after that, and a further suffix in the unlikely case
// that the result is taken or too long.
func newUIDL(format string, uid, uidValidity, epoch uint32, used map[string]bool) (string, error) {
	base, err := FormatUIDL(format, uid, uidValidity)
	if err != nil {
		return "", fmt.Errorf("pop3.uidl_format: %w", err)
	}
	u := base
	if epoch > 0 {
		u = base + "-" + strconv.FormatUint(uint64(epoch), 36)
	}
	if len(u) > 70 {
		// RFC 1939 §7: at most 70 characters.
		u = "mg" + strconv.FormatUint(uint64(uidValidity), 36) + "-" + strconv.FormatUint(uint64(uid), 36) +
			"-" + strconv.FormatUint(uint64(epoch), 36)
	}
	for k := 1; used[u]; k++ {
		u = fmt.Sprintf("%s.%s", base[:min(len(base), 50)], strconv.FormatUint(uint64(epoch)<<16|uint64(k), 36))
	}
	return u, nil
}
