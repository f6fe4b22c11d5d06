package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"mailgate/test/redistest"
)

// The conformance suite runs against miniredis (the Lua scripts as a unit)
// and against a real redis-server (the scripts as Redis runs them).

func TestStorageMiniredis(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // runs last: renewers, clients, server gone
	m := miniredis.RunT(t)
	// miniredis expires keys only when told: let its clock follow the real
	// one, so that leases run out as they would on a server.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	testStorageConformance(t, singleClient(m.Addr()))
}

func TestStorageRedisServer(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	addr, _ := redistest.Start(t)
	testStorageConformance(t, singleClient(addr))
}

// TestStorageRedisCluster runs the suite through a ClusterClient on a Redis
// Cluster, which refuses a script or pipeline whose keys span slots.
func TestStorageRedisCluster(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	addr, _ := redistest.StartCluster(t)
	testStorageConformance(t, func() redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}, ContextTimeoutEnabled: true})
	})
}

// clientFactory returns a new client of the server under test.
type clientFactory func() redis.UniversalClient

func singleClient(addr string) clientFactory {
	return func() redis.UniversalClient {
		return redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	}
}

// storageTestLease is the lock lease in the tests: long enough for a renewal
// (every lease/3) to survive a loaded machine, short enough to wait out.
const storageTestLease = 1500 * time.Millisecond

var storagePrefixes atomic.Int64

// lockers are the storages of three instances on one Redis: two that lock
// and a third that only looks.
func lockers(t *testing.T, client clientFactory) (a, b, probe *Storage) {
	t.Helper()
	ss := newStorages(t, client, 3)
	return ss[0], ss[1], ss[2]
}

// newStorages returns n Storages, each on its own client (as n instances
// of the gateway would be), sharing one fresh prefix on the server.
func newStorages(t *testing.T, client clientFactory, n int) []*Storage {
	t.Helper()
	prefix := fmt.Sprintf("mg%d:", storagePrefixes.Add(1))
	var out []*Storage
	for i := range n {
		c := client()
		t.Cleanup(func() { c.Close() })
		s := NewStorage(c, prefix, zaptest.NewLogger(t).Named("storage"+strconv.Itoa(i)))
		s.lease = storageTestLease
		s.poll = 20 * time.Millisecond
		out = append(out, s)
	}
	return out
}

func testStorageConformance(t *testing.T, client clientFactory) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, client clientFactory)
	}{
		{"StoreLoad", testStoreLoad},
		{"TreeConflicts", testTreeConflicts},
		{"LikeFileStorage", testLikeFileStorage},
		{"Stat", testStat},
		{"List", testList},
		{"Delete", testDelete},
		{"Prefixes", testPrefixes},
		{"ConcurrentStores", testConcurrentStores},
		{"Cancelled", testCancelled},
		{"LockExclusive", testLockExclusive},
		{"LockMutualExclusion", testLockMutualExclusion},
		{"LockWaitHonoursContext", testLockWaitHonoursContext},
		{"LockRenewedWhileHeld", testLockRenewedWhileHeld},
		{"LockExpiresWhenHolderDies", testLockExpiresWhenHolderDies},
		{"UnlockByNonHolder", testUnlockByNonHolder},
		{"UnlockAfterLeaseLost", testUnlockAfterLeaseLost},
		{"LeaseLossNoticed", testLeaseLossNoticed},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, client) })
	}
}

func storeAll(t *testing.T, s certmagic.Storage, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		if err := s.Store(context.Background(), kv[i], []byte(kv[i+1])); err != nil {
			t.Fatalf("Store(%q): %v", kv[i], err)
		}
	}
}

func testStoreLoad(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	ctx := context.Background()
	if _, err := s.Load(ctx, "acme/missing.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of an absent key: %v, want fs.ErrNotExist", err)
	}
	binary := []byte("-----BEGIN\x00\xff\xfe\r\n\x01END")
	if err := s.Store(ctx, "certificates/ca/mail.test/mail.test.key", binary); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx, "certificates/ca/mail.test/mail.test.key")
	if err != nil || !bytes.Equal(got, binary) {
		t.Fatalf("Load = %q, %v; want %q", got, err, binary)
	}
	// Overwrite, and an empty value is a value.
	storeAll(t, s, "certificates/ca/mail.test/mail.test.key", "second", "empty", "")
	if got, err := s.Load(ctx, "certificates/ca/mail.test/mail.test.key"); err != nil || string(got) != "second" {
		t.Errorf("after overwrite Load = %q, %v; want second", got, err)
	}
	if got, err := s.Load(ctx, "empty"); err != nil || len(got) != 0 {
		t.Errorf("Load(empty) = %q, %v; want an empty value", got, err)
	}
	// Keys are cleaned as FileStorage's filepath.Join cleans them.
	if got, err := s.Load(ctx, "certificates//ca/./mail.test/mail.test.key/"); err != nil || string(got) != "second" {
		t.Errorf("Load of an uncleaned key = %q, %v; want second", got, err)
	}
	// A directory has no value.
	if _, err := s.Load(ctx, "certificates/ca"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a directory: %v, want fs.ErrNotExist", err)
	}
	if err := s.Store(ctx, "", []byte("x")); err == nil {
		t.Error("Store of the empty key succeeded")
	}
}

func testTreeConflicts(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	ctx := context.Background()
	storeAll(t, s, "a/b/c", "1")
	if err := s.Store(ctx, "a/b", []byte("x")); err == nil {
		t.Error(`Store("a/b") over the directory a/b succeeded`)
	}
	if err := s.Store(ctx, "a/b/c/d", []byte("x")); err == nil {
		t.Error(`Store("a/b/c/d") below the file a/b/c succeeded`)
	}
	// Neither attempt left anything behind.
	for _, k := range []string{"a/b", "a/b/c/d"} {
		if _, err := s.Load(ctx, k); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load(%q) after a refused Store: %v", k, err)
		}
	}
	// Names sharing a string prefix are not in conflict: a prefix is a
	// whole component.
	storeAll(t, s, "a/b.c", "2", "a/bc/d", "3", "a/b/c.d", "4")
	if got, _ := s.Load(ctx, "a/b/c"); string(got) != "1" {
		t.Errorf("a/b/c = %q, want 1", got)
	}
}

// tree is certmagic's layout, with names that trap a prefix taken on
// strings rather than components (acme vs acme-x, mail.test vs mail.test2).
var storageTree = []string{
	"acme/ca/users/postmaster@mail.test/postmaster.json", "{}",
	"acme/ca/users/postmaster@mail.test/postmaster.key", "k1",
	"certificates/ca/mail.test/mail.test.crt", "crt1",
	"certificates/ca/mail.test/mail.test.key", "key1",
	"certificates/ca/mail.test/mail.test.json", "{}",
	"certificates/ca/mail.test2/mail.test2.crt", "crt2",
	"certificates/ca-x/other.test/other.test.crt", "crt3",
	"ocsp/mail.test-abc", "staple",
	"last_clean.json", "{}",
}

// testLikeFileStorage compares every read method with certmagic's own
// FileStorage holding the same tree.
func testLikeFileStorage(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	fsto := &certmagic.FileStorage{Path: t.TempDir()}
	storeAll(t, s, storageTree...)
	storeAll(t, fsto, storageTree...)
	ctx := context.Background()
	paths := []string{"", "acme", "acme/ca/users", "certificates", "certificates/ca", "certificates/ca/mail.test",
		"certificates/ca/mail.test/mail.test.crt", "certificates/c", "certificates/ca/mail", "nothing", "ocsp",
		"last_clean.json", "certificates/ca/mail.test/"}
	for _, p := range paths {
		for _, rec := range []bool{false, true} {
			want, wantErr := fsto.List(ctx, p, rec)
			got, err := s.List(ctx, p, rec)
			slices.Sort(want)
			if errors.Is(err, fs.ErrNotExist) != errors.Is(wantErr, fs.ErrNotExist) || (err == nil) != (wantErr == nil) {
				t.Errorf("List(%q, %v) error %v; FileStorage: %v", p, rec, err, wantErr)
			}
			if len(got) != 0 || len(want) != 0 {
				if !slices.Equal(got, want) {
					t.Errorf("List(%q, %v) = %q\n FileStorage: %q", p, rec, got, want)
				}
			}
		}
		if got, want := s.Exists(ctx, p), fsto.Exists(ctx, p); got != want {
			t.Errorf("Exists(%q) = %v; FileStorage: %v", p, got, want)
		}
		gotInfo, err := s.Stat(ctx, p)
		wantInfo, wantErr := fsto.Stat(ctx, p)
		if errors.Is(err, fs.ErrNotExist) != errors.Is(wantErr, fs.ErrNotExist) {
			t.Errorf("Stat(%q) error %v; FileStorage: %v", p, err, wantErr)
		}
		if err == nil && wantErr == nil {
			if gotInfo.IsTerminal != wantInfo.IsTerminal || (gotInfo.IsTerminal && gotInfo.Size != wantInfo.Size) {
				t.Errorf("Stat(%q) = %+v; FileStorage: %+v", p, gotInfo, wantInfo)
			}
		}
		gotV, err := s.Load(ctx, p)
		wantV, wantErr := fsto.Load(ctx, p)
		if wantErr == nil && (err != nil || !bytes.Equal(gotV, wantV)) {
			t.Errorf("Load(%q) = %q, %v; FileStorage: %q", p, gotV, err, wantV)
		}
		if errors.Is(wantErr, fs.ErrNotExist) && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load(%q): %v; FileStorage: %v", p, err, wantErr)
		}
	}
}

func testStat(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	ctx := context.Background()
	before := time.Now().Truncate(time.Millisecond)
	storeAll(t, s, "certificates/ca/mail.test/mail.test.crt", "0123456789")
	after := time.Now()
	info, err := s.Stat(ctx, "certificates/ca/mail.test/mail.test.crt")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "certificates/ca/mail.test/mail.test.crt" || info.Size != 10 || !info.IsTerminal {
		t.Errorf("Stat = %+v, want the key, size 10, terminal", info)
	}
	if info.Modified.Before(before) || info.Modified.After(after) {
		t.Errorf("Modified %v not within the Store call [%v, %v]", info.Modified, before, after)
	}
	for _, dir := range []string{"certificates", "certificates/ca/mail.test", ""} {
		info, err := s.Stat(ctx, dir)
		if err != nil || info.IsTerminal || info.Key != dir {
			t.Errorf("Stat(%q) = %+v, %v; want a directory", dir, info, err)
		}
	}
	for _, k := range []string{"certificates/c", "certificates/ca/mail", "nothing"} {
		if _, err := s.Stat(ctx, k); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat(%q): %v, want fs.ErrNotExist", k, err)
		}
	}
}

func testList(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	ctx := context.Background()
	if _, err := s.List(ctx, "", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of an empty storage: %v, want fs.ErrNotExist", err)
	}
	storeAll(t, s, storageTree...)
	for _, tc := range []struct {
		dir       string
		recursive bool
		want      []string
	}{
		{"", false, []string{"acme", "certificates", "last_clean.json", "ocsp"}},
		{"certificates", false, []string{"certificates/ca", "certificates/ca-x"}},
		{"certificates/ca", false, []string{"certificates/ca/mail.test", "certificates/ca/mail.test2"}},
		{"certificates/ca/mail.test", false, []string{
			"certificates/ca/mail.test/mail.test.crt", "certificates/ca/mail.test/mail.test.json", "certificates/ca/mail.test/mail.test.key"}},
		{"certificates/ca", true, []string{
			"certificates/ca/mail.test",
			"certificates/ca/mail.test/mail.test.crt", "certificates/ca/mail.test/mail.test.json", "certificates/ca/mail.test/mail.test.key",
			"certificates/ca/mail.test2", "certificates/ca/mail.test2/mail.test2.crt"}},
		{"acme", true, []string{"acme/ca", "acme/ca/users", "acme/ca/users/postmaster@mail.test",
			"acme/ca/users/postmaster@mail.test/postmaster.json", "acme/ca/users/postmaster@mail.test/postmaster.key"}},
		{"last_clean.json", false, nil}, // a file: nothing below it, as FileStorage
	} {
		got, err := s.List(ctx, tc.dir, tc.recursive)
		if err != nil || !slices.Equal(got, tc.want) && len(got)+len(tc.want) > 0 {
			t.Errorf("List(%q, %v) = %q, %v\n want %q", tc.dir, tc.recursive, got, err, tc.want)
		}
	}
	for _, dir := range []string{"certificates/c", "certificates/ca/mail", "acme/ca/users/postmaster", "nothing"} {
		if got, err := s.List(ctx, dir, false); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("List(%q) = %q, %v; want fs.ErrNotExist (a prefix is a whole component)", dir, got, err)
		}
	}
}

func testDelete(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	ctx := context.Background()
	storeAll(t, s, storageTree...)
	// A file.
	if err := s.Delete(ctx, "certificates/ca/mail.test/mail.test.json"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "certificates/ca/mail.test/mail.test.json") {
		t.Error("deleted file still exists")
	}
	if got, _ := s.List(ctx, "certificates/ca/mail.test", false); len(got) != 2 {
		t.Errorf("after deleting one of three files List = %q", got)
	}
	// Absent keys are not an error (certmagic's contract: "It is not an
	// error if the key does not exist").
	for _, k := range []string{"certificates/ca/mail.test/mail.test.json", "nothing/at/all", "certificates/c"} {
		if err := s.Delete(ctx, k); err != nil {
			t.Errorf("Delete(%q) of an absent key: %v", k, err)
		}
	}
	// A directory takes everything below it, and only that: not
	// certificates/ca-x nor certificates/ca/mail.test2 for a string prefix.
	if err := s.Delete(ctx, "certificates/ca/mail.test"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"certificates/ca/mail.test", "certificates/ca/mail.test/mail.test.crt", "certificates/ca/mail.test/mail.test.key"} {
		if s.Exists(ctx, k) {
			t.Errorf("%s exists after its directory was deleted", k)
		}
	}
	if got, err := s.List(ctx, "certificates", true); err != nil || !slices.Equal(got, []string{
		"certificates/ca", "certificates/ca-x", "certificates/ca-x/other.test", "certificates/ca-x/other.test/other.test.crt",
		"certificates/ca/mail.test2", "certificates/ca/mail.test2/mail.test2.crt"}) {
		t.Errorf("after deleting certificates/ca/mail.test List = %q, %v", got, err)
	}
	if err := s.Delete(ctx, "certificates/ca"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.List(ctx, "certificates", false); !slices.Equal(got, []string{"certificates/ca-x"}) {
		t.Errorf("after deleting certificates/ca List = %q, want only certificates/ca-x", got)
	}
	// The root: everything.
	if err := s.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(ctx, "", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after deleting the root List: %v, want fs.ErrNotExist", err)
	}
	// A deleted directory can become a file, and the reverse.
	storeAll(t, s, "certificates", "now a file")
	if info, err := s.Stat(ctx, "certificates"); err != nil || !info.IsTerminal {
		t.Errorf("Stat(certificates) = %+v, %v; want a file", info, err)
	}
}

func testPrefixes(t *testing.T, client clientFactory) {
	a := newStorages(t, client, 1)[0]
	b := newStorages(t, client, 1)[0]
	ctx := context.Background()
	storeAll(t, a, "certificates/x", "a")
	if b.Exists(ctx, "certificates/x") {
		t.Error("a key under one prefix is visible under another")
	}
	if err := b.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, "certificates/x"); err != nil || string(got) != "a" {
		t.Errorf("Delete of the root under another prefix took %q: %v", got, err)
	}
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	defer a.Unlock(ctx, "l")
	if ok, err := b.TryLock(ctx, "l"); !ok || err != nil {
		t.Errorf("a lock under one prefix blocks another: %v, %v", ok, err)
	} else {
		_ = b.Unlock(ctx, "l")
	}
}

func testConcurrentStores(t *testing.T, client clientFactory) {
	ss := newStorages(t, client, 2)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			s := ss[i%2]
			for j := range 10 {
				v := fmt.Sprintf("writer %d value %d", i, j)
				if err := s.Store(ctx, "shared/key", []byte(v)); err != nil {
					t.Error(err)
				}
				if err := s.Store(ctx, fmt.Sprintf("own/%d/%d", i, j), []byte(v)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got, err := ss[0].Load(ctx, "shared/key")
	if err != nil || !bytes.HasPrefix(got, []byte("writer ")) {
		t.Errorf("shared/key = %q, %v", got, err)
	}
	if keys, err := ss[1].List(ctx, "own", true); err != nil || len(keys) != 8+80 {
		t.Errorf("List(own, recursive) has %d keys, %v; want 8 directories and 80 files", len(keys), err)
	}
}

func testCancelled(t *testing.T, client clientFactory) {
	s := newStorages(t, client, 1)[0]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Store(ctx, "k", []byte("v")); err == nil {
		t.Error("Store under a cancelled context succeeded")
	}
	if _, err := s.Load(ctx, "k"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load under a cancelled context: %v, want the cancellation", err)
	}
	if _, err := s.List(ctx, "", false); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List under a cancelled context: %v, want the cancellation", err)
	}
	if _, err := s.Stat(ctx, "k"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat under a cancelled context: %v, want the cancellation", err)
	}
	if err := s.Delete(ctx, "k"); err == nil {
		t.Error("Delete under a cancelled context succeeded")
	}
	if err := s.Lock(ctx, "l"); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock under a cancelled context: %v", err)
	}
	if s.Exists(context.Background(), "k") {
		t.Error("a Store under a cancelled context wrote")
	}
}

// assertLocked checks whether some Storage holds name, by trying it from
// probe.
func assertLocked(t *testing.T, probe *Storage, name string, want bool) {
	t.Helper()
	ok, err := probe.TryLock(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		if err := probe.Unlock(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	if ok == want {
		if want {
			t.Errorf("lock %s is free, want it held", name)
		} else {
			t.Errorf("lock %s is held, want it free", name)
		}
	}
}

func testLockExclusive(t *testing.T, client clientFactory) {
	a, b, probe := lockers(t, client)
	ctx := context.Background()
	if err := a.Lock(ctx, "issue_cert_mail.test"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "issue_cert_mail.test"); ok || err != nil {
		t.Fatalf("TryLock of a held lock = %v, %v", ok, err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "issue_cert_mail.test") }()
	select {
	case err := <-got:
		t.Fatalf("Lock returned while another instance held the lock: %v", err)
	case <-time.After(10 * b.poll):
	}
	if err := a.Unlock(ctx, "issue_cert_mail.test"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lock not acquired 10 s after the holder's Unlock")
	}
	assertLocked(t, probe, "issue_cert_mail.test", true)
	if err := b.Unlock(ctx, "issue_cert_mail.test"); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, probe, "issue_cert_mail.test", false)
	if err := b.Unlock(ctx, "issue_cert_mail.test"); err == nil {
		t.Error("a second Unlock succeeded")
	}
}

// testLockMutualExclusion runs a non-atomic read-modify-write of a stored
// counter under the lock, from goroutines spread over two instances.
func testLockMutualExclusion(t *testing.T, client clientFactory) {
	ss := newStorages(t, client, 2)
	ctx := context.Background()
	storeAll(t, ss[0], "counter", "0")
	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	const workers, rounds = 6, 5
	for i := range workers {
		wg.Go(func() {
			s := ss[i%2]
			for range rounds {
				lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := s.Lock(lctx, "counter")
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				v, err := s.Load(ctx, "counter")
				n, _ := strconv.Atoi(string(v))
				time.Sleep(time.Millisecond)
				if err == nil {
					err = s.Store(ctx, "counter", []byte(strconv.Itoa(n+1)))
				}
				inside.Add(-1)
				if err != nil {
					t.Error(err)
				}
				if err := s.Unlock(ctx, "counter"); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if got, _ := ss[1].Load(ctx, "counter"); string(got) != strconv.Itoa(workers*rounds) {
		t.Errorf("counter = %s after %d locked increments", got, workers*rounds)
	}
	if n := overlaps.Load(); n > 0 {
		t.Errorf("%d critical sections overlapped", n)
	}
}

func testLockWaitHonoursContext(t *testing.T, client clientFactory) {
	ss := newStorages(t, client, 2)
	if err := ss[0].Lock(context.Background(), "l"); err != nil {
		t.Fatal(err)
	}
	defer ss[0].Unlock(context.Background(), "l")
	ctx, cancel := context.WithTimeout(context.Background(), 5*ss[1].poll)
	defer cancel()
	if err := ss[1].Lock(ctx, "l"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock of a held lock under a deadline: %v, want context.DeadlineExceeded", err)
	}
}

func testLockRenewedWhileHeld(t *testing.T, client clientFactory) {
	ss := newStorages(t, client, 2)
	a, probe := ss[0], ss[1]
	ctx := context.Background()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	// Held for two leases: the renewals keep it.
	end := time.Now().Add(2 * storageTestLease)
	for time.Now().Before(end) {
		assertLocked(t, probe, "l", true)
		time.Sleep(storageTestLease / 4)
	}
	if err := a.RenewLockLease(ctx, "l", time.Minute); err != nil {
		t.Errorf("RenewLockLease of a held lock: %v", err)
	}
	if err := a.Unlock(ctx, "l"); err != nil {
		t.Errorf("Unlock after two leases: %v", err)
	}
	assertLocked(t, probe, "l", false)
}

// die makes s behave as a process that died holding lock name: the renewer
// stops, nothing is released, and s forgets the lock.
func (s *Storage) die(t *testing.T, name string) {
	t.Helper()
	s.pauseRenewal(t, name)
	s.mu.Lock()
	delete(s.locks, name)
	s.mu.Unlock()
}

// pauseRenewal stops the renewer of lock name, as a long pause of the
// process would, and leaves the lock recorded as held.
func (s *Storage) pauseRenewal(t *testing.T, name string) *storageLock {
	t.Helper()
	l := s.held(name)
	if l == nil {
		t.Fatalf("lock %s not held", name)
	}
	close(l.stop)
	<-l.done
	l.stop = make(chan struct{}) // for the Unlock to come
	return l
}

func testLockExpiresWhenHolderDies(t *testing.T, client clientFactory) {
	ss := newStorages(t, client, 2)
	a, b := ss[0], ss[1]
	ctx := context.Background()
	if err := a.Lock(ctx, "issue_cert_mail.test"); err != nil {
		t.Fatal(err)
	}
	a.die(t, "issue_cert_mail.test")
	// The lease outlives its holder for up to one lease: not free at once.
	if ok, err := b.TryLock(ctx, "issue_cert_mail.test"); ok || err != nil {
		t.Fatalf("TryLock right after the holder died = %v, %v; want the lease still held", ok, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 20*storageTestLease)
	defer cancel()
	if err := b.Lock(lctx, "issue_cert_mail.test"); err != nil {
		t.Fatalf("Lock after the holder died: %v (the lease did not expire)", err)
	}
	if err := b.Unlock(ctx, "issue_cert_mail.test"); err != nil {
		t.Fatal(err)
	}
}

func testUnlockByNonHolder(t *testing.T, client clientFactory) {
	a, b, probe := lockers(t, client)
	ctx := context.Background()
	if err := b.Unlock(ctx, "never"); err == nil {
		t.Error("Unlock of a lock never taken succeeded")
	}
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "l"); err == nil {
		t.Error("Unlock by an instance that does not hold the lock succeeded")
	}
	if err := b.RenewLockLease(ctx, "l", time.Minute); err == nil {
		t.Error("RenewLockLease by an instance that does not hold the lock succeeded")
	}
	assertLocked(t, probe, "l", true)
	if err := a.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// testUnlockAfterLeaseLost: a holder paused past its lease finds the lock
// taken by another, and its late Unlock must not release the other's.
func testUnlockAfterLeaseLost(t *testing.T, client clientFactory) {
	a, b, probe := lockers(t, client)
	ctx := context.Background()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	a.pauseRenewal(t, "l")
	lctx, cancel := context.WithTimeout(ctx, 20*storageTestLease)
	defer cancel()
	if err := b.Lock(lctx, "l"); err != nil {
		t.Fatalf("Lock after the holder's lease ran out: %v", err)
	}
	if err := a.RenewLockLease(ctx, "l", time.Minute); !errors.Is(err, ErrLockLost) {
		t.Errorf("RenewLockLease of a lost lease: %v, want ErrLockLost", err)
	}
	if err := a.Unlock(ctx, "l"); !errors.Is(err, ErrLockLost) {
		t.Errorf("Unlock of a lost lease: %v, want ErrLockLost", err)
	}
	assertLocked(t, probe, "l", true) // b's lock survived a's Unlock
	if err := b.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// testLeaseLossNoticed: the renewer finds out that the lease is gone (here
// another token took the key, as after a failover that lost the lock).
func testLeaseLossNoticed(t *testing.T, client clientFactory) {
	a := newStorages(t, client, 1)[0]
	ctx := context.Background()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	l := a.held("l")
	if err := a.client.Set(ctx, a.lockKey("l"), "another holder", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.lost:
	case <-time.After(20 * storageTestLease):
		t.Fatal("the renewer did not notice the lost lease")
	}
	if err := a.Unlock(ctx, "l"); !errors.Is(err, ErrLockLost) {
		t.Errorf("Unlock of a lost lease: %v, want ErrLockLost", err)
	}
	if v, _ := a.client.Get(ctx, a.lockKey("l")).Result(); v != "another holder" {
		t.Errorf("the other holder's lock became %q", v)
	}
}
