package upstream

// The fetch pipeline: every body FETCH of one maildrop, and fetching ahead of
// the client.
//
// Retr and Top never touch the backend themselves: they ask the fetcher
// (get), which finds the body fetched ahead, in the shared cache, or queues a
// flight for the UID and waits for it. One goroutine per maildrop, the
// fetcher's loop, issues every body FETCH. It takes the queued flights and,
// while the client reads in order, adds the next messages up to the
// fetch-ahead byte budget (plan); it sends one UID FETCH per message without
// waiting (pipelining, RFC 3501 §5.5), then reads the answers as they come,
// spooling each literal and completing its flight as soon as the literal has
// arrived (run, readBody, complete). A client downloading its maildrop
// therefore waits for a backend round trip about once per budget's worth of
// messages, not once per message.
//
// go-imap delivers FETCH data on its reader goroutine, which blocks until the
// literal is consumed, and a server may interleave the answers of pipelined
// commands, so each command's answer is read by a goroutine of its own; the
// loop holds the connection's cmdMu from the first command of a batch to the
// last answer, so no other command (STORE, EXPUNGE at QUIT) is sent
// meanwhile.
//
// The maildrop follows the backend: a body is served only for a message the backend still has, with the size the snapshot
// announced. readBody takes a \Deleted in the FETCH answer for gone (Cyrus
// sends the body of an expunged message with \Deleted). get then confirms
// every body before it is served (confirm): when the backend has reported an
// EXPUNGE since the last check, when the body's length differs from the
// snapshot's RFC822.SIZE (Courier answers an expunged message with a short
// placeholder body), or when the last word from the backend is older than
// staleAfter (a backend reports other clients' expunges only in answer to a
// command, so a cached body is otherwise never checked), one round trip
// (NOOP if needed, then UID SEARCH over the snapshot) finds which UIDs are
// gone. A body of a different length is not cached nor trusted for the size
// until that check passes. The common cached RETR (no EXPUNGE seen, the
// size as announced, a recent answer) makes no round trip.
//
// No IDLE (RFC 2177) on the maildrop's connection while the session waits
// for the client, by decision: the NOOP of a stale confirm already learns
// what IDLE would have (Courier reports others' expunges only to NOOP or
// IDLE; the suite in test/backends shows it answering -ERR there), while
// IDLE would put a DONE and its tagged answer in front of every command the
// session sends (go-imap's Idle holds the client until it is stopped), on
// the common path (RETR after RETR, bodies fetched ahead) too, where
// staleAfter costs one NOOP per few seconds of client silence at most.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// maxInFlight caps the body FETCHes in flight at once. The byte budget
// (fetch_ahead) is the real window; this only bounds the goroutines (one
// per command reads its answer) when messages are tiny. At 32, as it once
// was, a far backend idled once per 32 messages (1.5 MB of typical mail)
// whatever fetch_ahead said.
const maxInFlight = 256

// errTaken: the flight's spooled body went to another caller.
var errTaken = errors.New("body taken by another reader")

// errClosed: the maildrop was closed while a body was wanted.
var errClosed = fmt.Errorf("%w: maildrop closed", ErrUnavailable)

// sizeModel is the maildrop's model of message sizes (*Maildrop): the
// fetcher reads it for what fetching a message ahead costs, and reports the
// exact size of every body it fetches.
type sizeModel interface {
	Size(n int) int64            // message n's size as known now
	learnSize(n int, size int64) // a body of message n has arrived: its exact size
}

// fetcher is one maildrop's fetch pipeline: its flights, the fetch-ahead
// plan and budget, and the loop goroutine that sends the FETCHes and reads
// the answers.
//
// Invariants (the fields below mu are guarded by it):
//   - pending holds at most one flight per UID: a body being fetched, or
//     fetched and not yet taken. queue is the part of pending that Retr and
//     Top asked for and the loop has not sent yet.
//   - Every flight is completed exactly once (complete closes done), by the
//     loop or, for one still queued, by stop. Its first taker removes it
//     from pending (await).
//   - aheadBytes is the sum of the costs of the fetched-ahead flights in
//     pending; plan keeps it within budget.
//   - gone only grows: a UID the backend says is expunged is never fetched
//     again.
//   - Once closing is set no flight is added; once stop has returned the
//     loop has ended and pending is empty.
//   - Only the loop sends FETCHes, and only while holding conn.cmdMu.
//   - Lock order: conn.cmdMu, then mu, then conn.brokenMu or the cache's
//     lock. mu is never held while waiting for the backend or for a flight.
type fetcher struct {
	// Fixed at Open.
	sizes    sizeModel
	conn     *imapConn
	log      *zap.Logger
	cache    *Cache              // shared by every session of the gateway
	group    *singleflight.Group // shared: one backend FETCH per body at a time
	spoolDir string              // "" = os.TempDir
	memMax   int64               // bodies up to this size are spooled in memory
	budget   int64               // fetch-ahead bytes; 0 = off
	timeout  time.Duration       // for each answer (Timeouts.Command)

	// Fixed by start, from the snapshot: plain data, read without a lock.
	uids      []imap.UID // message n is uids[n-1]
	snapSizes []int64    // message n's RFC822.SIZE in the snapshot
	keyBase   CacheKey   // the cache key of this maildrop's bodies, UID aside

	staleAfter time.Duration // confirm sends a NOOP first when the last answer is older
	topWhole   int64         // TOP fetches a message whole up to this size plus its lines' estimate (top.go)
	expunges   atomic.Int64  // EXPUNGE responses seen (noteExpunge)
	checked    atomic.Int64  // expunges as of the last UID SEARCH that found the gone UIDs
	lastWord   atomic.Int64  // time (UnixNano) of the last answer from the backend

	mu         sync.Mutex
	pending    map[imap.UID]*flight // fetched or being fetched, not yet taken
	gone       map[imap.UID]bool    // expunged by another client, as a FETCH found
	verified   map[imap.UID]bool    // body length differs from RFC822.SIZE, message confirmed present
	queue      []*flight            // asked for by Retr/Top, not yet sent
	lastRetr   int                  // message number of the last RETR
	aheadNext  int                  // next candidate for fetch-ahead; 0 = not reading in order
	aheadBytes int64                // budget used by fetched-ahead bodies not yet taken
	closing    bool                 // stop has begun

	wake     chan struct{} // buffered, 1: there may be something to plan
	quit     chan struct{} // closed by stop: the loop ends after the batch under way
	loopDone chan struct{} // closed when the loop has ended
	loopOnce sync.Once     // starts the loop at the first wake-up, or marks it never started (stop)

	batches   atomic.Int64 // pipelined FETCH batches sent: backend round trips for bodies
	misrouted atomic.Int64 // bodies that reached the unilateral handler
}

func newFetcher(m *Maildrops, sizes sizeModel, conn *imapConn, to Timeouts, log *zap.Logger) *fetcher {
	return &fetcher{
		sizes:    sizes,
		conn:     conn,
		log:      log,
		cache:    m.cache,
		group:    &m.group,
		spoolDir: m.spoolDir,
		// A body the cache will hold is kept in memory whole, whatever
		// spool_memory says: it is going to be in memory anyway.
		memMax:   max(int64(m.cfg.SpoolMemory), m.cache.itemMax()),
		budget:   m.ahead,
		timeout:  to.Command,
		pending:  make(map[imap.UID]*flight),
		gone:     make(map[imap.UID]bool),
		verified: make(map[imap.UID]bool),
		// Dovecot, Cyrus and Courier report others' expunges with the answer
		// to our next command: a body served from the cache more than this
		// long after the last answer costs one NOOP first.
		staleAfter: m.staleAfter,
		topWhole:   m.topWhole,
		wake:       make(chan struct{}, 1),
		quit:       make(chan struct{}),
		loopDone:   make(chan struct{}),
	}
}

// unilateralFetch is the connection's UnilateralDataHandler.Fetch. go-imap
// hands a FETCH response to the waiting UID FETCH only if the UID comes
// before the literal; a server that sends BODY[] first has its bodies arrive
// here. Count them (before the literal is consumed, so the count is visible
// by the time the command completes) and let readBody refuse to call the
// message gone. It runs on the client's reader goroutine: it only records.
func (ft *fetcher) unilateralFetch(msg *imapclient.FetchMessageData) {
	for item := msg.Next(); item != nil; item = msg.Next() {
		if _, ok := item.(imapclient.FetchItemDataBodySection); ok {
			ft.misrouted.Add(1)
		}
	}
}

// noteExpunge is the connection's UnilateralDataHandler.Expunge: it only
// counts (it runs on the client's reader goroutine, and a sequence number
// cannot be mapped to a UID without a round trip); confirm finds which UID
// went.
func (ft *fetcher) noteExpunge() { ft.expunges.Add(1) }

func (ft *fetcher) heard() { ft.lastWord.Store(time.Now().UnixNano()) }

// start readies the loop over the snapshot's messages: message n is
// uids[n-1], with RFC822.SIZE snapSizes[n-1], and keyBase is the cache key of
// a body of the maildrop but for its UID. The fetcher never modifies uids or
// snapSizes.
func (ft *fetcher) start(uids []imap.UID, snapSizes []int64, keyBase CacheKey) {
	ft.uids, ft.snapSizes, ft.keyBase = uids, snapSizes, keyBase
	ft.heard() // the snapshot has just been answered
	// The loop starts at the first wake-up (wakeUp): a session that has
	// not asked for a body yet, the usual idle one, runs no goroutine here.
}

// key is the cache and singleflight key of a body of this maildrop.
func (ft *fetcher) key(uid imap.UID) CacheKey {
	k := ft.keyBase
	k.UID = uid
	return k
}

// beginStop ends the fetcher's service: no new flights, and queued ones
// fail with errClosed. It never blocks on the backend. Call it once, after
// start; stop then finishes the job.
func (ft *fetcher) beginStop() {
	ft.mu.Lock()
	ft.closing = true
	ft.aheadNext = 0
	queued := ft.queue
	ft.queue = nil
	ft.mu.Unlock()
	for _, f := range queued {
		ft.complete(f, nil, errClosed)
	}
}

// stop ends the loop: it finishes the batch it has sent (at most the
// fetch-ahead budget) or is cut off after closeTimeout, which leaves the
// connection broken; bodies nobody took are dropped. Call it once, after
// beginStop.
func (ft *fetcher) stop() {
	close(ft.quit)
	ft.loopOnce.Do(func() { close(ft.loopDone) }) // never started: it never will
	cut := time.AfterFunc(closeTimeout, func() {
		ft.conn.setBroken(fmt.Errorf("%w: fetch cut off at close", ErrUnavailable))
	})
	<-ft.loopDone
	cut.Stop()

	ft.mu.Lock()
	for uid, f := range ft.pending {
		if f.isDone() && f.b != nil {
			f.b.discard()
		}
		delete(ft.pending, uid)
	}
	ft.mu.Unlock()
}

// endAhead stops fetch-ahead (the session is ending) and reports whether
// stop has begun.
func (ft *fetcher) endAhead() (closing bool) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.aheadNext = 0
	return ft.closing
}

// flight is one body being fetched, or fetched and not yet taken.
type flight struct {
	n     int
	uid   imap.UID
	ahead bool  // fetched ahead: its cost counts against the budget until taken
	cost  int64 // bytes reserved (the snapshot size)
	done  chan struct{}
	b     *body // set before done is closed
	err   error
}

func newFlight(n int, uid imap.UID) *flight {
	return &flight{n: n, uid: uid, done: make(chan struct{})}
}

func (f *flight) isDone() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

func (ft *fetcher) wakeUp() {
	ft.loopOnce.Do(func() { go ft.loop() })
	select {
	case ft.wake <- struct{}{}:
	default:
	}
}

// get returns message n's body. retr says the client is reading it (RETR):
// that moves the fetch-ahead position (noteRetr); TOP does not.
func (ft *fetcher) get(ctx context.Context, n int, retr bool) (*body, error) {
	if retr {
		ft.noteRetr(n)
	}
	b, err := ft.find(ctx, n)
	if retr {
		// After find, not before: the loop must see this message's
		// demand first, or it would fetch the next ones ahead of it.
		ft.wakeUp()
	}
	if err != nil {
		return nil, err
	}
	if err := ft.confirm(n, b); err != nil {
		b.discard()
		return nil, err
	}
	return b, nil
}

// confirm makes sure message n is still there before its body b is served:
// see the file's comment. It makes no round trip when no EXPUNGE was seen
// since the last check, b has the snapshot's size (or was confirmed before)
// and the backend answered within staleAfter.
func (ft *fetcher) confirm(n int, b *body) error {
	uid := ft.uids[n-1]
	ft.mu.Lock()
	mismatch := b.size != ft.snapSizes[n-1] && !ft.verified[uid]
	ft.mu.Unlock()
	if err := ft.present(n, mismatch, b.size); err != nil {
		return err
	}
	if mismatch {
		// Held back by complete until now.
		if b.shareable() && ft.cache.fits(b.size) {
			ft.cache.Add(ft.key(uid), b.data)
		}
		ft.sizes.learnSize(n, b.size)
	}
	return nil
}

// present makes sure message n is still there before data of it is served
// (a whole body, or the parts of one that TOP needs): mismatch says the
// data disagrees with the snapshot's RFC822.SIZE (got is the size found,
// for the logs), which forces a check; otherwise there is none unless an
// EXPUNGE was seen since the last check or the backend's last answer is
// older than staleAfter.
func (ft *fetcher) present(n int, mismatch bool, got int64) error {
	uid := ft.uids[n-1]
	ft.mu.Lock()
	gone := ft.gone[uid]
	ft.mu.Unlock()
	if gone {
		return fmt.Errorf("%w: UID %d", ErrMessageGone, uid)
	}
	stale := time.Since(time.Unix(0, ft.lastWord.Load())) > ft.staleAfter
	if !mismatch && !stale && ft.expunges.Load() == ft.checked.Load() {
		return nil
	}
	if err := ft.recheck(mismatch || stale, mismatch); err != nil {
		return err
	}
	ft.mu.Lock()
	gone = ft.gone[uid]
	if mismatch && !gone {
		ft.verified[uid] = true
	}
	ft.mu.Unlock()
	if gone {
		if mismatch {
			ft.log.Info("body of a message expunged meanwhile not served", zap.Uint32("uid", uint32(uid)),
				zap.Int64("rfc822_size", ft.snapSizes[n-1]), zap.Int64("body", got))
		}
		return fmt.Errorf("%w: UID %d", ErrMessageGone, uid)
	}
	if mismatch {
		ft.log.Warn("RFC822.SIZE differs from the body; the message is there, serving the body",
			zap.Uint32("uid", uint32(uid)), zap.Int64("rfc822_size", ft.snapSizes[n-1]), zap.Int64("body", got))
	}
	return nil
}

// recheck asks the backend which of the snapshot's messages it still has
// (not \Deleted), after a NOOP if noop (to collect the EXPUNGEs the backend
// has not reported yet), and marks the others gone. Unless force, a NOOP
// that brings no EXPUNGE (none seen since the last check) is enough. It
// waits for the fetcher's batch under way, if any.
func (ft *fetcher) recheck(noop, force bool) error {
	ft.conn.cmdMu.Lock()
	defer ft.conn.cmdMu.Unlock()
	if err := ft.conn.brokenErr(); err != nil {
		return err
	}
	wd := watch(ft.timeout, ft.conn.kill)
	defer wd.stop()
	fail := func(op string, err error) error {
		if wd.stop() {
			err = fmt.Errorf("%w: %s timed out after %v", ErrUnavailable, op, ft.timeout)
		} else {
			err = commandError(op, err)
		}
		if ft.conn.c.State() == imap.ConnStateLogout {
			ft.conn.setBroken(err)
		}
		return err
	}
	if noop {
		if err := ft.conn.c.Noop().Wait(); err != nil {
			return fail("NOOP", err)
		}
		wd.reset(ft.timeout)
	}
	// Every EXPUNGE counted up to here has been answered for by the NOOP,
	// and the SEARCH below sees its effect.
	gen := ft.expunges.Load()
	if !force && gen == ft.checked.Load() {
		ft.heard()
		return nil
	}
	var set imap.UIDSet
	ft.mu.Lock()
	for _, uid := range ft.uids {
		if !ft.gone[uid] {
			set.AddNum(uid)
		}
	}
	ft.mu.Unlock()
	if len(set) == 0 {
		ft.checked.Store(gen)
		return nil
	}
	data, err := ft.conn.c.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{set},
		NotFlag: []imap.Flag{imap.FlagDeleted}}, nil).Wait()
	if err != nil {
		return fail("UID SEARCH", err)
	}
	ft.heard()
	have := make(map[imap.UID]bool)
	for _, uid := range data.AllUIDs() {
		have[uid] = true
	}
	ft.mu.Lock()
	for _, uid := range ft.uids {
		if !have[uid] {
			ft.gone[uid] = true
		}
	}
	ft.mu.Unlock()
	ft.checked.Store(gen)
	return nil
}

// find finds message n's body: fetched ahead by this session, in the shared
// cache (no backend round trip), or fetched now.
func (ft *fetcher) find(ctx context.Context, n int) (*body, error) {
	uid := ft.uids[n-1]
	ft.mu.Lock()
	f, gone := ft.pending[uid], ft.gone[uid]
	ft.mu.Unlock()
	if gone {
		return nil, fmt.Errorf("%w: UID %d", ErrMessageGone, uid)
	}
	if f != nil {
		b, err := ft.await(ctx, f)
		if !errors.Is(err, errTaken) {
			return b, err
		}
	}
	key := ft.key(uid)
	if data, ok := ft.cache.Get(key); ok {
		return memBody(data), nil
	}
	// Concurrent misses of one key (TOP and RETR racing, or another session)
	// share one backend FETCH.
	leader := false
	v, err, _ := ft.group.Do(key.String(), func() (any, error) {
		leader = true
		if data, ok := ft.cache.peek(key); ok {
			return memBody(data), nil
		}
		return ft.demand(ctx, n)
	})
	if leader {
		if err != nil {
			return nil, err
		}
		return v.(*body), nil
	}
	if err == nil && v.(*body).shareable() {
		return v.(*body), nil
	}
	if errors.Is(err, ErrMessageGone) {
		return nil, err
	}
	// A spooled body has one owner, and the leader's failure may have been
	// its own (its context ended): fetch for ourselves.
	return ft.demand(ctx, n)
}

// noteRetr follows the client's reading order: RETR n right after RETR n-1
// (or RETR 1 first) is reading in order, so fetch-ahead continues after n.
// A jump stops fetch-ahead, and bodies fetched ahead that the client has
// passed are dropped to free the budget.
func (ft *fetcher) noteRetr(n int) {
	ft.mu.Lock()
	if n == ft.lastRetr+1 {
		ft.aheadNext = max(ft.aheadNext, n+1)
	} else {
		ft.aheadNext = 0
	}
	ft.lastRetr = n
	var drop []*body
	for uid, f := range ft.pending {
		if f.ahead && f.n < n && f.isDone() {
			delete(ft.pending, uid)
			ft.aheadBytes -= f.cost
			if f.b != nil {
				drop = append(drop, f.b)
			}
		}
	}
	ft.mu.Unlock()
	for _, b := range drop {
		b.discard()
	}
}

// demand queues a fetch of message n (or joins the flight already under way)
// and waits for it.
func (ft *fetcher) demand(ctx context.Context, n int) (*body, error) {
	uid := ft.uids[n-1]
	for range 3 {
		ft.mu.Lock()
		if err := ft.conn.brokenErr(); err != nil {
			ft.mu.Unlock()
			return nil, err
		}
		if ft.closing {
			ft.mu.Unlock()
			return nil, errClosed
		}
		f := ft.pending[uid]
		if f == nil {
			f = newFlight(n, uid)
			ft.pending[uid] = f
			ft.queue = append(ft.queue, f)
		}
		ft.mu.Unlock()
		ft.wakeUp()
		b, err := ft.await(ctx, f)
		if !errors.Is(err, errTaken) {
			return b, err
		}
	}
	return nil, fmt.Errorf("%w: message %d: contended", ErrUnavailable, n)
}

// await waits for f and takes its body: the first taker owns it (and frees
// the fetch-ahead budget it held); later takers share a body in memory and
// get errTaken for a spooled one.
func (ft *fetcher) await(ctx context.Context, f *flight) (*body, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for message %d: %w", ErrUnavailable, f.n, ctx.Err())
	}
	ft.mu.Lock()
	owner := ft.pending[f.uid] == f
	if owner {
		delete(ft.pending, f.uid)
		if f.ahead {
			ft.aheadBytes -= f.cost
		}
	}
	ft.mu.Unlock()
	if owner && f.ahead {
		ft.wakeUp() // budget freed
	}
	switch {
	case f.err != nil:
		return nil, f.err
	case f.b == nil:
		// Fetched ahead into the cache only. If the cache has evicted it
		// since, the caller fetches it again.
		if data, ok := ft.cache.Get(ft.key(f.uid)); ok {
			return memBody(data), nil
		}
		return nil, errTaken
	case !owner && !f.b.shareable():
		return nil, errTaken
	}
	return f.b, nil
}

// loop is the fetcher's goroutine; it ends when quit is closed, after the
// batch under way.
func (ft *fetcher) loop() {
	defer close(ft.loopDone)
	for {
		select {
		case <-ft.quit:
			return
		case <-ft.wake:
		}
		for {
			select {
			case <-ft.quit:
				return
			default:
			}
			batch := ft.plan(maxInFlight)
			if len(batch) == 0 {
				break
			}
			ft.run(batch)
		}
	}
}

// plan takes the queued flights and adds fetch-ahead flights: the messages
// after the client's position, in order, while their snapshot sizes fit in
// what is left of the budget. A message bigger than the whole budget stops
// fetch-ahead until the client has read it.
//
// limit caps the fetch-ahead flights (not the queued ones, which the
// client waits for).
func (ft *fetcher) plan(limit int) []*flight {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	batch := ft.queue
	ft.queue = nil
	if ft.budget <= 0 || ft.aheadNext == 0 || ft.closing || ft.conn.brokenErr() != nil {
		return batch
	}
	for added := 0; ft.aheadNext <= len(ft.uids) && added < limit; {
		n := ft.aheadNext
		uid := ft.uids[n-1]
		if _, ok := ft.pending[uid]; ok || ft.gone[uid] {
			ft.aheadNext++
			continue
		}
		if _, ok := ft.cache.peek(ft.key(uid)); ok {
			ft.aheadNext++
			continue
		}
		size := ft.sizes.Size(n)
		if ft.aheadBytes+size > ft.budget {
			break
		}
		f := newFlight(n, uid)
		f.ahead, f.cost = true, size
		ft.pending[uid] = f
		ft.aheadBytes += size
		ft.aheadNext++
		batch = append(batch, f)
		added++
	}
	return batch
}

// run sends one UID FETCH per flight and reads the answers as they come.
// As each answer is complete it tops the pipeline up with what Retr has
// queued since and with more fetch-ahead, so that, while the client keeps
// reading in order and the budget allows, the backend never waits for us.
//
// Each command's answer is read by a goroutine of its own: a server may
// interleave the answers of pipelined commands (Dovecot sends "* 1 FETCH",
// "* 2 FETCH", then both tagged OKs), and go-imap's reader blocks until the
// FETCH data it routed to a command is consumed, so reading the commands
// one after the other would deadlock.
func (ft *fetcher) run(batch []*flight) {
	ft.conn.cmdMu.Lock()
	defer ft.conn.cmdMu.Unlock()
	if err := ft.conn.brokenErr(); err != nil {
		for _, f := range batch {
			ft.complete(f, nil, err)
		}
		return
	}
	// UID first, so that go-imap routes each answer to its command (it
	// matches FETCH responses by the UID seen before the literal).
	// FLAGS: a \Deleted there means the message is leaving (readBody).
	opts := &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}
	// Armed before the first write: a backend that does not read can block
	// a write as surely as one that does not answer. Each answer then gets
	// the full command timeout from the moment the previous one is
	// complete: a slow backend is fine, a silent one is not.
	wd := watch(ft.timeout, ft.conn.kill)
	ft.batches.Add(1)
	type answer struct {
		f   *flight
		b   *body
		err error
	}
	answers := make(chan answer, maxInFlight)
	send := func(f *flight) {
		fc := ft.conn.c.Fetch(imap.UIDSetNum(f.uid), opts)
		go func() {
			b, err := ft.readBody(fc, f)
			answers <- answer{f, b, err}
		}()
	}
	for _, f := range batch {
		send(f)
	}
	for outstanding := len(batch); outstanding > 0; outstanding-- {
		a := <-answers
		wd.reset(ft.timeout)
		ft.heard()
		err := a.err
		if err != nil && !errors.Is(err, ErrMessageGone) {
			op := fmt.Sprintf("UID FETCH %d", a.f.uid)
			if ft.conn.c.State() == imap.ConnStateLogout { // the connection is dead
				if wd.hasFired() {
					err = fmt.Errorf("%w: %s timed out after %v", ErrUnavailable, op, ft.timeout)
				}
				ft.conn.setBroken(commandError(op, err))
			}
			if !errors.Is(err, ErrUnavailable) {
				err = commandError(op, err)
			}
		}
		ft.complete(a.f, a.b, err)

		select {
		case <-ft.quit:
			continue // drain what was sent, send nothing more
		default:
		}
		if ft.conn.brokenErr() != nil {
			continue
		}
		for _, g := range ft.plan(maxInFlight - (outstanding - 1)) {
			send(g)
			outstanding++
		}
	}
	wd.stop()
	ft.log.Debug("fetched", zap.Int("first", batch[0].n))
}

// readBody consumes the answer to one UID FETCH of one message. It always
// drains and closes the command. No body and a tagged OK means the message
// is gone (RFC 3501 §6.4.8: UID FETCH of a nonexistent UID is not an error).
func (ft *fetcher) readBody(fc *imapclient.FetchCommand, f *flight) (*body, error) {
	var (
		b        *body
		spoolErr error
		deleted  bool
	)
	for msg := fc.Next(); msg != nil; msg = fc.Next() {
		var uid imap.UID
		flagged := false // \Deleted; the UID may come after FLAGS (Cyrus sends FLAGS first)
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = it.UID
			case imapclient.FetchItemDataFlags:
				flagged = flagged || slices.Contains(it.Flags, imap.FlagDeleted)
			case imapclient.FetchItemDataBodySection:
				// Never trust routing alone: it must be the UID we asked for.
				if it.Literal == nil || uid != f.uid || b != nil || spoolErr != nil {
					continue // msg.Next discards the literal
				}
				b, spoolErr = spoolLiteral(it.Literal, it.Literal.Size(), ft.memMax, ft.spoolDir)
				if spoolErr != nil {
					// The literal is half read. go-imap's reader goroutine
					// resumes as soon as a literal read fails, and the
					// discard that msg.Next and fc.Close do would then read
					// the same decoder concurrently (a data race in
					// go-imap). The connection is unusable anyway: close it
					// and let the reader goroutine end before going on.
					ft.conn.kill()
					<-ft.conn.c.Closed()
				}
			}
		}
		deleted = deleted || (flagged && uid == f.uid)
	}
	err := fc.Close()
	switch {
	case spoolErr != nil:
		if err == nil {
			// The literal was drained; only our spool failed (disk full).
			err = fmt.Errorf("%w: %w", ErrUnavailable, spoolErr)
		}
		return nil, err
	case b != nil && deleted:
		// Cyrus answers the UID FETCH of a message another session
		// expunged with its body and \Deleted: it is gone.
		b.discard()
		return nil, fmt.Errorf("%w: UID %d: flagged \\Deleted", ErrMessageGone, f.uid)
	case b != nil:
		if err != nil && !isStatus(err) {
			// The body is complete, the connection is not: deliver it and
			// let the next command find out.
			ft.conn.setBroken(commandError("FETCH", err))
		}
		return b, nil
	case err == nil && ft.misrouted.Load() > 0:
		ft.log.Error("backend sends BODY[] before UID in FETCH responses; bodies cannot be matched to messages")
		return nil, fmt.Errorf("%w: UID %d: FETCH response without UID before the body", ErrUnavailable, f.uid)
	case err == nil:
		return nil, fmt.Errorf("%w: UID %d", ErrMessageGone, f.uid)
	}
	if fetchNoIsGone(err) {
		return nil, fmt.Errorf("%w: UID %d: %w", ErrMessageGone, f.uid, err)
	}
	return nil, err
}

// complete publishes a flight's outcome: the body goes to the cache when it
// fits there, and the maildrop learns its exact size (before the flight is
// done, so Size is exact by the time Retr returns).
//
// A body fetched ahead that went to the cache is not kept by the flight as
// well: the memory spent on bodies fetched ahead is then the cache's, which
// is bounded for the whole gateway, rather than up to fetch_ahead for every
// session. (If the cache evicts it before the client asks, it is fetched
// again.) Bodies the cache does not take stay with the flight, in memory up
// to spool_memory, else in a file.
func (ft *fetcher) complete(f *flight, b *body, err error) {
	keep := b
	// A body of another length than the snapshot announced is neither
	// cached nor taken for the size until confirm has checked that the
	// message is there (it may be a placeholder for an expunged one).
	if b != nil && b.size == ft.snapSizes[f.n-1] {
		if b.shareable() && ft.cache.fits(b.size) {
			ft.cache.Add(ft.key(f.uid), b.data)
			if f.ahead {
				keep = nil
			}
		}
		ft.sizes.learnSize(f.n, b.size)
	}
	if errors.Is(err, ErrMessageGone) {
		ft.mu.Lock()
		ft.gone[f.uid] = true
		ft.mu.Unlock()
	}
	f.b, f.err = keep, err
	close(f.done)
}
