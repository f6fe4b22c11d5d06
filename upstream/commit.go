package upstream

// QUIT (the UPDATE state), \Seen, and the end of a maildrop.
//
// RFC 1939 §6: only a QUIT in the TRANSACTION state removes messages, and
// only those the session marked. Over IMAP that means: nothing is flagged
// \Deleted before QUIT (another client's EXPUNGE would remove it), and at
// QUIT the removal names exactly our UIDs: UID STORE +FLAGS.SILENT (\Deleted)
// then UID EXPUNGE (UIDPLUS, RFC 4315), which leaves every other client's
// \Deleted messages alone. A plain EXPUNGE would remove those too, so it is
// never sent.
//
// \Seen (mark_seen): RETR adds the UID to a batch instead of costing a round
// trip each; the batch is sent as one UID STORE +FLAGS.SILENT (\Seen) at
// Commit (before the deletions, so a moved message arrives read) and, for
// sessions that end without QUIT, at Close. Setting \Seen on a dropped
// session is what Dovecot's POP3 server does too (it marks as it goes); it
// is not a removal, so RFC 1939 §6 does not forbid it, and it keeps the
// "read" state the user saw. TOP never marks (RFC 1939 §7 TOP is a peek).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
)

// Commit applies the deletions of a QUIT in the TRANSACTION state (RFC 1939
// §6 UPDATE), per pop3.delete:
//
//	expunge  UID STORE +FLAGS.SILENT (\Deleted), then UID EXPUNGE of exactly
//	         those UIDs. Without UIDPLUS the messages stay flagged and a
//	         warning is logged: a plain EXPUNGE could remove other clients'
//	         messages.
//	flag     only the UID STORE; the store's own expiry or the user's next
//	         IMAP expunge removes them.
//	move:X   UID MOVE to X (RFC 6851), or UID COPY + STORE \Deleted +
//	         UID EXPUNGE without MOVE. X is created if the backend says
//	         TRYCREATE.
//
// Without UIDPLUS (expunge, or move:X without MOVE) the messages are left
// flagged \Deleted and Commit returns a *NotExpungedError, so the client is
// told.
//
// deleted lists message numbers. Messages already expunged elsewhere are not
// an error (a UID command ignores UIDs that no longer exist). Any failure
// wraps ErrPartialCommit: the client is told "-ERR some deleted messages not
// removed" and no message it did not delete is touched. The pending \Seen
// batch is sent first. Commit does not release the maildrop: Close does.
func (d *Maildrop) Commit(ctx context.Context, deleted []int) error {
	var uids imap.UIDSet
	for _, n := range deleted {
		if !d.valid(n) {
			return fmt.Errorf("%w: no message %d", ErrPartialCommit, n)
		}
		uids.AddNum(d.uids[n-1])
	}
	if closing := d.fetch.endAhead(); closing {
		return fmt.Errorf("%w: %w", ErrPartialCommit, errClosed)
	}
	// UPDATE: from here no newer session may take the lock over.
	if !d.hold.enterUpdate() {
		return fmt.Errorf("%w: the maildrop was taken over by a newer session", ErrPartialCommit)
	}
	// RFC 1939 §4: the exclusive-access lock must still be ours when the
	// maildrop is changed; a cluster lease lost meanwhile (a Redis
	// failover, a long pause) means another session may hold it now, so
	// nothing is committed.
	if err := d.lease.Confirm(ctx); err != nil {
		d.log.Warn("QUIT: maildrop lock lost; nothing committed", zap.Error(err))
		return fmt.Errorf("%w: %w", ErrPartialCommit, err)
	}

	d.cmdMu.Lock()
	defer d.cmdMu.Unlock()
	if err := d.brokenErr(); err != nil {
		if len(deleted) == 0 {
			return nil // nothing to do: a lost \Seen batch is logged at Close
		}
		return fmt.Errorf("%w: %w", ErrPartialCommit, err)
	}
	wd := watch(d.to.Command, d.kill)
	defer wd.stop()
	stopCtx := context.AfterFunc(ctx, d.kill)
	defer stopCtx()

	start := time.Now()
	if err := d.flushSeen(wd); err != nil {
		d.log.Warn("setting \\Seen failed", zap.Error(err))
	}
	if len(deleted) == 0 {
		d.committed.Store(!wd.hasFired())
		return nil
	}
	policy := d.m.cfg.Delete
	err := d.remove(wd, uids, policy)
	var ne *NotExpungedError
	if errors.As(err, &ne) {
		d.committed.Store(true)
		return err // logged by remove; not a failure of the commit
	}
	if err != nil {
		if wd.stop() {
			err = fmt.Errorf("%w: timed out after %v", ErrUnavailable, d.to.Command)
		}
		if d.c.State() == imap.ConnStateLogout {
			d.setBroken(err)
		}
		d.log.Warn("QUIT: deletions not applied", zap.String("delete", policy),
			zap.Int("messages", len(deleted)), zap.Error(err))
		return fmt.Errorf("%w: %w", ErrPartialCommit, err)
	}
	d.log.Info("QUIT: deletions applied", zap.String("delete", policy), zap.Int("messages", len(deleted)),
		zap.Duration("elapsed", time.Since(start)))
	d.committed.Store(true)
	return nil
}

// remove applies policy to uids; cmdMu is held and wd armed.
func (d *Maildrop) remove(wd *watchdog, uids imap.UIDSet, policy string) error {
	uidPlus := d.caps.Has(imap.CapUIDPlus)
	switch {
	case policy == DeleteFlag:
		return d.storeDeleted(uids)
	case policy == DeleteExpunge:
		if err := d.storeDeleted(uids); err != nil {
			return err
		}
		if !uidPlus {
			d.log.Warn("backend lacks UIDPLUS: deleted messages are flagged \\Deleted but not expunged",
				zap.String("uids", uids.String()))
			return &NotExpungedError{UIDs: uids.String()}
		}
		wd.reset(d.to.Command)
		_, err := d.c.UIDExpunge(uids).Collect()
		return commandErrorIf("UID EXPUNGE", err)
	case strings.HasPrefix(policy, DeleteMovePfx):
		dest := strings.TrimPrefix(policy, DeleteMovePfx)
		err := d.move(wd, uids, dest, uidPlus)
		var ierr *imap.Error
		if errors.As(err, &ierr) && ierr.Code == imap.ResponseCodeTryCreate {
			// RFC 3501 §6.4.7: the destination does not exist yet.
			wd.reset(d.to.Command)
			if cerr := d.c.Create(dest, nil).Wait(); cerr != nil {
				return commandError("CREATE "+dest, cerr)
			}
			d.log.Info("created the move destination", zap.String("mailbox", dest))
			wd.reset(d.to.Command)
			err = d.move(wd, uids, dest, uidPlus)
		}
		return err
	}
	return fmt.Errorf("pop3.delete: unknown policy %q", policy)
}

func (d *Maildrop) move(wd *watchdog, uids imap.UIDSet, dest string, uidPlus bool) error {
	if d.caps.Has(imap.CapMove) {
		_, err := d.c.Move(uids, dest).Wait()
		return commandErrorIf("UID MOVE", err)
	}
	if _, err := d.c.Copy(uids, dest).Wait(); err != nil {
		return commandErrorIf("UID COPY", err)
	}
	wd.reset(d.to.Command)
	if err := d.storeDeleted(uids); err != nil {
		return err
	}
	if !uidPlus {
		d.log.Warn("backend lacks MOVE and UIDPLUS: moved messages are copied and flagged \\Deleted, not expunged",
			zap.String("uids", uids.String()))
		return &NotExpungedError{UIDs: uids.String()}
	}
	wd.reset(d.to.Command)
	_, err := d.c.UIDExpunge(uids).Collect()
	return commandErrorIf("UID EXPUNGE", err)
}

func (d *Maildrop) storeDeleted(uids imap.UIDSet) error {
	err := d.c.Store(uids, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close()
	return commandErrorIf("UID STORE +FLAGS.SILENT (\\Deleted)", err)
}

// flushSeen sends the pending \Seen batch; cmdMu is held and wd armed. A
// UID STORE of UIDs expunged meanwhile is harmless.
func (d *Maildrop) flushSeen(wd *watchdog) error {
	d.mu.Lock()
	uids := d.seen
	d.seen = nil
	d.mu.Unlock()
	if len(uids) == 0 {
		return nil
	}
	wd.reset(d.to.Command)
	err := d.c.Store(uids, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagSeen}}, nil).Close()
	return commandErrorIf("UID STORE +FLAGS.SILENT (\\Seen)", err)
}

func commandErrorIf(op string, err error) error {
	if err == nil {
		return nil
	}
	return commandError(op, err)
}

// Close ends the maildrop. It releases the lock at once, so that a client
// that reconnects right after a drop is never told [IN-USE] (RFC 1939 §6: a
// session that ends without QUIT changes nothing, and its lock must go with
// it, within a second), then does the backend clean-up in the
// background: it stops fetch-ahead (the batch under way is finished or cut
// off after closeTimeout), sends the pending \Seen batch and LOGOUT (each
// within closeTimeout, and only on a connection still alive), closes the
// backend connection and removes spooled bodies. Maildrops.Wait waits for
// these clean-ups.
//
// It changes nothing else on the backend: a session that ends without
// Commit deletes nothing (RFC 1939 §6). The user's next session may start
// before our \Seen flags are set; POP3 does not show \Seen, so it sees the
// same maildrop. Close is idempotent and never blocks on the backend;
// readers returned by Retr and Top stay readable after it.
func (d *Maildrop) Close() error {
	d.closeOnce.Do(func() {
		// No new flight after this: nothing can be fetched for a session
		// that has ended, and Commit refuses.
		d.fetch.beginStop()
		d.lease.Release()
		d.m.cleanups.Add(1)
		go func() {
			defer d.m.cleanups.Done()
			d.cleanup()
		}()
	})
	return nil
}

// cleanup is the background part of Close.
func (d *Maildrop) cleanup() {
	// Queued fetches have failed; the batch under way is finished (at most
	// the fetch-ahead budget) or cut off, and bodies nobody took are dropped.
	d.fetch.stop()

	d.cmdMu.Lock()
	defer d.cmdMu.Unlock()
	if d.alive() {
		wd := watch(min(closeTimeout, d.to.Command), d.kill)
		if err := d.flushSeen(wd); err != nil {
			d.log.Warn("setting \\Seen failed", zap.Error(err))
		}
		if d.alive() && !wd.hasFired() {
			if d.park(wd) {
				return
			}
			// QUIT has been answered already, or is answered meanwhile:
			// nobody waits for this.
			wd.reset(min(closeTimeout, d.to.Command))
			d.c.Logout().Wait() // the answer does not matter
		}
		wd.stop()
	} else {
		d.mu.Lock()
		lost := d.seen
		d.mu.Unlock()
		if len(lost) > 0 {
			d.log.Warn("\\Seen not set: backend connection lost", zap.String("uids", lost.String()))
		}
	}
	d.kill()
	d.c.Close()
	d.log.Debug("maildrop closed", zap.Int64("expunged_elsewhere", d.fetch.expunges.Load()))
}

// park hands the connection to the pop3.reuse pool instead of logging out,
// and reports whether it did. Only after a successful Commit (the session
// ended with QUIT, and its UPDATE was confirmed), on a connection alive with
// nothing in flight: the fetcher has stopped and \Seen is flushed; wd is
// armed, and stopped here. cmdMu is held.
func (d *Maildrop) park(wd *watchdog) bool {
	if d.m.reuse == nil || !d.committed.Load() || wd.stop() {
		return false
	}
	d.m.cleanups.Add(1) // inside a clean-up: the count is not zero
	pk := &parked{key: d.reuseKey, c: d.c, raw: d.raw, route: d.route, caps: d.caps, uidValidity: d.uidValidity}
	if !d.m.reuse.park(pk) {
		d.m.cleanups.Done()
		return false
	}
	d.log.Debug("backend connection parked for reuse", zap.Duration("for", d.m.reuse.ttl))
	return true
}

// alive reports whether the backend connection can still take a command:
// never send one on a connection already dead (a watchdog or the fetcher's
// cut-off closed it, or the backend hung up).
func (d *Maildrop) alive() bool {
	if d.brokenErr() != nil || d.c.State() == imap.ConnStateLogout {
		return false
	}
	select {
	case <-d.c.Closed():
		return false
	default:
		return true
	}
}
