package upstream

// Backend session reuse for pollers (pop3.reuse).
//
// A POP3 client that polls (connect, log in, STAT or UIDL, QUIT, every
// minute or so) pays for a backend login and a SELECT each time. With
// pop3.reuse set, the backend connection of a session that ended with a
// successful QUIT is parked, still logged in and the mailbox selected, for
// that long; the same user's next login from the same client address with
// the same password takes it instead of logging in again, and
// re-validates it with NOOP and a fresh snapshot UID FETCH (one round trip).
//
// Invariants:
//   - A parked connection is keyed by the backend (name and address), the
//     backend user exactly as it logged in, the mailbox, the client's IP
//     address, and HMAC-SHA256 of the password under a key drawn at random
//     per process: the password itself is never stored, and a different
//     user, password or client never matches (a wrong password goes to the
//     backend and fails there).
//   - Parked connections hold no maildrop lock: the lock is released at
//     Close as always, before the connection is parked.
//   - A parked connection has no \Seen batch, no fetch-ahead and no command
//     in flight; it is parked only if it is alive, and closed with LOGOUT
//     (in the background, under closeTimeout) when its time is up, when the
//     pool is full, or at Maildrops.Wait.
//   - At most maxParked connections are parked per gateway, one per key.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// maxParked bounds the backend connections parked by pop3.reuse in one
// gateway: each is a socket on both sides and a go-imap reader goroutine.
const maxParked = 1024

// reuseKey names what a parked connection may serve.
type reuseKey struct {
	backend, server string // the backend's configured name and its address
	user            string // the backend user, exactly as it logged in
	mailbox         string
	client          string // the client's IP address ("" if unknown)
	secret          [sha256.Size]byte
}

// route sends a connection's unilateral data (EXPUNGE, misrouted FETCH) to
// the fetcher of the maildrop that uses it now: a reused connection changes
// maildrops, and go-imap's handler is fixed when the client is made.
type route struct{ ft atomic.Pointer[fetcher] }

func (r *route) handler() *imapclient.UnilateralDataHandler {
	return &imapclient.UnilateralDataHandler{
		// Only record: the handlers run on the client's reader goroutine,
		// and numbers never shift because everything is by UID.
		Expunge: func(uint32) {
			if ft := r.ft.Load(); ft != nil {
				ft.noteExpunge()
			}
		},
		Fetch: func(msg *imapclient.FetchMessageData) {
			if ft := r.ft.Load(); ft != nil {
				ft.unilateralFetch(msg)
				return
			}
			for item := msg.Next(); item != nil; item = msg.Next() {
			}
		},
	}
}

// parked is a logged-in, selected backend connection waiting for reuse.
type parked struct {
	key         reuseKey
	c           *imapclient.Client
	raw         net.Conn
	route       *route
	caps        imap.CapSet
	uidValidity uint32
	timer       *time.Timer
}

// reusePool holds the parked connections of one Maildrops.
type reusePool struct {
	ttl     time.Duration
	hmacKey [32]byte
	bye     func(p *parked) // LOGOUT and close, in the background

	mu     sync.Mutex
	byKey  map[reuseKey]*parked
	refuse int // > 0: Maildrops.Wait is draining; nothing is parked
}

func newReusePool(ttl time.Duration, bye func(*parked)) *reusePool {
	p := &reusePool{ttl: ttl, bye: bye, byKey: make(map[reuseKey]*parked)}
	if _, err := rand.Read(p.hmacKey[:]); err != nil {
		panic("upstream: no randomness for the pop3.reuse key: " + err.Error())
	}
	return p
}

// key is the reuse key of a login.
func (p *reusePool) key(t Target, user, mailbox, password string) reuseKey {
	mac := hmac.New(sha256.New, p.hmacKey[:])
	mac.Write([]byte(password))
	k := reuseKey{backend: t.Name, server: t.Address, user: user, mailbox: mailbox}
	copy(k.secret[:], mac.Sum(nil))
	if t.ClientAddr != nil {
		if host, _, err := net.SplitHostPort(t.ClientAddr.String()); err == nil {
			k.client = host
		} else {
			k.client = t.ClientAddr.String()
		}
	}
	return k
}

// park keeps pk for reuse, and reports whether it did; if not (the pool is
// full, draining, or holds one for the key already) the caller closes it.
func (p *reusePool) park(pk *parked) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse > 0 || len(p.byKey) >= maxParked || p.byKey[pk.key] != nil {
		return false
	}
	pk.route.ft.Store(nil) // the old maildrop is gone
	p.byKey[pk.key] = pk
	pk.timer = time.AfterFunc(p.ttl, func() {
		if p.remove(pk) {
			p.bye(pk)
		}
	})
	return true
}

// remove takes pk out of the pool if it is still there.
func (p *reusePool) remove(pk *parked) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byKey[pk.key] != pk {
		return false
	}
	delete(p.byKey, pk.key)
	pk.timer.Stop()
	return true
}

// take returns the connection parked for k, now the caller's, or nil.
func (p *reusePool) take(k reuseKey) *parked {
	p.mu.Lock()
	pk := p.byKey[k]
	p.mu.Unlock()
	if pk == nil || !p.remove(pk) {
		return nil
	}
	return pk
}

// drain closes every parked connection and refuses new ones until undrain.
func (p *reusePool) drain() {
	p.mu.Lock()
	p.refuse++
	all := make([]*parked, 0, len(p.byKey))
	for _, pk := range p.byKey {
		all = append(all, pk)
	}
	p.mu.Unlock()
	for _, pk := range all {
		if p.remove(pk) {
			p.bye(pk)
		}
	}
}

func (p *reusePool) undrain() {
	p.mu.Lock()
	p.refuse--
	p.mu.Unlock()
}

// len is the number of parked connections.
func (p *reusePool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byKey)
}
