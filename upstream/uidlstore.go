package upstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// UIDLKey names one UIDL map: a user and a mailbox.
//
// User is the backend-independent identity: the name the client logged in
// with, before routing rewrote it for a backend, case-folded (UIDLIdentity).
// It is what stays the same when routing moves the user to another backend
// (where the backend's name for the user may differ), so the map follows the
// user; two spellings of one account that routing joins (an alias, a bare
// local part) are two maps.
type UIDLKey struct {
	User    string
	Mailbox string
}

// UIDLIdentity is the map identity of a login name: case-folded, as IMAP
// servers commonly fold login names (Dovecot's auth_username_format %Lu).
func UIDLIdentity(login string) string { return strings.ToLower(login) }

// UIDLStore keeps UIDL maps: one opaque record per UIDLKey. The embedded
// store (UIDLBolt) implements it, and so does the cluster's shared store on
// Redis (gateway/cluster.UIDLStore).
type UIDLStore interface {
	// Load returns the record of key, nil if there is none. The caller
	// must not modify it.
	Load(ctx context.Context, key UIDLKey) ([]byte, error)
	// Update replaces the record of key by what fn returns, atomically
	// with respect to other Updates of key: fn gets the current record
	// (nil if none). A store may call fn more than once (optimistic
	// concurrency); fn must not keep old. An error from fn aborts the
	// update and is returned. ErrUIDLStoreFull: the store is at its size
	// bound and key has no record yet.
	Update(ctx context.Context, key UIDLKey, fn func(old []byte) ([]byte, error)) error
}

// ErrUIDLStoreFull is an Update refused by the store's size bound
// (pop3.uidl_map.max_bytes): at the bound no new map is made; the user's
// UIDLs are then FormatUIDL's, as without the map.
var ErrUIDLStoreFull = errors.New("uidl map store is full (pop3.uidl_map.max_bytes)")

// UIDLBolt is the embedded UIDL store: one bbolt file that one process at a
// time opens (bbolt takes an exclusive lock on the file). Layout: bucket
// "maps" holds a bucket per user, which holds a record per mailbox; bucket
// "meta" holds the total size of the records ("bytes"), which the size bound
// checks. bbolt has one writer at a time and readers that never wait, so
// concurrent sessions of many users are safe; a write is one short
// transaction (no network inside).
type UIDLBolt struct {
	db       *bolt.DB
	maxBytes int64 // 0: no bound
}

var _ UIDLStore = (*UIDLBolt)(nil)

var (
	boltMaps  = []byte("maps")
	boltMeta  = []byte("meta")
	boltBytes = []byte("bytes")
)

// OpenUIDLBolt opens (or creates) the store at path. maxBytes bounds the
// total size of the records (0: unbounded). If another process has the file
// open, it fails after a second with an error that says so.
func OpenUIDLBolt(path string, maxBytes int64) (*UIDLBolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("uidl map store %s is open in another process (a running mailgate serve?): "+
			"one process at a time uses the embedded store", path)
	}
	if err != nil {
		return nil, fmt.Errorf("uidl map store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(boltMaps); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(boltMeta)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("uidl map store %s: %w", path, err)
	}
	return &UIDLBolt{db: db, maxBytes: maxBytes}, nil
}

// Close closes the file; later calls fail.
func (s *UIDLBolt) Close() error { return s.db.Close() }

// Load implements UIDLStore.
func (s *UIDLBolt) Load(ctx context.Context, key UIDLKey) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if u := tx.Bucket(boltMaps).Bucket([]byte(key.User)); u != nil {
			if v := u.Get([]byte(key.Mailbox)); v != nil {
				out = append([]byte(nil), v...) // valid only inside the transaction
			}
		}
		return nil
	})
	return out, err
}

// Update implements UIDLStore: fn runs once, inside the write transaction.
func (s *UIDLBolt) Update(ctx context.Context, key UIDLKey, fn func(old []byte) ([]byte, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if key.User == "" {
		return errors.New("uidl map: empty user")
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		u, err := tx.Bucket(boltMaps).CreateBucketIfNotExists([]byte(key.User))
		if err != nil {
			return err
		}
		old := u.Get([]byte(key.Mailbox))
		next, err := fn(old)
		if err != nil {
			return err
		}
		meta := tx.Bucket(boltMeta)
		total := int64(getUint64(meta.Get(boltBytes)))
		grow := int64(len(next)) - int64(len(old))
		if old == nil {
			grow += int64(len(key.Mailbox))
		}
		// The bound refuses new maps only. A map that exists keeps
		// being updated (within max_messages): refusing its growth would
		// lose what a session showed, and the next session after a
		// change could give those UIDLs to other messages.
		if old == nil && s.maxBytes > 0 && total+grow > s.maxBytes {
			return ErrUIDLStoreFull
		}
		if err := u.Put([]byte(key.Mailbox), next); err != nil {
			return err
		}
		return meta.Put(boltBytes, binary.BigEndian.AppendUint64(nil, uint64(max(0, total+grow))))
	})
}

// Drop forgets every map of user (a UIDLIdentity) and says how many there
// were: for a deleted user.
func (s *UIDLBolt) Drop(user string) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		maps := tx.Bucket(boltMaps)
		u := maps.Bucket([]byte(user))
		if u == nil {
			return nil
		}
		var freed int64
		if err := u.ForEach(func(k, v []byte) error {
			n++
			freed += int64(len(k) + len(v))
			return nil
		}); err != nil {
			return err
		}
		if err := maps.DeleteBucket([]byte(user)); err != nil {
			return err
		}
		meta := tx.Bucket(boltMeta)
		total := int64(getUint64(meta.Get(boltBytes)))
		return meta.Put(boltBytes, binary.BigEndian.AppendUint64(nil, uint64(max(0, total-freed))))
	})
	return n, err
}

// UIDLStoreStats describe the store's content.
type UIDLStoreStats struct {
	Users, Maps, Messages int
	Corrupt               int   // records that do not decode
	Bytes                 int64 // the records (what max_bytes bounds)
	FileBytes             int64 // the bbolt file; 0 for a store without a file
	// Measured is, for a store that counts Bytes apart from the records
	// (the Redis store: a counter written after each record, so a crash
	// between the two leaves it off), the records' size summed one by one
	// as Stats read them; -1 where Bytes is exact (bbolt: one transaction).
	Measured int64
}

// AddRecord counts one stored record in st, for a store's Stats: a map and
// its remembered messages, or a corrupt record.
func (st *UIDLStoreStats) AddRecord(rec []byte) {
	st.Maps++
	if m, err := decodeUIDLMap(rec); err != nil {
		st.Corrupt++
	} else if m != nil {
		st.Messages += len(m.entries)
	}
}

// Stats counts users, maps and remembered messages.
func (s *UIDLBolt) Stats() (UIDLStoreStats, error) {
	st := UIDLStoreStats{Measured: -1}
	err := s.db.View(func(tx *bolt.Tx) error {
		st.FileBytes = tx.Size()
		st.Bytes = int64(getUint64(tx.Bucket(boltMeta).Get(boltBytes)))
		return tx.Bucket(boltMaps).ForEachBucket(func(user []byte) error {
			st.Users++
			return tx.Bucket(boltMaps).Bucket(user).ForEach(func(_, v []byte) error {
				st.AddRecord(v)
				return nil
			})
		})
	})
	return st, err
}

func getUint64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// UIDLImportMessage is one message of an old POP3 server, for ImportUIDLs.
type UIDLImportMessage struct {
	UIDL   string // the old server's UIDL
	Size   int64  // its LIST size: RFC822.SIZE on the IMAP backend
	Header []byte // its header block, as TOP n 0 gives it (unstuffed, with the blank line)
}

// UIDLImportResult counts what ImportUIDLs did.
type UIDLImportResult struct {
	Recorded int
	// Skipped: messages whose UIDL breaks RFC 1939 §7 (1-70 characters,
	// 0x21-0x7E) or repeats an earlier one; they get new UIDLs.
	Skipped int
}

// ErrUIDLMapExists: the user has a map already (has used mailgate); an
// import would forget what mailgate showed since.
var ErrUIDLMapExists = errors.New("the user has a UIDL map already (sessions through mailgate happened); replace it to import anyway")

// ImportUIDLs makes key's map from an old POP3 server's UIDLs, in the old
// server's order: the user's next session matches its messages by header
// digest and size (duplicates by order) and shows them these UIDLs; the
// others get new ones. An existing map is replaced only with replace.
func ImportUIDLs(ctx context.Context, store UIDLStore, key UIDLKey, msgs []UIDLImportMessage, replace bool) (UIDLImportResult, error) {
	var res UIDLImportResult
	m := &uidlMap{}
	seen := map[string]bool{}
	for _, msg := range msgs {
		if !validUIDL(msg.UIDL) || seen[msg.UIDL] {
			res.Skipped++
			continue
		}
		seen[msg.UIDL] = true
		d, _ := headerDigest(bytes.NewReader(msg.Header))
		m.entries = append(m.entries, uidlEntry{key: uidlKey{digest: d, size: msg.Size}, uidl: msg.UIDL})
	}
	res.Recorded = len(m.entries)
	rec := m.encode()
	err := store.Update(ctx, key, func(old []byte) ([]byte, error) {
		if old != nil && !replace {
			return nil, ErrUIDLMapExists
		}
		return rec, nil
	})
	return res, err
}
