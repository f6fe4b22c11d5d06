package upstream

// Fetching bodies, and fetching them ahead of the client.
//
// One goroutine per maildrop, the fetcher (fetchLoop), issues every body
// FETCH. Retr and Top never touch the backend themselves: they queue a
// flight for the UID they need and wait for it. The fetcher takes the
// queued flights and, while the client reads in order, adds the next
// messages up to the fetch-ahead byte budget; it sends one UID FETCH per
// message without waiting (pipelining, RFC 3501 §5.5), then reads the
// answers in order, spooling each literal and completing its flight as soon
// as the literal has arrived. A client downloading its maildrop therefore
// waits for a backend round trip about once per budget's worth of messages,
// not once per message.
//
// go-imap delivers FETCH data on its reader goroutine, which blocks until the
// literal is consumed, and a server may interleave the answers of pipelined
// commands, so each command's answer is read by a goroutine of its own; the
// fetcher holds cmdMu from the first command of a batch to the last answer,
// so no other command (STORE, EXPUNGE at QUIT) is sent meanwhile.

import (
	"context"
	"errors"
	"fmt"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
)

// maxBatch caps the commands of one pipelined batch, whatever the budget.
const maxBatch = 32

// errTaken: the flight's spooled body went to another caller.
var errTaken = errors.New("body taken by another reader")

// errClosed: the maildrop was closed while a body was wanted.
var errClosed = fmt.Errorf("%w: maildrop closed", ErrUnavailable)

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

func (d *Maildrop) wakeFetcher() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// demand queues a fetch of message n (or joins the flight already under way)
// and waits for it.
func (d *Maildrop) demand(ctx context.Context, n int) (*body, error) {
	uid := d.uids[n-1]
	for range 3 {
		d.mu.Lock()
		if err := d.brokenErr(); err != nil {
			d.mu.Unlock()
			return nil, err
		}
		if d.closing {
			d.mu.Unlock()
			return nil, errClosed
		}
		f := d.pending[uid]
		if f == nil {
			f = newFlight(n, uid)
			d.pending[uid] = f
			d.queue = append(d.queue, f)
		}
		d.mu.Unlock()
		d.wakeFetcher()
		b, err := d.await(ctx, f)
		if !errors.Is(err, errTaken) {
			return b, err
		}
	}
	return nil, fmt.Errorf("%w: message %d: contended", ErrUnavailable, n)
}

// await waits for f and takes its body: the first taker owns it (and frees
// the fetch-ahead budget it held); later takers share a body in memory and
// get errTaken for a spooled one.
func (d *Maildrop) await(ctx context.Context, f *flight) (*body, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for message %d: %w", ErrUnavailable, f.n, ctx.Err())
	}
	d.mu.Lock()
	owner := d.pending[f.uid] == f
	if owner {
		delete(d.pending, f.uid)
		if f.ahead {
			d.aheadBytes -= f.cost
		}
	}
	d.mu.Unlock()
	if owner && f.ahead {
		d.wakeFetcher() // budget freed
	}
	switch {
	case f.err != nil:
		return nil, f.err
	case f.b == nil:
		// Fetched ahead into the cache only. If the cache has evicted it
		// since, the caller fetches it again.
		if data, ok := d.m.cache.Get(d.key(f.uid)); ok {
			return memBody(data), nil
		}
		return nil, errTaken
	case !owner && !f.b.shareable():
		return nil, errTaken
	}
	return f.b, nil
}

// fetchLoop is the fetcher goroutine; it ends when quit is closed, after the
// batch under way.
func (d *Maildrop) fetchLoop() {
	defer close(d.loopDone)
	for {
		select {
		case <-d.quit:
			return
		case <-d.wake:
		}
		for {
			select {
			case <-d.quit:
				return
			default:
			}
			batch := d.plan(maxBatch)
			if len(batch) == 0 {
				break
			}
			d.run(batch)
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
func (d *Maildrop) plan(limit int) []*flight {
	d.mu.Lock()
	defer d.mu.Unlock()
	batch := d.queue
	d.queue = nil
	if d.m.ahead <= 0 || d.aheadNext == 0 || d.closing || d.brokenErr() != nil {
		return batch
	}
	for added := 0; d.aheadNext <= len(d.uids) && added < limit; {
		n := d.aheadNext
		uid := d.uids[n-1]
		if _, ok := d.pending[uid]; ok || d.gone[uid] {
			d.aheadNext++
			continue
		}
		if _, ok := d.m.cache.peek(d.key(uid)); ok {
			d.aheadNext++
			continue
		}
		size := d.sizes[n-1].Load()
		if d.aheadBytes+size > d.m.ahead {
			break
		}
		f := newFlight(n, uid)
		f.ahead, f.cost = true, size
		d.pending[uid] = f
		d.aheadBytes += size
		d.aheadNext++
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
func (d *Maildrop) run(batch []*flight) {
	d.cmdMu.Lock()
	defer d.cmdMu.Unlock()
	if err := d.brokenErr(); err != nil {
		for _, f := range batch {
			d.complete(f, nil, err)
		}
		return
	}
	// UID first, so that go-imap routes each answer to its command (it
	// matches FETCH responses by the UID seen before the literal).
	opts := &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}
	// Armed before the first write: a backend that does not read can block
	// a write as surely as one that does not answer. Each answer then gets
	// the full command timeout from the moment the previous one is
	// complete: a slow backend is fine, a silent one is not.
	wd := watch(d.m.to.Command, d.kill)
	d.batches.Add(1)
	type answer struct {
		f   *flight
		b   *body
		err error
	}
	answers := make(chan answer, maxBatch)
	send := func(f *flight) {
		fc := d.c.Fetch(imap.UIDSetNum(f.uid), opts)
		go func() {
			b, err := d.readBody(fc, f)
			answers <- answer{f, b, err}
		}()
	}
	for _, f := range batch {
		send(f)
	}
	for outstanding := len(batch); outstanding > 0; outstanding-- {
		a := <-answers
		wd.reset(d.m.to.Command)
		err := a.err
		if err != nil && !errors.Is(err, ErrMessageGone) {
			op := fmt.Sprintf("UID FETCH %d", a.f.uid)
			if d.c.State() == imap.ConnStateLogout { // the connection is dead
				if wd.hasFired() {
					err = fmt.Errorf("%w: %s timed out after %v", ErrUnavailable, op, d.m.to.Command)
				}
				d.setBroken(commandError(op, err))
			}
			if !errors.Is(err, ErrUnavailable) {
				err = commandError(op, err)
			}
		}
		d.complete(a.f, a.b, err)

		select {
		case <-d.quit:
			continue // drain what was sent, send nothing more
		default:
		}
		if d.brokenErr() != nil {
			continue
		}
		for _, g := range d.plan(maxBatch - (outstanding - 1)) {
			send(g)
			outstanding++
		}
	}
	wd.stop()
	d.log.Debug("fetched", zap.Int("first", batch[0].n))
}

// readBody consumes the answer to one UID FETCH of one message. It always
// drains and closes the command. No body and a tagged OK means the message
// is gone (RFC 3501 §6.4.8: UID FETCH of a nonexistent UID is not an error).
func (d *Maildrop) readBody(fc *imapclient.FetchCommand, f *flight) (*body, error) {
	var (
		b        *body
		spoolErr error
	)
	// A body the cache will hold is kept in memory whole, whatever
	// spool_memory says: it is going to be in memory anyway.
	memMax := max(int64(d.m.cfg.SpoolMemory), d.m.cache.itemMax())
	for msg := fc.Next(); msg != nil; msg = fc.Next() {
		var uid imap.UID
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = it.UID
			case imapclient.FetchItemDataBodySection:
				// Never trust routing alone: it must be the UID we asked for.
				if it.Literal == nil || uid != f.uid || b != nil || spoolErr != nil {
					continue // msg.Next discards the literal
				}
				b, spoolErr = spoolLiteral(it.Literal, it.Literal.Size(), memMax, d.m.spoolDir)
				if spoolErr != nil {
					// The literal is half read. go-imap's reader goroutine
					// resumes as soon as a literal read fails, and the
					// discard that msg.Next and fc.Close do would then read
					// the same decoder concurrently (a data race in
					// go-imap). The connection is unusable anyway: close it
					// and let the reader goroutine end before going on.
					d.kill()
					<-d.c.Closed()
				}
			}
		}
	}
	err := fc.Close()
	switch {
	case spoolErr != nil:
		if err == nil {
			// The literal was drained; only our spool failed (disk full).
			err = fmt.Errorf("%w: %w", ErrUnavailable, spoolErr)
		}
		return nil, err
	case b != nil:
		if err != nil && !isStatus(err) {
			// The body is complete, the connection is not: deliver it and
			// let the next command find out.
			d.setBroken(commandError("FETCH", err))
		}
		return b, nil
	case err == nil && d.misrouted.Load() > 0:
		d.log.Error("backend sends BODY[] before UID in FETCH responses; bodies cannot be matched to messages")
		return nil, fmt.Errorf("%w: UID %d: FETCH response without UID before the body", ErrUnavailable, f.uid)
	case err == nil:
		return nil, fmt.Errorf("%w: UID %d", ErrMessageGone, f.uid)
	}
	var ierr *imap.Error
	if errors.As(err, &ierr) && ierr.Type == imap.StatusResponseTypeNo {
		switch ierr.Code {
		case "", "EXPUNGEISSUED", imap.ResponseCodeNonExistent:
			// RFC 2180 §4.1.2: NO for a message expunged by another session.
			return nil, fmt.Errorf("%w: UID %d: %w", ErrMessageGone, f.uid, err)
		}
	}
	return nil, err
}

// complete publishes a flight's outcome: the body goes to the cache when it
// fits there, and its true length replaces the snapshot's size.
//
// A body fetched ahead that went to the cache is not kept by the flight as
// well: the memory spent on bodies fetched ahead is then the cache's, which
// is bounded for the whole gateway, rather than up to fetch_ahead for every
// session. (If the cache evicts it before the client asks, it is fetched
// again.) Bodies the cache does not take stay with the flight, in memory up
// to spool_memory, else in a file.
func (d *Maildrop) complete(f *flight, b *body, err error) {
	keep := b
	if b != nil {
		if b.shareable() && d.m.cache.fits(b.size) {
			d.m.cache.Add(d.key(f.uid), b.data)
			if f.ahead {
				keep = nil
			}
		}
		d.learnSize(f.n, b.size)
	}
	if errors.Is(err, ErrMessageGone) {
		d.mu.Lock()
		d.gone[f.uid] = true
		d.mu.Unlock()
	}
	f.b, f.err = keep, err
	close(f.done)
}
