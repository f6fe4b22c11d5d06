package upstream

// TOP at the cost of what TOP needs.
//
// RFC 1939 §7: "TOP msg n" answers the header, the blank line that ends it,
// and the first n lines of the body (all of them if the body has fewer).
// Fetching the whole body for that pulls every attachment through the
// gateway for a client that only previews headers, so unless the whole body
// is at hand (cached, fetched ahead or being fetched for this session) or the
// message is so small that a partial fetch would cost about as much (at most
// Maildrops.topWhole plus the estimate for the lines), top asks the backend
// for the parts TOP shows:
//
//	TOP n 0: UID FETCH uid (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])
//	TOP n k: UID FETCH uid (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER] BODY.PEEK[TEXT]<0.N>)
//
// with N an estimate of k lines (topLineBytes each), then, while the text so
// far holds fewer than k lines and the backend had more to give, UID FETCH
// uid (UID FLAGS BODY.PEEK[TEXT]<off.M>) with M doubled each time.
// BODY.PEEK leaves \Seen alone (RFC 3501 §6.4.5).
//
// The bytes are RETR's: RFC 3501 §6.4.5 defines TEXT as the body "omitting
// the [RFC-2822] header", and a header fetch includes the blank line that
// ends the header, so HEADER followed by TEXT is BODY[]; a partial is the
// substring at its offset, and an offset beyond the end gives "" (RFC 3501
// §6.4.5, <partial>). Servers differ at the edges (a message with no blank
// line after its header; a header the server re-serializes), so the pieces
// are checked against the snapshot's RFC822.SIZE: a header that does not end
// in a blank line must be the whole message, and a text fetched to its end
// must make header + text as long as the message; when they do not add up,
// top falls back to the whole body, as RETR fetches it. The session then
// cuts what top returns at the k-th line (gateway/pop3's topReader), the
// same cut as for a whole body, so dot-stuffing, CRLF and a last line
// without CRLF come out as RETR's would.
//
// A partial body is never cached (the cache holds whole bodies only, which
// RETR serves), and a message is checked as for RETR before its top is
// served (confirm, invariant 9): a \Deleted in the answer, an expunge seen,
// or an RFC822.SIZE other than the snapshot's makes the check.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

const (
	// topLineBytes is the estimate of one line of text: base64 and
	// quoted-printable lines are at most 78 octets (RFC 2045 §6.7, §6.8), and
	// most text is shorter.
	topLineBytes = 128
	// topMinText is the least text fetched for TOP n k, k > 0: a round trip
	// costs more than a few KB.
	topMinText = 4 << 10
	// defaultTopWhole is Maildrops.topWhole: a message up to this size plus
	// the estimate for its lines is fetched whole for TOP (and cached for the
	// RETR that often follows), as a typical header alone is a few KB.
	defaultTopWhole = 8 << 10
	// topMaxPartial bounds the bytes a partial TOP holds in memory; a TOP
	// that needs more gets the whole body, fetched (and spooled) as for RETR.
	topMaxPartial = 1 << 20
)

// errTopWhole: the parts do not add up to RETR's bytes, or would be too
// big; fetch the whole body instead.
var errTopWhole = errors.New("top: fetch the whole body")

// top returns a prefix of message n's body (or all of it) that holds the
// header and at least its first lines lines of text, as RETR would send
// them.
func (ft *fetcher) top(ctx context.Context, n, lines int) (*body, error) {
	uid := ft.uids[n-1]
	ft.mu.Lock()
	_, pending := ft.pending[uid]
	gone := ft.gone[uid]
	ft.mu.Unlock()
	if gone {
		return nil, fmt.Errorf("%w: UID %d", ErrMessageGone, uid)
	}
	text := topTextGuess(lines)
	if _, cached := ft.cache.peek(ft.key(uid)); cached || pending || ft.snapSizes[n-1] <= ft.topWhole+text {
		return ft.get(ctx, n, false)
	}
	data, mismatch, err := ft.topParts(n, lines, text)
	if errors.Is(err, errTopWhole) {
		return ft.get(ctx, n, false)
	}
	if err != nil {
		return nil, err
	}
	b := memBody(data)
	if err := ft.present(n, mismatch, b.size); err != nil {
		return nil, err
	}
	return b, nil
}

// topTextGuess is the text to fetch first for lines lines.
func topTextGuess(lines int) int64 {
	if lines <= 0 {
		return 0
	}
	if lines > topMaxPartial/topLineBytes {
		return topMaxPartial
	}
	return max(topMinText, int64(lines)*topLineBytes)
}

// topParts fetches the header and enough text for lines lines (see the
// file's comment). mismatch reports that the backend's answer disagrees with
// the snapshot's size, which confirm must check before the parts are served.
func (ft *fetcher) topParts(n, lines int, text int64) (data []byte, mismatch bool, err error) {
	uid, snap := ft.uids[n-1], ft.snapSizes[n-1]
	header := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
	secs := []*imap.FetchItemBodySection{header}
	if lines > 0 {
		secs = append(secs, textPartial(0, text))
	}
	got, size, err := ft.fetchParts(uid, secs, true)
	if err != nil {
		return nil, false, err
	}
	mismatch = size != snap
	h := got[0]
	if !endsInBlankLine(h) {
		// No blank line: the header is the whole message, or the server
		// answers otherwise than BODY[] would.
		if int64(len(h)) != snap {
			return nil, false, errTopWhole
		}
		return h, mismatch, nil
	}
	if int64(len(h)) > snap {
		return nil, false, errTopWhole
	}
	if lines == 0 {
		return h, mismatch, nil
	}
	data = append(h, got[1]...)
	have, chunk := int64(len(got[1])), text
	ended := have < chunk
	for {
		if ended {
			// The text ended within what was asked: this is the whole
			// message.
			if int64(len(data)) != snap {
				return nil, false, errTopWhole
			}
			return data, mismatch, nil
		}
		if bytes.Count(data[len(h):], []byte{'\n'}) >= lines {
			return data, mismatch, nil
		}
		chunk *= 2
		if int64(len(data)) > snap || int64(len(data))+chunk > topMaxPartial {
			// More text than the message has, or than a partial holds.
			return nil, false, errTopWhole
		}
		got, _, err := ft.fetchParts(uid, []*imap.FetchItemBodySection{textPartial(have, chunk)}, false)
		if err != nil {
			return nil, false, err
		}
		data = append(data, got[0]...)
		have += int64(len(got[0]))
		ended = int64(len(got[0])) < chunk
	}
}

func textPartial(off, size int64) *imap.FetchItemBodySection {
	return &imap.FetchItemBodySection{Specifier: imap.PartSpecifierText, Peek: true,
		Partial: &imap.SectionPartial{Offset: off, Size: size}}
}

// endsInBlankLine reports whether a header ends with the empty line that
// separates it from the body (CRLF CRLF, or bare LFs).
func endsInBlankLine(h []byte) bool {
	return bytes.HasSuffix(h, []byte("\n\r\n")) || bytes.HasSuffix(h, []byte("\n\n")) ||
		bytes.Equal(h, []byte("\r\n")) || bytes.Equal(h, []byte("\n"))
}

// fetchParts sends one UID FETCH of the sections secs of uid (with
// RFC822.SIZE if withSize) and returns each section's bytes, in the order
// of secs. It holds the connection's command stream for the exchange, after
// the fetcher's batch under way, as recheck does. A message that is gone
// (\Deleted, no answer, NO) gives ErrMessageGone and is marked gone; a
// section larger than topMaxPartial gives errTopWhole.
func (ft *fetcher) fetchParts(uid imap.UID, secs []*imap.FetchItemBodySection, withSize bool) ([][]byte, int64, error) {
	ft.conn.cmdMu.Lock()
	defer ft.conn.cmdMu.Unlock()
	ft.mu.Lock()
	closing := ft.closing
	ft.mu.Unlock()
	if closing {
		return nil, 0, errClosed
	}
	if err := ft.conn.brokenErr(); err != nil {
		return nil, 0, err
	}
	op := fmt.Sprintf("UID FETCH %d", uid)
	wd := watch(ft.timeout, ft.conn.kill)
	defer wd.stop()
	// UID first: go-imap routes an answer to its command by the UID seen
	// before the literals. FLAGS for a \Deleted (Cyrus), RFC822.SIZE for an
	// answer that is not the snapshot's message (Courier's placeholder).
	opts := &imap.FetchOptions{UID: true, Flags: true, RFC822Size: withSize, BodySection: secs}
	fc := ft.conn.c.Fetch(imap.UIDSetNum(uid), opts)
	parts := make([][]byte, len(secs))
	found := make([]bool, len(secs))
	var (
		size     int64 = -1
		deleted  bool
		tooBig   bool
		readErr  error
		answered bool
	)
	for msg := fc.Next(); msg != nil; msg = fc.Next() {
		var muid imap.UID
		flagged := false // \Deleted; the UID may come after FLAGS (Cyrus)
		msize := int64(-1)
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				muid = it.UID
			case imapclient.FetchItemDataFlags:
				flagged = flagged || slices.Contains(it.Flags, imap.FlagDeleted)
			case imapclient.FetchItemDataRFC822Size:
				msize = it.Size
			case imapclient.FetchItemDataBodySection:
				if muid != uid || readErr != nil {
					continue // msg.Next discards the literal
				}
				i := sectionIndex(secs, it.Section)
				if i < 0 || found[i] {
					continue
				}
				found[i], answered = true, true
				if it.Literal == nil {
					continue // NIL: no such part, ""
				}
				if it.Literal.Size() > topMaxPartial {
					tooBig = true
					continue
				}
				buf := make([]byte, it.Literal.Size())
				if _, err := io.ReadFull(it.Literal, buf); err != nil {
					// As in readBody: the literal is half read and the
					// connection is unusable; let go-imap's reader end.
					readErr = fmt.Errorf("reading %s: %w", op, err)
					ft.conn.kill()
					<-ft.conn.c.Closed()
					continue
				}
				parts[i] = buf
			}
		}
		if muid == uid {
			deleted = deleted || flagged
			size = max(size, msize)
		}
	}
	err := fc.Close()
	if wd.stop() {
		err = fmt.Errorf("%w: %s timed out after %v", ErrUnavailable, op, ft.timeout)
		ft.conn.setBroken(err)
		return nil, 0, err
	}
	if err == nil || isStatus(err) {
		ft.heard()
	}
	switch {
	case readErr != nil:
		ft.conn.setBroken(commandError(op, readErr))
		return nil, 0, commandError(op, readErr)
	case err != nil && !isStatus(err):
		ft.conn.setBroken(commandError(op, err))
		return nil, 0, commandError(op, err)
	case err != nil:
		if fetchNoIsGone(err) {
			return nil, 0, ft.markGone(uid, err)
		}
		return nil, 0, commandError(op, err)
	case deleted:
		// Cyrus answers the UID FETCH of a message another session
		// expunged with its data and \Deleted: it is gone.
		return nil, 0, ft.markGone(uid, errors.New("flagged \\Deleted"))
	case !answered && ft.misrouted.Load() > 0:
		return nil, 0, fmt.Errorf("%w: %s: FETCH response without UID before the body", ErrUnavailable, op)
	case !answered:
		// RFC 3501 §6.4.8: a UID FETCH of a UID that no longer exists is
		// answered OK with nothing.
		return nil, 0, ft.markGone(uid, errors.New("no FETCH data"))
	case tooBig:
		return nil, 0, errTopWhole
	}
	for i := range secs {
		if !found[i] {
			return nil, 0, fmt.Errorf("%w: %s: no %s in the answer", ErrUnavailable, op, sectionName(secs[i]))
		}
	}
	if withSize && size < 0 {
		return nil, 0, fmt.Errorf("%w: %s: no RFC822.SIZE in the answer", ErrUnavailable, op)
	}
	return parts, size, nil
}

// sectionIndex finds the requested section a FETCH answer is for. A partial
// comes back as BODY[TEXT]<off> (RFC 3501 §7.4.2): its size is not repeated.
func sectionIndex(secs []*imap.FetchItemBodySection, got *imap.FetchItemBodySection) int {
	if got == nil {
		return -1
	}
	for i, s := range secs {
		if s.Specifier != got.Specifier || len(got.Part) != 0 || (s.Partial == nil) != (got.Partial == nil) {
			continue
		}
		if s.Partial != nil && s.Partial.Offset != got.Partial.Offset {
			continue
		}
		return i
	}
	return -1
}

func sectionName(s *imap.FetchItemBodySection) string {
	if s.Partial != nil {
		return fmt.Sprintf("BODY[%s]<%d>", s.Specifier, s.Partial.Offset)
	}
	return fmt.Sprintf("BODY[%s]", s.Specifier)
}

// markGone records that uid is expunged and returns ErrMessageGone.
func (ft *fetcher) markGone(uid imap.UID, why error) error {
	ft.mu.Lock()
	ft.gone[uid] = true
	ft.mu.Unlock()
	return fmt.Errorf("%w: UID %d: %w", ErrMessageGone, uid, why)
}

// fetchNoIsGone reports whether a tagged NO to a UID FETCH means the message
// was expunged by another session (RFC 2180 §4.1.2).
func fetchNoIsGone(err error) bool {
	var ierr *imap.Error
	if errors.As(err, &ierr) && ierr.Type == imap.StatusResponseTypeNo {
		switch ierr.Code {
		case "", "EXPUNGEISSUED", imap.ResponseCodeNonExistent:
			return true
		}
	}
	return false
}
