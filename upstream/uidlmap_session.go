package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
)

// UseUIDLMap makes the maildrops keep their UIDLs in s (pop3.uidl_map).
// Call it before the first Open; without it UIDLs are FormatUIDL's.
// Its bounds are those of the configuration's pop3.uidl_map (defaults if
// there is none).
func (m *Maildrops) UseUIDLMap(s UIDLStore) {
	if m.cfg.UIDLMap == nil {
		m.cfg.UIDLMap = &UIDLMapConfig{}
		m.cfg.ApplyDefaults()
	}
	m.uidl = s
}

// errUIDLConflict: another session changed the map between our read and our
// write, and what it holds needs headers we did not fetch.
var errUIDLConflict = errors.New("uidl map changed meanwhile")

// uidlSetMax bounds the text of one UID set in the header FETCH: Dovecot
// takes command lines of up to 64 KiB, other servers less.
const uidlSetMax = 4000

// mapUIDLs replaces the snapshot's UIDLs by the map's (uidlmap.go) and
// stores what the session learned. It runs in Open, after the snapshot and
// before anyone else uses the connection. While the map's backend and
// UIDVALIDITY hold and no message is new, it costs one read of the store:
// nothing is fetched and nothing written. Otherwise the header blocks of the
// messages the map cannot place by UID are fetched (one UID FETCH
// BODY.PEEK[HEADER], so \Seen is untouched: RFC 3501 §6.4.5) and matched.
//
// A store that cannot be read, or a corrupt record, fails the session
// (ErrUnavailable): showing other UIDLs would make clients download
// everything again.
func (d *Maildrop) mapUIDLs(ctx context.Context) error {
	start := time.Now()
	store := d.m.uidl
	login := d.target.Login
	if login == "" {
		login = d.user
	}
	key := UIDLKey{User: UIDLIdentity(login), Mailbox: d.mailbox}
	snap := make([]snapMsg, len(d.uids))
	for i, uid := range d.uids {
		snap[i] = snapMsg{uid: uint32(uid), size: d.snapSizes[i]}
	}
	maxEntries := d.m.cfg.UIDLMap.MaxMessages
	digests := map[uint32][uidlDigestLen]byte{}
	tried := map[uint32]bool{}
	fetch := func(need []uint32) error {
		var todo []uint32
		for _, uid := range need {
			if !tried[uid] {
				tried[uid] = true
				todo = append(todo, uid)
			}
		}
		return d.headerDigests(ctx, todo, digests)
	}
	unavailable := func(err error) error {
		d.log.Error("uidl map store failed", zap.String("uidl_user", key.User), zap.Error(err))
		return fmt.Errorf("%w: uidl map: %v", ErrUnavailable, err)
	}

	for attempt := 1; ; attempt++ {
		raw, err := store.Load(ctx, key)
		if err != nil {
			return unavailable(err)
		}
		old, err := decodeUIDLMap(raw)
		if err != nil {
			return unavailable(err)
		}
		same := old.same(d.target.Name, d.uidValidity)
		if err := fetch(old.needDigests(d.target.Name, d.uidValidity, snap)); err != nil {
			return err
		}
		res, err := matchUIDLs(old, d.target.Name, d.uidValidity, snap, digests, d.m.cfg.UIDLFormat, maxEntries)
		if err != nil {
			return err
		}
		enc := res.next.encode()
		if !bytes.Equal(enc, raw) {
			err = store.Update(ctx, key, func(cur []byte) ([]byte, error) {
				if bytes.Equal(cur, raw) {
					return enc, nil
				}
				// Another session of the user (pop3.lock: none, or
				// another instance) wrote meanwhile: match on what it
				// holds, if the headers fetched suffice.
				m, err := decodeUIDLMap(cur)
				if err != nil {
					return nil, err
				}
				for _, uid := range m.needDigests(d.target.Name, d.uidValidity, snap) {
					if !tried[uid] {
						return nil, errUIDLConflict
					}
				}
				res, err = matchUIDLs(m, d.target.Name, d.uidValidity, snap, digests, d.m.cfg.UIDLFormat, maxEntries)
				if err != nil {
					return nil, err
				}
				return res.next.encode(), nil
			})
		}
		switch {
		case errors.Is(err, errUIDLConflict) && attempt < 3:
			continue
		case errors.Is(err, ErrUIDLStoreFull):
			// No map for this user: the UIDLs are FormatUIDL's (the
			// first epoch's), exactly as without the map.
			d.log.Warn("uidl map store is full (pop3.uidl_map.max_bytes); this user gets no map", zap.String("uidl_user", key.User))
		case err != nil:
			return unavailable(err)
		}
		d.uidls = res.uidls
		lvl := zap.DebugLevel
		if !same && old != nil {
			lvl = zap.InfoLevel // a rematch: UIDVALIDITY or the backend changed
		}
		d.log.Log(lvl, "uidl map", zap.String("uidl_user", key.User), zap.Bool("rematch", !same && old != nil),
			zap.Int("headers_fetched", len(tried)), zap.Int("matched", res.matched), zap.Int("new", res.fresh),
			zap.Int("remembered", len(res.next.entries)), zap.Duration("elapsed", time.Since(start)))
		return nil
	}
}

// headerDigests fetches the header blocks of uids (sorted) and puts their
// digests in out. The bytes are hashed as they arrive, never kept. A
// message the backend no longer has (expunged since the snapshot) is simply
// not answered for (RFC 3501 §6.4.8) and gets no digest.
func (d *Maildrop) headerDigests(ctx context.Context, uids []uint32, out map[uint32][uidlDigestLen]byte) error {
	if len(uids) == 0 {
		return nil
	}
	wd := watch(d.to.Command, d.kill)
	stopCtx := context.AfterFunc(ctx, d.kill)
	defer stopCtx()
	fail := func(err error) error {
		if wd.stop() {
			return fmt.Errorf("%w: UID FETCH BODY.PEEK[HEADER] timed out after %v", ErrUnavailable, d.to.Command)
		}
		return commandError("UID FETCH BODY.PEEK[HEADER]", err)
	}
	wanted := make(map[imap.UID]bool, len(uids))
	for _, uid := range uids {
		wanted[imap.UID(uid)] = true
	}
	// UID first: go-imap routes a FETCH answer to its command by the UID
	// seen before the literal.
	opts := &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, Peek: true}}}
	for _, set := range uidSets(uids, uidlSetMax) {
		fc := d.c.Fetch(set, opts)
		for msg := fc.Next(); msg != nil; msg = fc.Next() {
			wd.reset(d.to.Command) // a big mailbox: the timeout is for progress
			var uid imap.UID
			for item := msg.Next(); item != nil; item = msg.Next() {
				switch it := item.(type) {
				case imapclient.FetchItemDataUID:
					uid = it.UID
				case imapclient.FetchItemDataBodySection:
					if it.Literal == nil || !wanted[uid] {
						continue // msg.Next discards it
					}
					dg, err := headerDigest(it.Literal)
					if err != nil {
						// Half a literal read: the connection is lost.
						// Let go-imap's reader end before anything else
						// touches it (see fetcher.readBody).
						d.kill()
						<-d.c.Closed()
						return fail(err)
					}
					out[uint32(uid)] = dg
				}
			}
		}
		if err := fc.Close(); err != nil {
			return fail(err)
		}
	}
	if wd.stop() {
		return fmt.Errorf("%w: UID FETCH BODY.PEEK[HEADER] timed out after %v", ErrUnavailable, d.to.Command)
	}
	return nil
}

// uidSets splits sorted uids into UID sets whose text stays under max
// characters (contiguous UIDs make ranges, so usually there is one).
func uidSets(uids []uint32, max int) []imap.UIDSet {
	var sets []imap.UIDSet
	var cur imap.UIDSet
	for i, uid := range uids {
		cur.AddNum(imap.UID(uid))
		if i%64 == 63 && len(cur.String()) > max {
			sets = append(sets, cur)
			cur = nil
		}
	}
	if len(cur) > 0 {
		sets = append(sets, cur)
	}
	return sets
}
