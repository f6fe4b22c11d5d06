package upstream

import (
	"context"
	"io"
	"testing"
	"time"
)

// BenchmarkRetrCached is RETR of a 64 KiB message found in the body cache:
// no backend round trip.
func BenchmarkRetrCached(b *testing.B) {
	be := newBackend(b, nil)
	be.addUser("alice", "pw", msg(1, 64<<10))
	mds := NewMaildrops(testConfig(nil), testLogger(b))
	md := openMaildrop(b, mds, be, "alice", "pw")
	readAll(b)(md.Retr(context.Background(), 1)) // warm the cache
	before := be.totalFetches()
	b.SetBytes(int64(len(msg(1, 64<<10))))
	b.ReportAllocs()
	for b.Loop() {
		rc, err := md.Retr(context.Background(), 1)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	if be.totalFetches() != before {
		b.Fatalf("cached RETRs made %d backend FETCHes", be.totalFetches()-before)
	}
}

// BenchmarkRetrSpool is RETR of a 1 MiB message that is not cached: a
// backend FETCH streamed into a spool file, then read back.
func BenchmarkRetrSpool(b *testing.B) {
	be := newBackend(b, nil)
	body := msg(1, 1<<20)
	be.addUser("alice", "pw", body)
	cfg := testConfig(func(c *MaildropConfig) {
		c.SpoolMemory = 64 << 10
		c.Cache.MaxMessageBytes = 1 // nothing is cached
		c.FetchAhead = size(0)
	})
	mds := NewMaildrops(cfg, testLogger(b))
	mds.spoolDir = b.TempDir()
	md := openMaildrop(b, mds, be, "alice", "pw")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		rc, err := md.Retr(context.Background(), 1)
		if err != nil {
			b.Fatal(err)
		}
		if n, _ := io.Copy(io.Discard, rc); n != int64(len(body)) {
			b.Fatalf("read %d bytes, want %d", n, len(body))
		}
		rc.Close()
	}
}

// BenchmarkDownloadMaildrop opens a maildrop of 20 messages of 10 KiB over
// a link with 5 ms of latency, RETRs them all in order and closes it, with
// fetch-ahead off and on: the difference is the round trips it saves.
func BenchmarkDownloadMaildrop(b *testing.B) {
	const n = 20
	for _, tc := range []struct {
		name  string
		ahead Size
	}{{"ahead=off", 0}, {"ahead=8MiB", 8 << 20}} {
		b.Run(tc.name, func(b *testing.B) {
			be := newBackend(b, &backendOptions{latency: 5 * time.Millisecond})
			be.addUser("alice", "pw", msgs(n, 10<<10)...)
			cfg := testConfig(func(c *MaildropConfig) {
				c.Cache.MaxMessageBytes = 1 // every run fetches from the backend
				c.FetchAhead = size(tc.ahead)
				off := false
				c.MarkSeen = &off
			})
			mds := NewMaildrops(cfg, testLogger(b))
			for b.Loop() {
				md, err := mds.Open(context.Background(), be.target(), fastTimeouts, "alice", "pw")
				if err != nil {
					b.Fatal(err)
				}
				for i := 1; i <= n; i++ {
					rc, err := md.Retr(context.Background(), i)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, rc)
					rc.Close()
				}
				md.Close()
			}
		})
	}
}
