package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"mailgate/test/redistest"
	"mailgate/test/uidlstoretest"
	"mailgate/upstream"
)

// The UIDL store through the stores' conformance suite (test/
// uidlstoretest: what the embedded store is checked for), with two instances
// on one Redis, plus what sharing adds, on miniredis (the scripts as a
// unit), a real redis-server, and a Redis Cluster (one slot per script).

func TestUIDLStoreMiniredis(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	m := miniredis.RunT(t)
	testUIDLStoreSuite(t, singleClient(m.Addr()))
}

func TestUIDLStoreRedisServer(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	addr, _ := redistest.Start(t)
	testUIDLStoreSuite(t, singleClient(addr))
}

func TestUIDLStoreRedisCluster(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	addr, _ := redistest.StartCluster(t)
	testUIDLStoreSuite(t, func() redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}, ContextTimeoutEnabled: true})
	})
}

func testUIDLStoreSuite(t *testing.T, client clientFactory) {
	uidlstoretest.Run(t, func(t *testing.T, maxBytes int64) []uidlstoretest.Store {
		var out []uidlstoretest.Store
		for _, s := range newUIDLStores(t, client, maxBytes, 2) {
			out = append(out, s)
		}
		return out
	})
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, client clientFactory)
	}{
		{"ConflictRetried", testUIDLStoreConflictRetried},
		{"Layout", testUIDLStoreLayout},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, client) })
	}
}

// newUIDLStores returns n stores, each on its own client (as n instances of
// the gateway would have), sharing one fresh prefix.
func newUIDLStores(t *testing.T, client clientFactory, maxBytes int64, n int) []*UIDLStore {
	t.Helper()
	prefix := fmt.Sprintf("mg%d:", storagePrefixes.Add(1))
	var out []*UIDLStore
	for range n {
		out = append(out, newUIDLStoreAt(t, client, prefix, maxBytes))
	}
	return out
}

// newUIDLStoreAt opens a store on prefix, on its own client.
func newUIDLStoreAt(t *testing.T, client clientFactory, prefix string, maxBytes int64) *UIDLStore {
	c := client()
	t.Cleanup(func() { c.Close() })
	return NewUIDLStore(c, prefix, maxBytes)
}

// A write by another instance between an Update's read and its write makes
// the Update run fn again on the new record, never overwrite it.
func testUIDLStoreConflictRetried(t *testing.T, client clientFactory) {
	ctx := context.Background()
	ss := newUIDLStores(t, client, 0, 2)
	k := upstream.UIDLKey{User: "frank", Mailbox: "INBOX"}
	uidlstoretest.Put(t, ss[0], k, "base")
	var seen []string
	err := ss[0].Update(ctx, k, func(old []byte) ([]byte, error) {
		seen = append(seen, string(old))
		if len(seen) == 1 {
			uidlstoretest.Put(t, ss[1], k, "other") // the other instance, meanwhile
		}
		return append(slices.Clone(old), "+mine"...), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []string{"base", "other"}) {
		t.Fatalf("fn saw %q, want base then other", seen)
	}
	if b, _ := ss[1].Load(ctx, k); string(b) != "other+mine" {
		t.Fatalf("record %q, want other+mine", b)
	}
	// The same when the record appears meanwhile (two first sessions) and
	// when it goes (a Drop): the size counter follows what was written.
	k2 := upstream.UIDLKey{User: "grace", Mailbox: "INBOX"}
	n := 0
	err = ss[0].Update(ctx, k2, func(old []byte) ([]byte, error) {
		n++
		switch n {
		case 1:
			uidlstoretest.Put(t, ss[1], k2, "first")
		case 2:
			if _, err := ss[1].Drop(k2.User); err != nil {
				t.Error(err)
			}
		}
		return append(slices.Clone(old), 'x'), nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Update = %v after %d runs of fn, want 3", err, n)
	}
	if b, _ := ss[1].Load(ctx, k2); string(b) != "x" {
		t.Fatalf("record %q, want x", b)
	}
	if st, _ := ss[0].Stats(); st.Bytes != st.Measured {
		t.Fatalf("counted %d, measured %d", st.Bytes, st.Measured)
	}
}

// The keys: under the prefix, one hash per user with the user in the hash
// tag, one counter; another prefix is another map; user names with the
// characters of SCAN patterns and of hash tags are names like others.
func testUIDLStoreLayout(t *testing.T, client clientFactory) {
	ctx := context.Background()
	ss := newUIDLStores(t, client, 0, 1)
	s := ss[0]
	odd := "o*d?[x]\\y}:maps{z"
	uidlstoretest.Put(t, s, upstream.UIDLKey{User: "ivan", Mailbox: "INBOX"}, "1")
	uidlstoretest.Put(t, s, upstream.UIDLKey{User: odd, Mailbox: "INBOX"}, "22")
	other := newUIDLStoreAt(t, client, "other"+s.prefix, 0)
	uidlstoretest.Put(t, other, upstream.UIDLKey{User: "ivan", Mailbox: "INBOX"}, "elsewhere")

	raw := client()
	defer raw.Close()
	for _, key := range []string{s.prefix + "{uidl:ivan}:maps", s.prefix + "{uidl:" + odd + "}:maps"} {
		if typ, err := raw.Type(ctx, key).Result(); err != nil || typ != "hash" {
			t.Errorf("%s: %q, %v; want a hash", key, typ, err)
		}
	}
	if n, err := raw.Get(ctx, s.prefix+"{uidl}:bytes").Int64(); err != nil || n != int64(2*len("INBOX")+3) {
		t.Errorf("counter = %d, %v", n, err)
	}
	if b, _ := s.Load(ctx, upstream.UIDLKey{User: odd, Mailbox: "INBOX"}); string(b) != "22" {
		t.Errorf("odd user's record: %q", b)
	}
	st, err := s.Stats()
	if err != nil || st.Users != 2 || st.Maps != 2 || st.Measured != int64(2*len("INBOX")+3) {
		t.Errorf("Stats = %+v, %v; want this prefix's 2 users only", st, err)
	}
	if n, err := s.Drop(odd); n != 1 || err != nil {
		t.Errorf("Drop(odd) = %d, %v", n, err)
	}
	if b, _ := other.Load(ctx, upstream.UIDLKey{User: "ivan", Mailbox: "INBOX"}); string(b) != "elsewhere" {
		t.Errorf("the other prefix's record: %q", b)
	}
}

// timedOut: err is a deadline's, the context's or the connection's (go-redis
// sets the context's deadline on the connection).
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// A Redis that accepts and never answers: every call ends at its deadline
// with an error, whatever the caller's context.
func TestUIDLStoreDeadline(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c) // read nothing, answer nothing
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Wait()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
	})
	c := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), ContextTimeoutEnabled: true, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	s := NewUIDLStore(c, "mg:", 0)
	s.opTimeout = 200 * time.Millisecond
	k := upstream.UIDLKey{User: "judy", Mailbox: "INBOX"}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := s.Load(context.Background(), k); !timedOut(err) {
			t.Errorf("Load: %v, want a timeout", err)
		}
		err := s.Update(context.Background(), k, func([]byte) ([]byte, error) { return []byte("v"), nil })
		if !timedOut(err) {
			t.Errorf("Update: %v, want a timeout", err)
		}
		if _, err := s.Drop("judy"); !timedOut(err) {
			t.Errorf("Drop: %v, want a timeout", err)
		}
		if _, err := s.Stats(); !timedOut(err) {
			t.Errorf("Stats: %v, want a timeout", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a hang, not a measurement
		t.Fatal("calls to a silent Redis did not end at their deadlines")
	}
}

// BenchmarkUIDLStores compares the Redis store (a real redis-server on
// 127.0.0.1) with the embedded one on a 10,000-message map: a Load (what a
// session costs while UIDVALIDITY holds) and an Update rewriting the record
// (what a session with new messages, or a rematch, costs), interleaved over
// 3 rounds, medians reported with the ratios to bbolt.
//
//	go test ./gateway/cluster -run XXX -bench UIDLStores -benchtime 1x
func BenchmarkUIDLStores(b *testing.B) {
	addr, _ := redistest.Start(b)
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	b.Cleanup(func() { c.Close() })
	rs := NewUIDLStore(c, "bench:", 0)
	bs, err := upstream.OpenUIDLBolt(b.TempDir()+"/uidl.db", 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bs.Close() })
	msgs := make([]upstream.UIDLImportMessage, 10000)
	for i := range msgs {
		msgs[i] = upstream.UIDLImportMessage{UIDL: fmt.Sprintf("%08X%08X", i+1, 1), Size: int64(300 + i%200),
			Header: fmt.Appendf(nil, "Message-ID: <%d@bench>\r\nSubject: message %d\r\n\r\n", i, i)}
	}
	ctx := context.Background()
	k := upstream.UIDLKey{User: "bench", Mailbox: "INBOX"}
	for _, s := range []upstream.UIDLStore{rs, bs} {
		if _, err := upstream.ImportUIDLs(ctx, s, k, msgs, true); err != nil {
			b.Fatal(err)
		}
	}
	rec, _ := rs.Load(ctx, k)
	const ops = 200
	timeOps := func(f func() error) time.Duration {
		start := time.Now()
		for range ops {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / ops
	}
	load := func(s upstream.UIDLStore) func() error {
		return func() error { _, err := s.Load(ctx, k); return err }
	}
	update := func(s upstream.UIDLStore) func() error {
		return func() error {
			return s.Update(ctx, k, func(old []byte) ([]byte, error) { return slices.Clone(old), nil })
		}
	}
	var lr, lb, ur, ub []time.Duration
	for range 3 {
		lb = append(lb, timeOps(load(bs)))
		lr = append(lr, timeOps(load(rs)))
		ub = append(ub, timeOps(update(bs)))
		ur = append(ur, timeOps(update(rs)))
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.Logf("10,000-message map (%d bytes), median of 3 interleaved rounds of %d: Load bbolt %v, redis %v (%.1fx); Update bbolt %v, redis %v (%.1fx)",
		len(rec), ops, med(lb), med(lr), float64(med(lr))/float64(med(lb)), med(ub), med(ur), float64(med(ur))/float64(med(ub)))
	b.ReportMetric(float64(med(lr))/float64(med(lb)), "x-load-redis/bbolt")
	b.ReportMetric(float64(med(ur))/float64(med(ub)), "x-update-redis/bbolt")
}
