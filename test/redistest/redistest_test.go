package redistest

import (
	"strings"
	"testing"
)

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

func TestStartCluster(t *testing.T) {
	addr, _ := StartCluster(t)
	if reply, err := command(addr, "MSET", "a", "1", "b", "2"); err != nil || !strings.HasPrefix(reply, "-CROSSSLOT") {
		t.Errorf("MSET of two slots = %q, %v; want CROSSSLOT", reply, err)
	}
	if reply, err := command(addr, "MSET", "{t}a", "1", "{t}b", "2"); err != nil || reply != "+OK\r\n" {
		t.Errorf("MSET of one slot = %q, %v; want OK", reply, err)
	}
	if reply, err := command(addr, "GET", "{t}b"); err != nil || reply != "2" {
		t.Errorf("GET = %q, %v; want 2", reply, err)
	}
}
