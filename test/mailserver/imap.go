package mailserver

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// OpTimeout bounds each helper below (dial, login and the whole operation).
// go-imap's client has no timeouts of its own between responses, so every
// helper closes its connection when this passes.
var OpTimeout = 2 * time.Minute

// IMAP is an IMAP server as another client of its users sees it: the
// helpers below log in to Addr (cleartext LOGIN, as every test server here
// allows on 127.0.0.1), do one thing and log out. The starters (test/dovecot,
// test/cyrus, test/courier) embed it.
type IMAP struct {
	Addr string // 127.0.0.1:port of cleartext IMAP
}

// Client is a logged-in IMAP connection to the instance, closed by Close or
// when OpTimeout passes.
type Client struct {
	*imapclient.Client
	watchdog *time.Timer
}

// Close logs out (best effort) and closes the connection.
func (c *Client) Close() error {
	c.watchdog.Stop()
	done := make(chan struct{})
	go func() { c.Client.Logout().Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return c.Client.Close()
}

// Login opens a cleartext IMAP connection and logs in as user.
func (s *IMAP) Login(user, password string) (*Client, error) {
	conn, err := net.DialTimeout("tcp", s.Addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := &Client{Client: imapclient.New(conn, nil)}
	c.watchdog = time.AfterFunc(OpTimeout, func() { c.Client.Close() })
	if err := c.WaitGreeting(); err != nil {
		c.Close()
		return nil, fmt.Errorf("imap greeting: %w", err)
	}
	if err := c.Client.Login(user, password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("imap login %s: %w", user, err)
	}
	return c, nil
}

// Append stores each message in mailbox (created when missing) with IMAP
// APPEND, in order, and returns their UIDs (from APPENDUID, RFC 4315: every
// server here has UIDPLUS).
func (s *IMAP) Append(user, password, mailbox string, msgs ...[]byte) ([]uint32, error) {
	return s.AppendFlags(user, password, mailbox, nil, msgs...)
}

// AppendConcurrently is Append for seeding many messages fast: msgs are
// split over conns connections at once, so their UID order differs from
// msgs' order, and no UIDs are returned. It returns the first error.
func (s *IMAP) AppendConcurrently(user, password, mailbox string, conns int, msgs [][]byte) error {
	conns = max(1, min(conns, len(msgs)))
	chunk := (len(msgs) + conns - 1) / conns
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := 0; c < conns && c*chunk < len(msgs); c++ {
		part := msgs[c*chunk : min(len(msgs), (c+1)*chunk)]
		wg.Go(func() {
			if _, err := s.Append(user, password, mailbox, part...); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// AppendFlags is Append with flags set on every message.
func (s *IMAP) AppendFlags(user, password, mailbox string, flags []imap.Flag, msgs ...[]byte) ([]uint32, error) {
	c, err := s.Login(user, password)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if mailbox != "INBOX" {
		// Already existing is fine: the APPEND below says if it is not.
		c.Create(mailbox, nil).Wait()
	}
	uids := make([]uint32, 0, len(msgs))
	for i, m := range msgs {
		cmd := c.Client.Append(mailbox, int64(len(m)), &imap.AppendOptions{Flags: flags})
		if _, err := cmd.Write(m); err != nil {
			return uids, fmt.Errorf("append %d: %w", i, err)
		}
		if err := cmd.Close(); err != nil {
			return uids, fmt.Errorf("append %d: %w", i, err)
		}
		data, err := cmd.Wait()
		if err != nil {
			return uids, fmt.Errorf("append %d: %w", i, err)
		}
		if data.UID == 0 {
			return uids, fmt.Errorf("append %d: no APPENDUID in the answer", i)
		}
		uids = append(uids, uint32(data.UID))
	}
	return uids, nil
}

// Message is one message as the server reports it.
type Message struct {
	UID   uint32
	Flags []imap.Flag
	Size  int64  // RFC822.SIZE
	Body  []byte // BODY[] when asked for; nil otherwise
}

// Has reports whether the message carries flag.
func (m Message) Has(flag imap.Flag) bool { return slices.Contains(m.Flags, flag) }

// MailboxState is a mailbox read straight from the server, for assertions.
type MailboxState struct {
	UIDValidity uint32
	UIDNext     uint32
	Messages    []Message // by UID, ascending
}

// UIDs lists the messages' UIDs, ascending.
func (st *MailboxState) UIDs() []uint32 {
	u := make([]uint32, len(st.Messages))
	for i, m := range st.Messages {
		u[i] = m.UID
	}
	return u
}

// Message returns the message with uid, if present.
func (st *MailboxState) Message(uid uint32) (Message, bool) {
	for _, m := range st.Messages {
		if m.UID == uid {
			return m, true
		}
	}
	return Message{}, false
}

// Mailbox reads mailbox without changing it (EXAMINE, BODY.PEEK[]): its
// UIDVALIDITY, and every message's UID, flags and size, and with bodies also
// the exact BODY[] bytes.
func (s *IMAP) Mailbox(user, password, mailbox string, bodies bool) (*MailboxState, error) {
	c, err := s.Login(user, password)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, fmt.Errorf("examine %s: %w", mailbox, err)
	}
	st := &MailboxState{UIDValidity: sel.UIDValidity, UIDNext: uint32(sel.UIDNext)}
	if sel.NumMessages == 0 {
		return st, nil
	}
	opts := &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true}
	body := &imap.FetchItemBodySection{Peek: true}
	if bodies {
		opts.BodySection = []*imap.FetchItemBodySection{body}
	}
	var all imap.UIDSet
	all.AddRange(1, 0)
	bufs, err := c.Fetch(all, opts).Collect()
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	for _, b := range bufs {
		m := Message{UID: uint32(b.UID), Flags: b.Flags, Size: b.RFC822Size}
		if bodies {
			m.Body = b.FindBodySection(body)
			if m.Body == nil {
				m.Body = []byte{} // an empty message
			}
		}
		st.Messages = append(st.Messages, m)
	}
	slices.SortFunc(st.Messages, func(a, b Message) int { return int(a.UID) - int(b.UID) })
	return st, nil
}

// selected logs in as user and selects mailbox (read-write).
func (s *IMAP) selected(user, password, mailbox string) (*Client, error) {
	c, err := s.Login(user, password)
	if err != nil {
		return nil, err
	}
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("select %s: %w", mailbox, err)
	}
	return c, nil
}

// Store adds (or with remove, removes) flags on the messages with uids, the
// way another IMAP client of the same user would.
func (s *IMAP) Store(user, password, mailbox string, remove bool, flags []imap.Flag, uids ...uint32) error {
	c, err := s.selected(user, password, mailbox)
	if err != nil {
		return err
	}
	defer c.Close()
	op := imap.StoreFlagsAdd
	if remove {
		op = imap.StoreFlagsDel
	}
	return c.Client.Store(uidSet(uids), &imap.StoreFlags{Op: op, Silent: true, Flags: flags}, nil).Close()
}

// Expunge removes exactly the messages with uids (UID STORE \Deleted, UID
// EXPUNGE), as another IMAP client would.
func (s *IMAP) Expunge(user, password, mailbox string, uids ...uint32) error {
	c, err := s.selected(user, password, mailbox)
	if err != nil {
		return err
	}
	defer c.Close()
	set := uidSet(uids)
	if err := c.Client.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
		Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if _, err := c.UIDExpunge(set).Collect(); err != nil {
		return fmt.Errorf("uid expunge: %w", err)
	}
	return nil
}

func uidSet(uids []uint32) imap.UIDSet {
	var set imap.UIDSet
	for _, u := range uids {
		set.AddNum(imap.UID(u))
	}
	return set
}

// Equal reports whether two bodies are byte-identical, and if not, where
// they first differ (for test messages about megabyte bodies).
func Equal(got, want []byte) (bool, string) {
	if bytes.Equal(got, want) {
		return true, ""
	}
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	lo := max(0, i-20)
	return false, fmt.Sprintf("lengths %d and %d, first difference at byte %d: got %q, want %q",
		len(got), len(want), i, got[lo:min(len(got), i+20)], want[lo:min(len(want), i+20)])
}
