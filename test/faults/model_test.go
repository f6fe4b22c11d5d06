package faults

// The model-based randomized test.
//
// Each round runs, for every user at once, one POP3 session through mailgate
// (random STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP, a second login that
// must be refused [IN-USE], then QUIT or an abrupt drop, sometimes with a
// command in flight) and one IMAP client straight to Dovecot (APPEND, flag
// changes, EXPUNGE of messages it appended earlier). The sessions record what
// they saw; after the round everything is checked against the model of each
// mailbox:
//   - the POP3 listing holds every message that must remain (only messages
//     a session DELEted and then QUIT are removed: invariant 1, RFC 1939 §6)
//     and nothing that never existed;
//   - RETR and TOP return the appended bytes (invariant 2), LIST sizes equal
//     them, a RETR fails only for a message the IMAP client expunged;
//   - a message's UIDL never changes across sessions, UIDLs are unique and
//     well formed (invariant 3);
//   - Dovecot holds exactly the model: the appended messages, less those the
//     IMAP client expunged and those a POP3 session deleted and QUIT with +OK,
//     with unchanged bytes and no stray \Deleted flag.
//
// Decisions come from a seeded generator (one stream per round and user),
// so a failing seed replays the same operations; the interleaving of the
// concurrent sessions is up to the scheduler. The seed is logged, and
// printed again on failure.
//
// Short run (CI): go test -race ./test/faults -run TestModel
// Long run (the benchmark machine, about a second a round):
//
//	go test ./test/faults -run TestModel -timeout 2h -v -args -model.rounds 5000 -model.users 8
//
// and to replay a failure: -args -model.seed N -model.rounds R -model.users U.

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

var (
	modelSeed   = flag.Uint64("model.seed", 0, "seed of TestModel's random operations; 0 picks one from the clock")
	modelRounds = flag.Int("model.rounds", 40, "rounds of TestModel")
	modelUsers  = flag.Int("model.users", 3, "users (concurrent POP3 + IMAP pairs) of TestModel")
)

// modelStats counts what the rounds checked, for the log.
type modelStats struct {
	sessions, bodies, quits, drops, inUse, appends, expunges int
}

// mailModel is what one user's INBOX must hold.
type mailModel struct {
	a           account
	uidValidity uint32
	msgs        map[uint32][]byte // UID -> exact bytes
	byIMAP      map[uint32]bool   // appended by the IMAP client (it may expunge these)
	uidls       map[uint32]string // the UIDL each message was first shown with
	stats       *modelStats
}

// popObservation is what one POP3 session saw.
type popObservation struct {
	loginErr error
	listing  []pop3client.Item // UIDL, with sizes from LIST
	sizes    map[int]int64
	retrs    []retrSeen
	inUse    error // the second login's answer, if tried
	deleted  []uint32
	ended    string // "quit", "quit-err", "drop"
	quitErr  error
	fatal    error    // a protocol failure that stopped the session
	trace    []string // the commands sent, for failure messages
}

type retrSeen struct {
	uid   uint32
	top   int // -1: RETR
	body  []byte
	err   error
	which string
}

// imapActions is what one IMAP client did.
type imapActions struct {
	appended map[uint32][]byte
	expunged []uint32
	err      error
}

func TestModel(t *testing.T) {
	dc := dovecotServer(t)
	seed := *modelSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("TestModel seed %d, %d rounds, %d users (replay: -args -model.seed %d -model.rounds %d -model.users %d)",
		seed, *modelRounds, *modelUsers, seed, *modelRounds, *modelUsers)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("TestModel FAILED with seed %d: go test ./test/faults -run TestModel -args -model.seed %d -model.rounds %d -model.users %d",
				seed, seed, *modelRounds, *modelUsers)
		}
	})

	// The default pop3 section: cache and fetch-ahead on, as in production.
	g := harness.Start(t, gatewayYAML(dc.IMAPAddr, "{}"))
	addr := g.Addr("pop3")

	stats := &modelStats{}
	models := make([]*mailModel, *modelUsers)
	setup := rand.New(rand.NewPCG(seed, 0))
	for i := range models {
		m := &mailModel{a: newAccount(t), msgs: map[uint32][]byte{}, byIMAP: map[uint32]bool{}, uidls: map[uint32]string{}, stats: stats}
		var bodies [][]byte
		for j := range 6 {
			bodies = append(bodies, randomMessage(setup, fmt.Sprintf("u%d-init%d", i, j)))
		}
		uids, err := dc.Append(m.a.User, m.a.Pass, "INBOX", bodies...)
		if err != nil {
			t.Fatal(err)
		}
		for j, u := range uids {
			m.msgs[u] = bodies[j]
		}
		st := m.a.Inbox(t, false)
		m.uidValidity = st.UIDValidity
		models[i] = m
	}

	start := time.Now()
	for round := 1; round <= *modelRounds; round++ {
		runRound(t, dc, addr, seed, round, models)
		if t.Failed() {
			t.Fatalf("round %d failed (seed %d)", round, seed)
		}
	}
	total := 0
	for _, m := range models {
		total += len(m.msgs)
	}
	t.Logf("TestModel: %d rounds in %v, seed %d: %d POP3 sessions (%d QUIT, %d dropped), %d bodies checked, %d [IN-USE] probes, %d IMAP APPENDs, %d EXPUNGEs; %d messages left",
		*modelRounds, time.Since(start).Round(time.Millisecond), seed, stats.sessions, stats.quits, stats.drops,
		stats.bodies, stats.inUse, stats.appends, stats.expunges, total)
}

func runRound(t *testing.T, dc *dovecot.Server, addr string, seed uint64, round int, models []*mailModel) {
	t.Helper()
	pops := make([]*popObservation, len(models))
	imaps := make([]*imapActions, len(models))
	var wg sync.WaitGroup
	for i, m := range models {
		// Each actor's decisions come from its own stream, fixed by the
		// seed, the round and the user, whatever the interleaving.
		popRng := rand.New(rand.NewPCG(seed, uint64(round)<<16|uint64(i)<<1))
		imapRng := rand.New(rand.NewPCG(seed, uint64(round)<<16|uint64(i)<<1|1))
		snapshot := m.clone()
		wg.Add(2)
		go func() {
			defer wg.Done()
			pops[i] = popSession(addr, m.a, popRng)
		}()
		go func() {
			defer wg.Done()
			imaps[i] = imapActor(dc, snapshot, imapRng, fmt.Sprintf("r%d-u%d", round, i))
		}()
	}
	wg.Wait()
	for i, m := range models {
		m.check(t, dc, round, pops[i], imaps[i])
	}
}

func (m *mailModel) clone() *mailModel {
	c := &mailModel{a: m.a, uidValidity: m.uidValidity, msgs: map[uint32][]byte{}, byIMAP: map[uint32]bool{}}
	for u, b := range m.msgs {
		c.msgs[u] = b
		c.byIMAP[u] = m.byIMAP[u]
	}
	return c
}

// randomMessage is a message of random size (mostly small, sometimes over the
// 64KiB copy buffers), with dot-leading lines now and then.
func randomMessage(r *rand.Rand, tag string) []byte {
	size := 100 + r.IntN(3000)
	switch r.IntN(10) {
	case 0:
		size = 64<<10 + r.IntN(200<<10)
	case 1, 2:
		size = 4000 + r.IntN(20000)
	}
	return message(tag, size)
}

// popSession runs one random POP3 session and records what it saw. It never
// calls t: the checks happen after the round, when the IMAP side is known.
func popSession(addr string, a account, r *rand.Rand) *popObservation {
	o := &popObservation{sizes: map[int]int64{}}
	c, err := dialRetry(addr, a)
	if err != nil {
		o.loginErr = err
		return o
	}
	defer c.Close()
	if o.listing, err = c.UIDL(); err != nil {
		o.fatal = fmt.Errorf("UIDL: %w", err)
		return o
	}
	n := len(o.listing)
	deleted := map[int]bool{}
	steps := 2 + r.IntN(10)
	for range steps {
		k := 1 + r.IntN(max(n, 1))
		op := r.IntN(100)
		o.trace = append(o.trace, fmt.Sprintf("op%d(k=%d)", op, k))
		switch {
		case op < 10:
			if _, _, err := c.Stat(); err != nil {
				o.fatal = fmt.Errorf("STAT: %w", err)
				return o
			}
		case op < 20:
			items, err := c.List()
			if err != nil {
				o.fatal = fmt.Errorf("LIST: %w", err)
				return o
			}
			for _, it := range items {
				o.sizes[it.N] = it.Size
			}
		case op < 60: // RETR below 50, TOP from 50
			if n == 0 || deleted[k] {
				continue
			}
			seen := retrSeen{uid: uidFromUIDL(o.listing[k-1].UIDL), top: -1, which: fmt.Sprintf("RETR %d", k)}
			if op < 50 {
				seen.body, seen.err = c.Retr(k)
			} else {
				seen.top = r.IntN(5)
				seen.which = fmt.Sprintf("TOP %d %d", k, seen.top)
				seen.body, seen.err = c.Top(k, seen.top)
			}
			o.retrs = append(o.retrs, seen)
			if seen.err != nil && !isReply(seen.err) {
				o.fatal = seen.err
				return o
			}
		case op < 80:
			if n == 0 || deleted[k] {
				continue
			}
			if err := c.Dele(k); err != nil {
				o.fatal = fmt.Errorf("DELE %d: %w", k, err)
				return o
			}
			deleted[k] = true
		case op < 85:
			if err := c.Rset(); err != nil {
				o.fatal = fmt.Errorf("RSET: %w", err)
				return o
			}
			clear(deleted)
		case op < 90:
			if err := c.Noop(); err != nil {
				o.fatal = fmt.Errorf("NOOP: %w", err)
				return o
			}
		default:
			// RFC 1939 §4: the maildrop is locked while this session holds it.
			c2, err := pop3client.Dial(addr, clientTimeout)
			if err != nil {
				o.inUse = err
				continue
			}
			o.inUse = c2.Login(a.User, a.Pass)
			c2.Quit()
		}
	}
	for k := range deleted {
		o.deleted = append(o.deleted, uidFromUIDL(o.listing[k-1].UIDL))
	}
	e := r.IntN(10)
	o.trace = append(o.trace, fmt.Sprintf("end%d", e))
	switch {
	case e < 6:
		o.ended = "quit"
		if err := c.Quit(); err != nil {
			o.ended, o.quitErr = "quit-err", err
		}
	case e < 8:
		o.ended = "drop"
		c.Close()
	default:
		// Dropped with a command in flight: nothing may be committed.
		o.ended = "drop"
		if n > 0 {
			c.Send(fmt.Sprintf("RETR %d", 1+r.IntN(n)))
		} else {
			c.Send("STAT")
		}
		c.Close()
	}
	return o
}

// dialRetry logs in, waiting out the [IN-USE] of the previous round's
// session (its Close may still be under way).
func dialRetry(addr string, a account) (*pop3client.Client, error) {
	return pop3client.LoginRetry(func() (*pop3client.Client, error) {
		return pop3client.Dial(addr, clientTimeout)
	}, a.User, a.Pass, 15*time.Second)
}

func isReply(err error) bool {
	var re *pop3client.ReplyError
	return errors.As(err, &re)
}

// uidFromUIDL reads the UID of a %08Xu%08Xv UIDL; 0 if it is not one.
func uidFromUIDL(s string) uint32 {
	var u, v uint32
	if len(s) != 16 {
		return 0
	}
	if _, err := fmt.Sscanf(s, "%08X%08X", &u, &v); err != nil {
		return 0
	}
	return u
}

// imapActor changes the mailbox as another IMAP client of the user would:
// APPEND, flag changes, and EXPUNGE of messages it appended in earlier
// rounds (never a POP3 message: the model says those must remain).
func imapActor(dc *dovecot.Server, m *mailModel, r *rand.Rand, tag string) *imapActions {
	act := &imapActions{appended: map[uint32][]byte{}}
	var known, mine []uint32
	for u := range m.msgs {
		known = append(known, u)
		if m.byIMAP[u] {
			mine = append(mine, u)
		}
	}
	slices.Sort(known)
	slices.Sort(mine)
	ops := r.IntN(4)
	if len(known) < 6 {
		ops += 2 // keep the mailbox from draining: POP3 sessions delete
	}
	for i := range ops {
		switch op := r.IntN(4); {
		case op <= 1 || len(known) < 6:
			body := randomMessage(r, fmt.Sprintf("%s-a%d", tag, i))
			uids, err := dc.Append(m.a.User, m.a.Pass, "INBOX", body)
			if err != nil {
				act.err = fmt.Errorf("APPEND: %w", err)
				return act
			}
			act.appended[uids[0]] = body
		case op == 2 && len(known) > 0:
			u := known[r.IntN(len(known))]
			flags := []imap.Flag{imap.FlagFlagged}
			if r.IntN(2) == 0 {
				flags = append(flags, imap.FlagAnswered)
			}
			if err := dc.Store(m.a.User, m.a.Pass, "INBOX", r.IntN(2) == 0, flags, u); err != nil {
				act.err = fmt.Errorf("STORE: %w", err)
				return act
			}
		case op == 3 && len(mine) > 0:
			j := r.IntN(len(mine))
			u := mine[j]
			mine = slices.Delete(mine, j, j+1)
			if err := dc.Expunge(m.a.User, m.a.Pass, "INBOX", u); err != nil {
				act.err = fmt.Errorf("EXPUNGE: %w", err)
				return act
			}
			act.expunged = append(act.expunged, u)
		}
	}
	return act
}

// check compares one user's round with the model, then advances the model.
func (m *mailModel) check(t *testing.T, dc *dovecot.Server, round int, o *popObservation, act *imapActions) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("round %d, %s: %s", round, m.a.User, fmt.Sprintf(format, args...))
	}
	if act.err != nil {
		fail("IMAP client: %v", act.err)
	}
	m.stats.sessions++
	m.stats.bodies += len(o.retrs)
	m.stats.appends += len(act.appended)
	m.stats.expunges += len(act.expunged)
	switch o.ended {
	case "quit":
		m.stats.quits++
	case "drop":
		m.stats.drops++
	}
	if o.inUse != nil {
		m.stats.inUse++
	}
	expunged := map[uint32]bool{}
	for _, u := range act.expunged {
		expunged[u] = true
	}
	bodyOf := func(u uint32) ([]byte, bool) {
		if b, ok := m.msgs[u]; ok {
			return b, true
		}
		b, ok := act.appended[u]
		return b, ok
	}

	switch {
	case o.loginErr != nil:
		fail("POP3 login: %v", o.loginErr)
	case o.fatal != nil:
		fail("POP3 session: %v", o.fatal)
	}
	defer func() {
		if t.Failed() {
			t.Logf("round %d, %s: POP3 listing %v, steps %v; IMAP appended %d, expunged %v",
				round, m.a.User, o.listing, o.trace, len(act.appended), act.expunged)
		}
	}()
	// The listing: nothing unknown, nothing that must remain left out,
	// UIDLs stable, unique and well formed.
	listed := map[uint32]bool{}
	seenUIDL := map[string]bool{}
	for _, it := range o.listing {
		if len(it.UIDL) < 1 || len(it.UIDL) > 70 || strings.IndexFunc(it.UIDL, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
			fail("invariant 3: malformed UIDL %q", it.UIDL)
		}
		if seenUIDL[it.UIDL] {
			fail("invariant 3: UIDL %q listed twice", it.UIDL)
		}
		seenUIDL[it.UIDL] = true
		u := uidFromUIDL(it.UIDL)
		listed[u] = true
		body, ok := bodyOf(u)
		if !ok {
			fail("POP3 lists UIDL %q, a message nobody appended", it.UIDL)
			continue
		}
		if old, ok := m.uidls[u]; ok && old != it.UIDL {
			fail("invariant 3: UID %d had UIDL %q, now %q", u, old, it.UIDL)
		}
		m.uidls[u] = it.UIDL
		if size, ok := o.sizes[it.N]; ok && size != int64(len(body)) {
			fail("invariant 2: LIST %d says %d octets, the message has %d", it.N, size, len(body))
		}
	}
	if o.loginErr == nil {
		for u := range m.msgs {
			if !listed[u] && !expunged[u] {
				fail("invariant 1: UID %d must remain but the POP3 session does not list it", u)
			}
		}
	}
	for _, rs := range o.retrs {
		want, _ := bodyOf(rs.uid)
		switch {
		case rs.err != nil && expunged[rs.uid]:
			// Expunged by the IMAP client meanwhile: -ERR, session goes on.
		case rs.err != nil:
			fail("%s (UID %d): %v", rs.which, rs.uid, rs.err)
		case rs.top < 0 && !bytes.Equal(rs.body, want):
			_, where := dovecot.Equal(rs.body, want)
			fail("invariant 2: %s (UID %d): %s", rs.which, rs.uid, where)
		case rs.top >= 0 && !bytes.Equal(rs.body, topOf(want, rs.top)):
			fail("%s (UID %d): got %q, want %q", rs.which, rs.uid, clip(rs.body), clip(topOf(want, rs.top)))
		}
	}
	if o.inUse != nil {
		var re *pop3client.ReplyError
		if !errors.As(o.inUse, &re) || re.Code() != "IN-USE" {
			fail("a second login while the maildrop is open: %v, want -ERR [IN-USE]", o.inUse)
		}
	}

	// Advance the model: the IMAP client's changes, then the deletions of
	// a session that QUIT with +OK. A QUIT answered -ERR leaves its
	// deletions undecided: Dovecot's state settles them.
	for u, b := range act.appended {
		m.msgs[u] = b
		m.byIMAP[u] = true
	}
	for u := range expunged {
		delete(m.msgs, u)
	}
	undecided := map[uint32]bool{}
	switch o.ended {
	case "quit":
		for _, u := range o.deleted {
			delete(m.msgs, u)
		}
	case "quit-err":
		fail("QUIT answered %v (no fault was injected)", o.quitErr)
		for _, u := range o.deleted {
			undecided[u] = true
		}
	}

	st, err := dc.Mailbox(m.a.User, m.a.Pass, "INBOX", true)
	if err != nil {
		fail("reading the mailbox: %v", err)
		return
	}
	if st.UIDValidity != m.uidValidity {
		fail("invariant 3: UIDVALIDITY changed from %d to %d", m.uidValidity, st.UIDValidity)
	}
	for _, msg := range st.Messages {
		want, ok := m.msgs[msg.UID]
		switch {
		case !ok && undecided[msg.UID]:
			m.msgs[msg.UID], _ = bodyOf(msg.UID)
		case !ok:
			fail("invariant 1: UID %d should be gone (deleted and QUIT, or expunged) but is still there", msg.UID)
		case !bytes.Equal(msg.Body, want):
			_, where := dovecot.Equal(msg.Body, want)
			fail("UID %d changed on the backend: %s", msg.UID, where)
		case msg.Has(imap.FlagDeleted):
			fail("invariant 1: UID %d is flagged \\Deleted", msg.UID)
		}
	}
	for u := range m.msgs {
		if _, ok := st.Message(u); !ok {
			fail("invariant 1: UID %d must remain but Dovecot no longer has it", u)
			delete(m.msgs, u)
		}
	}
}

// topOf is what TOP msg n returns for body (RFC 1939 §7): the header, the
// blank line, and the first n lines of the body.
func topOf(body []byte, n int) []byte {
	i := bytes.Index(body, []byte("\r\n\r\n"))
	if i < 0 {
		return body
	}
	end := i + 4
	for ; n > 0 && end < len(body); n-- {
		j := bytes.Index(body[end:], []byte("\r\n"))
		if j < 0 {
			return body
		}
		end += j + 2
	}
	return body[:end]
}

func clip(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
