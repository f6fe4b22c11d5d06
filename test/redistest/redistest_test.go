package redistest

import "testing"

func TestStartStopStartAt(t *testing.T) {
	addr, stop := Start(t)
	if err := ping(addr); err != nil {
		t.Fatalf("started server: %v", err)
	}
	stop()
	stop() // at most once
	if err := ping(addr); err == nil {
		t.Fatal("the server still answers after stop")
	}
	StartAt(t, addr)
	if err := ping(addr); err != nil {
		t.Fatalf("server brought back at %s: %v", addr, err)
	}
}
