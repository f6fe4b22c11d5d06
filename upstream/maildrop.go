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
	cleanups sync.WaitGroup // Close's background clean-ups under way
	spoolDir string         // "" = os.TempDir
	markSeen bool
	ahead    int64 // fetch-ahead byte budget per session; 0 = off
	// staleAfter: a body served more than this after the backend's last
	// answer is confirmed with a NOOP first (fetcher.confirm).
	staleAfter time.Duration
	// topWhole: TOP fetches a message whole when it is at most this plus
	// the estimate for the lines asked (top.go); larger ones in parts.
	topWhole int64
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
	for _, o := range opts {
		o(m)
	}
	return m
}

// Wait waits for the background clean-ups of closed maildrops (\Seen flush,
// LOGOUT: see Maildrop.Close). Each is bounded by a few closeTimeouts.
func (m *Maildrops) Wait() { m.cleanups.Wait() }

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
	d := &Maildrop{
		m:       m,
		log:     log,
		target:  t,
		user:    user,
		mailbox: m.cfg.Mailbox,
		to:      to.withDefaults(),
		lock:    newLockKey(t.Name, user),
		hold:    newHolder(),
	}
	d.fetch = newFetcher(m, d, &d.imapConn, d.to, log)
	c, raw, err := openClient(ctx, t, to, user, password, &imapclient.UnilateralDataHandler{
		// Only record: the handler runs on the client's reader goroutine,
		// and numbers never shift because everything is by UID.
		Expunge: func(uint32) { d.fetch.noteExpunge() },
		Fetch:   d.fetch.unilateralFetch,
	})
	if err != nil {
		return nil, err
	}
	d.c, d.raw = c, raw
	lease, err := m.locks.Lock(ctx, d.lock, d.hold, m.cfg.Lock, m.cfg.TakeoverAfter)
	if err != nil {
		d.goodbye()
		if !errors.Is(err, ErrInUse) {
			err = fmt.Errorf("%w: maildrop lock: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	d.lease = lease
	if err := d.snapshot(ctx); err != nil {
		c.Close()
		lease.Release()
		return nil, err
	}
	d.fetch.start(d.uids, d.snapSizes, d.key(0))
	log.Info("maildrop opened", zap.String("mailbox", d.mailbox), zap.Int("messages", len(d.uids)),
		zap.Uint32("uidvalidity", d.uidValidity), zap.Duration("elapsed", time.Since(start)))
	return d, nil
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
//   - uidValidity, uids and uidls are written once, by snapshot, before Open
//     returns, and only read afterwards.
//   - sizes[n-1] only moves from the backend's RFC822.SIZE to the exact
//     length of a body of message n (learnSize).
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

	// Fixed by the snapshot.
	uidValidity uint32
	uids        []imap.UID // message n is uids[n-1]
	uidls       []string
	// sizes[n-1] is message n's size (see Size). Atomic, not under mu: the
	// fetcher reads them for its budget while holding its own lock.
	sizes []atomic.Int64
	// snapSizes[n-1] is message n's RFC822.SIZE in the snapshot, kept apart
	// from sizes: a body of another length is checked (fetcher.confirm).
	snapSizes []int64

	mu   sync.Mutex
	seen imap.UIDSet // RETRed, \Seen not yet sent

	closeOnce sync.Once
}

// snapshot selects the mailbox and fixes the message list: RFC 1939 §4.
func (d *Maildrop) snapshot(ctx context.Context) error {
	wd := watch(d.to.Command, d.kill)
	stopCtx := context.AfterFunc(ctx, d.kill)
	defer stopCtx()
	fail := func(op string, err error) error {
		if wd.stop() {
			return fmt.Errorf("%w: %s timed out after %v", ErrUnavailable, op, d.to.Command)
		}
		return commandError(op, err)
	}

	d.caps = d.c.Caps() // after login: what the session may use
	// SELECT and the UID FETCH go out together (pipelining, RFC 9051 §5.5):
	// the server runs them in order, so the FETCH sees the selected
	// mailbox, and the snapshot costs one round trip, not two. If the
	// SELECT fails, the FETCH fails too (no mailbox selected) and the
	// SELECT's error is the one reported.
	var all imap.UIDSet
	all.AddRange(1, 0) // 1:*
	selCmd := d.c.Select(d.mailbox, nil)
	fc := d.c.Fetch(all, &imap.FetchOptions{UID: true, RFC822Size: true, Flags: true})

	type entry struct {
		uid  imap.UID
		size int64
	}
	var list []entry
	for msg := fc.Next(); msg != nil; msg = fc.Next() {
		wd.reset(d.to.Command) // a big mailbox: the timeout is for progress
		buf, err := msg.Collect()
		if err != nil || buf.UID == 0 {
			continue
		}
		// RFC 1939 §4 has no place for a message marked \Deleted by
		// another client: it is leaving, so it is not offered.
		if slices.Contains(buf.Flags, imap.FlagDeleted) {
			continue
		}
		list = append(list, entry{buf.UID, buf.RFC822Size})
	}
	fetchErr := fc.Close()
	sel, err := selCmd.Wait()
	if err != nil {
		return fail("SELECT "+d.mailbox, err)
	}
	d.uidValidity = sel.UIDValidity
	// "*" in an empty mailbox is undefined (RFC 3501 §6.4.8): some servers
	// answer the FETCH with NO or BAD there, which means no messages.
	if fetchErr != nil && !(sel.NumMessages == 0 && isStatus(fetchErr)) {
		return fail("UID FETCH 1:*", fetchErr)
	}
	if wd.stop() {
		return fmt.Errorf("%w: snapshot timed out after %v", ErrUnavailable, d.to.Command)
	}
	slices.SortFunc(list, func(a, b entry) int { return cmp.Compare(a.uid, b.uid) })
	list = slices.CompactFunc(list, func(a, b entry) bool { return a.uid == b.uid })

	d.uids = make([]imap.UID, len(list))
	d.uidls = make([]string, len(list))
	d.sizes = make([]atomic.Int64, len(list))
	d.snapSizes = make([]int64, len(list))
	for i, e := range list {
		uidl, err := FormatUIDL(d.m.cfg.UIDLFormat, uint32(e.uid), d.uidValidity)
		if err != nil {
			return fmt.Errorf("pop3.uidl_format: %w", err)
		}
		d.uids[i], d.uidls[i] = e.uid, uidl
		d.sizes[i].Store(e.size)
		d.snapSizes[i] = e.size
		// A cached body is the exact size; the backend's RFC822.SIZE may
		// not be: a POP3 size counts the CRLF form without dot-stuffing
		// (RFC 1939 §11), and although RFC 3501 §2.3.4 defines RFC822.SIZE
		// on that form, servers vary.
		if data, ok := d.m.cache.peek(d.key(e.uid)); ok {
			d.sizes[i].Store(int64(len(data)))
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
	return d.sizes[n-1].Load()
}

// learnSize records the exact size of message n, from a body of it: the
// fetcher's as soon as a FETCH completes (so LIST is exact for bodies fetched
// ahead too), and read's for whatever body it returns.
func (d *Maildrop) learnSize(n int, size int64) {
	// Load first: on the common path (the size is already exact) nothing is
	// written.
	if old := d.sizes[n-1].Load(); old != size {
		d.sizes[n-1].Store(size)
		d.log.Debug("RFC822.SIZE differs from the body", zap.Uint32("uid", uint32(d.uids[n-1])),
			zap.Int64("rfc822_size", old), zap.Int64("body", size))
	}
}

// UIDL is the message's unique-id, from pop3.uidl_format (RFC 1939 §7).
func (d *Maildrop) UIDL(n int) string {
	if !d.valid(n) {
		return ""
	}
	return d.uidls[n-1]
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
// Commit refuses from then on.
func (d *Maildrop) TakenOver() <-chan struct{} { return d.hold.Taken() }

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
