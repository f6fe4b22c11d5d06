package connlog

import (
	"sync"
	"testing"
)

func TestNextIDIsUniqueAcrossGoroutines(t *testing.T) {
	const workers, each = 8, 1000
	got := make(chan uint64, workers*each)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				got <- NextID()
			}
		})
	}
	wg.Wait()
	close(got)
	seen := make(map[uint64]bool)
	for id := range got {
		if id == 0 || seen[id] {
			t.Fatalf("id %d repeated or zero", id)
		}
		seen[id] = true
	}
}

func TestResultField(t *testing.T) {
	f := IdleTimeout.Field()
	if f.Key != "result" || f.String != "idle_timeout" {
		t.Fatalf("field %+v", f)
	}
}
