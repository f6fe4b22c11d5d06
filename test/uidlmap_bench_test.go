package test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"mailgate/upstream"
)

// BenchmarkUIDLMap10k measures pop3.uidl_map on a 10,000-message mailbox
// (small messages: about 330 bytes, 200 of header) in the package's
// Dovecot: the time of a session (login, UIDL, QUIT) without the map, with
// the map while UIDVALIDITY holds, and the first session after a
// UIDVALIDITY change (doveadm mailbox update --uid-validity: every header
// fetched and matched), interleaved over 3 rounds, medians reported with
// the ratios to the session without the map; then the store's bytes per
// message.
//
//	go test ./test -run XXX -bench UIDLMap10k -benchtime 1x
func BenchmarkUIDLMap10k(b *testing.B) {
	const n = 10000
	store := filepath.Join(b.TempDir(), "uidl.db")
	plain := startGateway(b, gwOptions{})
	mapped := startGateway(b, gwOptions{POP3: uidlMapPOP3(store)})
	a := newAccount(b)
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = message(fmt.Sprintf("bench-%d", i), fmt.Sprintf("message %d of the UIDL map benchmark\r\n", i))
	}
	dc := dovecotServer(b)
	if err := dc.AppendConcurrently(a.User, a.Pass, "INBOX", 4, msgs); err != nil {
		b.Fatal(err)
	}
	session := func(g *gw) (time.Duration, []string) {
		start := time.Now()
		u := g.uidls(a)
		return time.Since(start), u
	}
	first, want := session(mapped) // the map is made: every header once
	b.Logf("first session with the map ever (10k headers fetched, map written): %v", first)
	var tPlain, tSame, tChanged []time.Duration
	for round := range 3 {
		d, _ := session(plain)
		tPlain = append(tPlain, d)
		d, u := session(mapped)
		tSame = append(tSame, d)
		if !slices.Equal(u, want) {
			b.Fatal("UIDLs changed while UIDVALIDITY held")
		}
		v := a.Inbox(b, false).UIDValidity
		if _, err := dc.Doveadm("mailbox", "update", "-u", a.User, "--uid-validity", strconv.FormatUint(uint64(v)+uint64(round)+1, 10), "INBOX"); err != nil {
			b.Fatal(err)
		}
		d, u = session(mapped)
		tChanged = append(tChanged, d)
		if !slices.Equal(u, want) {
			b.Fatal("UIDLs changed with UIDVALIDITY")
		}
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	p, s, c := med(tPlain), med(tSame), med(tChanged)
	b.Logf("session of %d messages, median of 3 interleaved: no map %v, map unchanged %v (%.2fx), first after a UIDVALIDITY change %v (%.2fx)",
		n, p, s, float64(s)/float64(p), c, float64(c)/float64(p))
	b.ReportMetric(float64(p.Milliseconds()), "ms/session-nomap")
	b.ReportMetric(float64(s)/float64(p), "x-map-unchanged")
	b.ReportMetric(float64(c)/float64(p), "x-after-uidvalidity-change")

	mapped.Stop(10 * time.Second)
	st, err := upstream.OpenUIDLBolt(store, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	stats, err := st.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("store: %d messages, %d record bytes (%.1f per message), file %d bytes (%.1f per message)", stats.Messages, stats.Bytes,
		float64(stats.Bytes)/float64(stats.Messages), stats.FileBytes, float64(stats.FileBytes)/float64(stats.Messages))
	b.ReportMetric(float64(stats.Bytes)/float64(stats.Messages), "record-B/msg")
	b.ReportMetric(float64(stats.FileBytes)/float64(stats.Messages), "file-B/msg")
}
