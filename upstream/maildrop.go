package upstream

// A POP3 maildrop over an IMAP mailbox.
//
// Invariants kept in this file and its companions (fetch.go, commit.go):
//   - Message numbers are fixed at Open: number i is the i-th UID of the
//     snapshot, ordered by UID (RFC 1939 §4). After the snapshot every backend
//     command names messages by UID, so other clients' EXPUNGE and EXISTS
//     never move a number; they are only counted.
//   - Nothing on the backend changes except \Seen (RETR with mark_seen) until
//     Commit, and Commit touches exactly the UIDs it is given (RFC 1939 §6).
//   - Bodies are fetched with BODY.PEEK[] (RFC 3501 §6.4.5), so neither TOP
//     nor fetch-ahead sets \Seen.
//   - One goroutine at a time uses the backend connection's command stream
//     (imapConn.cmdMu): the fetcher's loop while it runs a batch, Commit and
//     Close otherwise.
//   - Every backend exchange runs under a watchdog of Timeouts.Command that
//     closes the socket; a dead connection makes the maildrop broken and all
//     later calls fail with ErrUnavailable.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Maildrops opens POP3 maildrops on backend IMAP servers. There is one per
// gateway, shared by all sessions: it owns the body cache, the singleflight
// group that makes concurrent fetches of one body a single backend FETCH, and
// the table of per-user maildrop locks.
//
//	mds := upstream.NewMaildrops(cfg.POP3, log)
//	md, err := mds.Open(ctx, target, timeouts, user, password) // ErrAuthFailed, ErrInUse, ErrUnavailable
//	defer md.Close()
type Maildrops struct {
	cfg      MaildropConfig
	log      *zap.Logger
	cache    *Cache
	locks    Locker
	group    singleflight.Group
	cleanups sync.WaitGroup // Close's background clean-ups under way, and parked connections
	reuse    *reusePool     // pop3.reuse; nil when off
	spoolDir string         // "" = os.TempDir
	markSeen bool
	ahead    int64 // fetch-ahead byte budget per session; 0 = off
	// staleAfter: a body served more than this after the backend's last
	// answer is confirmed with a NOOP first (fetcher.confirm).
	staleAfter time.Duration
	// topWhole: TOP fetches a message whole when it is at most this plus
	// the estimate for the lines asked (top.go); larger ones in parts.
	topWhole int64
	// uidl keeps UIDLs across UIDVALIDITY changes (UseUIDLMap); nil: off.
	uidl UIDLStore
}

// defaultStaleAfter is Maildrops.staleAfter: "a few seconds".
const defaultStaleAfter = 2 * time.Second

// MaildropsOption changes how NewMaildrops builds the opener.
type MaildropsOption func(*Maildrops)

// WithLocker makes the maildrops take their locks from l (a cluster-wide
// locker) instead of the in-process table.
func WithLocker(l Locker) MaildropsOption {
	return func(m *Maildrops) { m.locks = l }
}

// NewMaildrops makes the maildrop opener. Zero fields of cfg get their
// defaults (MaildropConfig.ApplyDefaults), and a nil log logs nothing.
func NewMaildrops(cfg MaildropConfig, log *zap.Logger, opts ...MaildropsOption) *Maildrops {
	cfg.ApplyDefaults()
	if log == nil {
		log = zap.NewNop()
	}
	m := &Maildrops{
		cfg:      cfg,
		log:      log,
		locks:    NewLocalLocker(),
		cache:    NewCache(int64(*cfg.Cache.MaxBytes), int64(cfg.Cache.MaxMessageBytes)),
		markSeen: *cfg.MarkSeen,
		ahead:    int64(*cfg.FetchAhead),

		staleAfter: defaultStaleAfter,
		topWhole:   defaultTopWhole,
	}
	if cfg.Reuse > 0 {
		m.reuse = newReusePool(cfg.Reuse, m.closeParked)
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

// epoch is the lock epoch of k (Epocher), 0 if the locker keeps none: the
// snapshot is then never retaken.
func (m *Maildrops) epoch(k LockKey) uint64 {
	if e, ok := m.locks.(Epocher); ok {
		return e.Epoch(k)
	}
	return 0
}

// Wait waits for the background clean-ups of closed maildrops (\Seen flush,
// LOGOUT: see Maildrop.Close). Each is bounded by a few closeTimeouts. The
// connections parked for pop3.reuse are logged out first, and none is
// parked while Wait runs.
func (m *Maildrops) Wait() {
	if m.reuse != nil {
		m.reuse.drain()
		defer m.reuse.undrain()
	}
	m.cleanups.Wait()
}

// closeParked logs a parked connection out, in the background, under
// closeTimeout.
func (m *Maildrops) closeParked(pk *parked) {
	go func() {
		defer m.cleanups.Done()
		wd := watch(closeTimeout, func() { pk.raw.Close() })
		pk.c.Logout().Wait() // the answer does not matter
		wd.stop()
		pk.raw.Close()
		pk.c.Close()
	}()
}

// Cache returns the shared body cache (for its Stats).
func (m *Maildrops) Cache() *Cache { return m.cache }

// Open logs in to the backend t as user, takes the user's exclusive
// maildrop lock (RFC 1939 §4), selects the configured mailbox and takes the
// snapshot that fixes the session's message numbers.
//
// Errors wrap ErrAuthFailed (the backend refused the credentials), ErrInUse
// (another session of this user is open on this gateway) or ErrUnavailable.
// The lock is taken after login so that a wrong password never learns
// whether the maildrop is in use.
func (m *Maildrops) Open(ctx context.Context, t Target, to Timeouts, user, password string) (*Maildrop, error) {
	start := time.Now()
	log := m.log.With(zap.String("backend", t.Name), zap.String("user", user))
	var rkey reuseKey
	if m.reuse != nil {
		rkey = m.reuse.key(t, user, m.cfg.Mailbox, password)
		if pk := m.reuse.take(rkey); pk != nil {
			m.cleanups.Done() // the parked connection is this maildrop's now
			d := m.newMaildrop(t, to, user, log, rkey)
			err := d.resume(ctx, pk)
			if err == nil {
				log.Info("maildrop opened", zap.String("mailbox", d.mailbox), zap.Int("messages", len(d.uids)),
					zap.Uint32("uidvalidity", d.uidValidity), zap.Bool("reused", true), zap.Duration("elapsed", time.Since(start)))
				return d, nil
			}
			if errors.Is(err, ErrInUse) {
				return nil, err
			}
			log.Info("parked backend connection failed its check; logging in", zap.Error(err))
		}
	}
	d := m.newMaildrop(t, to, user, log, rkey)
	// The snapshot goes out behind the login, in its write, when it can
	// (openClient); the backend answers it only if the login succeeds.
	var pre *snapCmds
	var pipe func(*imapclient.Client) int
	if pipelinable(d.mailbox) {
		pipe = func(c *imapclient.Client) int {
			cmds := sendSnapshot(c, d.mailbox)
			pre = &cmds
			return 2
		}
	}
	epoch := m.epoch(d.lock)
	c, raw, err := openClient(ctx, t, to, user, password, d.route.handler(), pipe)
	if err != nil {
		return nil, err
	}
	d.c, d.raw = c, raw
	lease, err := m.locks.Lock(ctx, d.lock, d.hold, m.cfg.Lock, m.cfg.TakeoverAfter)
	if err != nil {
		if pre != nil {
			d.kill() // the snapshot's answers are of no use: no LOGOUT after them
			c.Close()
		} else {
			d.goodbye()
		}
		if !errors.Is(err, ErrInUse) {
			err = fmt.Errorf("%w: maildrop lock: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	d.lease = lease
	if pre == nil {
		cmds := sendSnapshot(c, d.mailbox)
		pre = &cmds
	}
	err = d.snapshot(ctx, *pre)
	if err == nil && m.epoch(d.lock) != epoch {
		// Another session of the user released the lock since the
		// snapshot went out: it may have been in UPDATE.
		err = d.snapshot(ctx, snapCmds{fetch: sendFetch(c)})
	}
	if err == nil && m.uidl != nil {
		err = d.mapUIDLs(ctx)
	}
	if err != nil {
		c.Close()
		lease.Release()
		return nil, err
	}
	d.fetch.start(d.uids, d.snapSizes, d.key(0))
	log.Info("maildrop opened", zap.String("mailbox", d.mailbox), zap.Int("messages", len(d.uids)),
		zap.Uint32("uidvalidity", d.uidValidity), zap.Duration("elapsed", time.Since(start)))
	return d, nil
}

// newMaildrop makes a maildrop with no backend connection yet.
func (m *Maildrops) newMaildrop(t Target, to Timeouts, user string, log *zap.Logger, rkey reuseKey) *Maildrop {
	d := &Maildrop{
		m:        m,
		log:      log,
		target:   t,
		user:     user,
		mailbox:  m.cfg.Mailbox,
		to:       to.withDefaults(),
		lock:     newLockKey(t.Name, user),
		hold:     newHolder(),
		route:    &route{},
		reuseKey: rkey,
	}
	d.fetch = newFetcher(m, d, &d.imapConn, d.to, log)
	d.route.ft.Store(d.fetch)
	return d
}

// resume makes d out of a parked connection (pop3.reuse): it takes the lock
// (RFC 1939 §4; the password matched the one the backend accepted for this
// connection, so [IN-USE] tells nothing a login would not), then
// re-validates the connection with NOOP and a new snapshot, sent together:
// one round trip, and the snapshot is as fresh as a login's. On failure the
// connection is closed and the lock released.
func (d *Maildrop) resume(ctx context.Context, pk *parked) error {
	d.c, d.raw, d.caps, d.uidValidity = pk.c, pk.raw, pk.caps, pk.uidValidity
	d.route = pk.route
	d.route.ft.Store(d.fetch)
	lease, err := d.m.locks.Lock(ctx, d.lock, d.hold, d.m.cfg.Lock, d.m.cfg.TakeoverAfter)
	if err != nil {
		d.kill()
		d.c.Close()
		if !errors.Is(err, ErrInUse) {
			err = fmt.Errorf("%w: maildrop lock: %w", ErrUnavailable, err)
		}
		return err
	}
	d.lease = lease
	noop := d.c.Noop()
	err = d.snapshot(ctx, snapCmds{fetch: sendFetch(d.c)})
	if err == nil {
		if err = noop.Wait(); err != nil {
			err = commandError("NOOP", err)
		}
	}
	if err == nil && d.m.uidl != nil {
		err = d.mapUIDLs(ctx)
	}
	if err != nil {
		d.kill()
		d.c.Close()
		lease.Release()
		return err
	}
	d.fetch.start(d.uids, d.snapSizes, d.key(0))
	return nil
}

// Maildrop is one POP3 session's fixed view of a mailbox: the POP3 model of
// a maildrop. It implements the maildrop interface of gateway/pop3. Message
// numbers are 1..Len(); the caller checks them (a number out of range gets
// an error, not a panic). Its methods are safe for concurrent use.
//
// It keeps the snapshot (numbers, UIDs, UIDLs, sizes), the \Seen batch, and
// Commit and Close; every body comes from its fetcher (fetch.go), which
// shares the backend connection with it.
//
// Invariants:
//   - uidValidity, uids and snapSizes are written by snapshot before Open
//     returns, and only read afterwards.
//   - Message n's size only moves from the backend's RFC822.SIZE
//     (snapSizes[n-1]) to the exact length of a body of message n (exact,
//     learnSize).
//   - The snapshot is compact, for idle sessions: 12 octets a message (UID
//     and RFC822.SIZE); UIDLs are formatted when asked for, and exact sizes
//     are kept only where they differ from RFC822.SIZE.
//   - mu guards seen, and is never held while taking another lock.
type Maildrop struct {
	m        *Maildrops
	log      *zap.Logger
	target   Target
	user     string
	mailbox  string
	to       Timeouts // of the configuration current at Open
	lock     LockKey
	hold     *Holder // this session's side of the lock
	lease    Lease   // the lock, from Maildrops.locks
	imapConn         // the backend connection, shared with fetch
	caps     imap.CapSet
	fetch    *fetcher // every body comes from it
	route    *route   // the connection's unilateral data, to fetch

	// pop3.reuse: the key this maildrop's connection is parked under after
	// a successful Commit (committed), if reuse is on.
	reuseKey  reuseKey
	committed atomic.Bool

	// Fixed by the snapshot.
	uidValidity uint32
	uids        []imap.UID // message n is uids[n-1]
	// snapSizes[n-1] is message n's RFC822.SIZE in the snapshot, which the
	// fetcher checks a body of another length against (fetcher.confirm).
	snapSizes []int64
	// uidls[n-1] is message n's UIDL from pop3.uidl_map (uidlmap_session.go);
	// nil without the map, when UIDLs are formatted as asked for.
	uidls []string
	// exact maps a message number to the exact length of its body where it
	// differs from snapSizes (see Size). A sync.Map, not under mu: the
	// fetcher reads sizes for its budget while holding its own lock, and it
	// is nearly always empty.
	exact sync.Map

	mu   sync.Mutex
	seen imap.UIDSet // RETRed, \Seen not yet sent

	closeOnce sync.Once
}

// snapCmds are the commands of a snapshot, sent (sendSnapshot, sendFetch)
// and not yet read: a SELECT (nil when the mailbox is selected already) and
// the UID FETCH of every message.
type snapCmds struct {
	sel   *imapclient.SelectCommand
	fetch *imapclient.FetchCommand
}

// sendSnapshot sends SELECT and the UID FETCH together (pipelining, RFC
// 9051 §5.5): the server runs them in order, so the FETCH sees the selected
// mailbox, and the snapshot costs one round trip, not two.
func sendSnapshot(c *imapclient.Client, mailbox string) snapCmds {
	sel := c.Select(mailbox, nil)
	return snapCmds{sel: sel, fetch: sendFetch(c)}
}

// sendFetch sends UID FETCH 1:* (UID RFC822.SIZE FLAGS).
func sendFetch(c *imapclient.Client) *imapclient.FetchCommand {
	var all imap.UIDSet
	all.AddRange(1, 0) // 1:*
	return c.Fetch(all, &imap.FetchOptions{UID: true, RFC822Size: true, Flags: true})
}

// pipelinable reports whether the SELECT of mailbox can be sent before the
// login's reply, when go-imap's client does not know the capabilities yet:
// printable ASCII without the modified UTF-7 shift "&" is spelt the same
// whatever the server (RFC 3501 §5.1.3, RFC 9051 §5.1) and needs no literal.
func pipelinable(mailbox string) bool {
	for i := 0; i < len(mailbox); i++ {
		if c := mailbox[i]; c < 0x20 || c > 0x7e || c == '&' {
			return false
		}
	}
	return mailbox != ""
}

// snapshotProgress is how many FETCH responses of the snapshot re-arm its
// watchdog: often enough that the command timeout is one for progress, not
// for a whole big mailbox, and not a new timer per message.
const snapshotProgress = 64

// snapshot reads the answers to cmds and fixes the message list: RFC 1939
// §4. With cmds.sel nil the mailbox is selected already, and its
// UIDVALIDITY known.
func (d *Maildrop) snapshot(ctx context.Context, cmds snapCmds) error {
	wd := watch(d.to.Command, d.kill)
	stopCtx := context.AfterFunc(ctx, d.kill)
	defer stopCtx()
	fail := func(op string, err error) error {
		if wd.stop() {
			return fmt.Errorf("%w: %s timed out after %v", ErrUnavailable, op, d.to.Command)
		}
		return commandError(op, err)
	}

	type entry struct {
		uid  imap.UID
		size int64
	}
	var list []entry
	fc := cmds.fetch
	for i := 1; ; i++ {
		msg := fc.Next()
		if msg == nil {
			break
		}
		if i%snapshotProgress == 0 {
			wd.reset(d.to.Command) // a big mailbox: the timeout is for progress
		}
		// The items as they come, without buffering the message.
		var e entry
		deleted := false
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				e.uid = it.UID
			case imapclient.FetchItemDataRFC822Size:
				e.size = it.Size
			case imapclient.FetchItemDataFlags:
				// RFC 1939 §4 has no place for a message marked \Deleted
				// by another client: it is leaving, so it is not offered.
				deleted = slices.Contains(it.Flags, imap.FlagDeleted)
			}
		}
		if e.uid == 0 || deleted {
			continue
		}
		if list == nil {
			// The SELECT's EXISTS has been read by now: room for all
			// (within reason: EXISTS is only the backend's word).
			if mb := d.c.Mailbox(); mb != nil {
				list = make([]entry, 0, min(mb.NumMessages, 1<<16))
			}
		}
		list = append(list, e)
	}
	fetchErr := fc.Close()
	var exists uint32
	if cmds.sel != nil {
		// If the SELECT failed, the FETCH failed too (no mailbox selected)
		// and the SELECT's error is the one reported.
		sel, err := cmds.sel.Wait()
		if err != nil {
			return fail("SELECT "+d.mailbox, err)
		}
		d.uidValidity, exists = sel.UIDValidity, sel.NumMessages
	} else if mb := d.c.Mailbox(); mb != nil {
		exists = mb.NumMessages
	}
	d.caps = d.c.Caps() // after login: what the session may use
	// "*" in an empty mailbox is undefined (RFC 3501 §6.4.8): some servers
	// answer the FETCH with NO or BAD there, which means no messages.
	if fetchErr != nil && !(exists == 0 && isStatus(fetchErr)) {
		return fail("UID FETCH 1:*", fetchErr)
	}
	if wd.stop() {
		return fmt.Errorf("%w: snapshot timed out after %v", ErrUnavailable, d.to.Command)
	}
	slices.SortFunc(list, func(a, b entry) int { return cmp.Compare(a.uid, b.uid) })
	list = slices.CompactFunc(list, func(a, b entry) bool { return a.uid == b.uid })

	// UIDLs are formatted when asked for (UIDL): check the format once.
	if _, err := FormatUIDL(d.m.cfg.UIDLFormat, 1, d.uidValidity); err != nil {
		return fmt.Errorf("pop3.uidl_format: %w", err)
	}
	d.uids = make([]imap.UID, len(list))
	d.snapSizes = make([]int64, len(list))
	d.exact.Clear()
	for i, e := range list {
		d.uids[i], d.snapSizes[i] = e.uid, e.size
		// A cached body is the exact size; the backend's RFC822.SIZE may
		// not be: a POP3 size counts the CRLF form without dot-stuffing
		// (RFC 1939 §11), and although RFC 3501 §2.3.4 defines RFC822.SIZE
		// on that form, servers vary.
		if data, ok := d.m.cache.peek(d.key(e.uid)); ok && int64(len(data)) != e.size {
			d.exact.Store(i+1, int64(len(data)))
		}
	}
	return nil
}

// Len is the number of messages in the snapshot.
func (d *Maildrop) Len() int { return len(d.uids) }

// Size is the message's octet count. Until the body has been fetched it is
// the backend's RFC822.SIZE, which RFC 3501 defines on the CRLF form, as
// POP3 wants (RFC 1939 §11); servers that store LF line ends sometimes get it
// wrong. The body is authoritative: once Retr or Top has returned for n (or
// the body was in the cache at Open), Size(n) is the body's exact length, so
// the "+OK n octets" of RETR and every later LIST match what RETR sends. A
// LIST before any fetch can at worst show the backend's figure.
func (d *Maildrop) Size(n int) int64 {
	if !d.valid(n) {
		return 0
	}
	if v, ok := d.exact.Load(n); ok {
		return v.(int64)
	}
	return d.snapSizes[n-1]
}

// learnSize records the exact size of message n, from a body of it: the
// fetcher's as soon as a FETCH completes (so LIST is exact for bodies fetched
// ahead too), and read's for whatever body it returns.
func (d *Maildrop) learnSize(n int, size int64) {
	// Load first: on the common path (the size is already exact) nothing is
	// written.
	if old := d.Size(n); old != size {
		d.exact.Store(n, size)
		d.log.Debug("RFC822.SIZE differs from the body", zap.Uint32("uid", uint32(d.uids[n-1])),
			zap.Int64("rfc822_size", old), zap.Int64("body", size))
	}
}

// UIDL is the message's unique-id (RFC 1939 §7): the one pop3.uidl_map
// remembers, or else pop3.uidl_format's, formatted from the UID and
// UIDVALIDITY each time (the snapshot keeps no strings).
func (d *Maildrop) UIDL(n int) string {
	if !d.valid(n) {
		return ""
	}
	if d.uidls != nil {
		return d.uidls[n-1]
	}
	// The format was checked when the snapshot was taken.
	uidl, _ := FormatUIDL(d.m.cfg.UIDLFormat, uint32(d.uids[n-1]), d.uidValidity)
	return uidl
}

// UID is the message's IMAP UID (for logs and tests).
func (d *Maildrop) UID(n int) imap.UID {
	if !d.valid(n) {
		return 0
	}
	return d.uids[n-1]
}

func (d *Maildrop) valid(n int) bool { return n >= 1 && n <= len(d.uids) }

// Retr returns the message's exact bytes (the backend's BODY[]). It counts as
// reading the message: with mark_seen, \Seen is set at Commit or Close (see
// flushSeen). A message expunged by another client since Open gives
// ErrMessageGone; the maildrop stays usable. The caller must Close the
// reader.
func (d *Maildrop) Retr(ctx context.Context, n int) (io.ReadCloser, error) {
	return d.read(ctx, n, true)
}

// Top returns the header of the message, the blank line after it and at
// least its first lines lines of text, with the same bytes as Retr, without
// marking the message read (RFC 1939 §7); it may return more, up to the
// whole message, and the session cuts at the lines-th line. It fetches only
// the parts it needs unless the whole body is at hand or small (top.go). A
// message expunged by another client gives ErrMessageGone. The caller must
// Close the reader.
func (d *Maildrop) Top(ctx context.Context, n, lines int) (io.ReadCloser, error) {
	if !d.valid(n) {
		return nil, fmt.Errorf("no message %d in a maildrop of %d", n, len(d.uids))
	}
	if lines < 0 {
		return nil, fmt.Errorf("TOP of %d lines", lines)
	}
	b, err := d.fetch.top(ctx, n, lines)
	if err != nil {
		return nil, err
	}
	return b.open(), nil
}

func (d *Maildrop) read(ctx context.Context, n int, retr bool) (io.ReadCloser, error) {
	if !d.valid(n) {
		return nil, fmt.Errorf("no message %d in a maildrop of %d", n, len(d.uids))
	}
	b, err := d.fetch.get(ctx, n, retr)
	if err != nil {
		return nil, err
	}
	d.learnSize(n, b.size)
	if retr && d.m.markSeen {
		d.mu.Lock()
		d.seen.AddNum(d.uids[n-1])
		d.mu.Unlock()
	}
	return b.open(), nil
}

// Waiting tells the lock whether the session is waiting for the client's
// next command (pop3.lock: takeover ends only such a session). The POP3
// session calls it around each command read.
func (d *Maildrop) Waiting(waiting bool) { d.hold.Waiting(waiting) }

// TakenOver is closed when a newer session of the user took the lock
// (pop3.lock: takeover): the session must end, without UPDATE (RFC 1939 §6);
// Commit refuses from then on. Under any other policy it is nil (no
// session can take this one over), so the session need not watch it.
func (d *Maildrop) TakenOver() <-chan struct{} {
	if d.m.cfg.Lock != LockTakeover {
		return nil
	}
	return d.hold.Taken()
}

// key is the cache and singleflight key of a message of this maildrop.
func (d *Maildrop) key(uid imap.UID) CacheKey {
	return CacheKey{Backend: d.target.Name, Server: d.target.Address, User: d.user, Mailbox: d.mailbox, UIDValidity: d.uidValidity, UID: uid}
}

// imapConn is a maildrop's backend connection, shared by the fetcher (body
// FETCHes) and by Commit and Close (STORE, EXPUNGE, LOGOUT).
//
// Invariants:
//   - c and raw are set once, at Open, before anyone else uses them.
//   - cmdMu is held by whoever sends commands: the fetcher for a whole
//     batch, from its first command to its last answer; Commit and Close for
//     theirs. go-imap would interleave them otherwise.
//   - broken, once set, stays set: the connection is dead (killed, or it
//     failed mid-command), every later exchange fails with it, and nothing
//     reconnects.
type imapConn struct {
	c   *imapclient.Client
	raw net.Conn // under c; closing it aborts any command

	cmdMu sync.Mutex // the command stream

	brokenMu sync.Mutex // guards broken only; never held while taking another lock
	broken   error      // the connection is dead: why
}

// kill aborts whatever the backend connection is doing. It never blocks.
func (ic *imapConn) kill() { ic.raw.Close() }

// setBroken records that the connection is dead, and kills it.
func (ic *imapConn) setBroken(err error) {
	ic.brokenMu.Lock()
	if ic.broken == nil {
		ic.broken = err
	}
	ic.brokenMu.Unlock()
	ic.kill()
}

// brokenErr is why the connection is dead, or nil.
func (ic *imapConn) brokenErr() error {
	ic.brokenMu.Lock()
	defer ic.brokenMu.Unlock()
	return ic.broken
}

// goodbye logs out under a short deadline and closes the client.
func (d *Maildrop) goodbye() error {
	wd := watch(min(closeTimeout, d.to.Command), d.kill)
	err := d.c.Logout().Wait()
	wd.stop()
	d.c.Close()
	return err
}
