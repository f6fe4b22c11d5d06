package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
	"mailgate/upstream"
)

// uidls lists a's UIDLs through one instance (a whole session, QUIT without
// DELE).
func uidls(t *testing.T, g *harness.Gateway, a account) []string {
	t.Helper()
	out, err := mustLogin(t, g.Addr("pop3"), a).UIDLsQuit()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mailgate runs the binary's subcommand args with the configuration in
// file and returns its output.
func mailgate(t *testing.T, file string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t), append([]string{args[0], "-config", file}, args[1:]...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// pop3.uidl_map.store: redis: two instances in front of one Dovecot share
// the map. The first session (instance 1) records the UIDLs; after a new
// UIDVALIDITY a session on instance 2 shows the same list (it rematched on
// the map instance 1 wrote), and instance 1 then shows it without a rematch
// (it reads instance 2's); a message added gets one new UIDL on both;
// byte-identical duplicates keep theirs. mailgate uidl-stats and uidl-drop
// work on the shared map while the instances serve.
func TestUIDLMapSharedByTheCluster(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 2, gwOptions{uidlMap: true})
	a := newAccount(t, 0)
	dc := harness.Dovecot(t)
	dup := []byte("From: d@test\r\nSubject: twice\r\n\r\nthe same bytes twice\r\n")
	if _, err := dc.Append(a.User, a.Pass, "INBOX", []byte("From: a@test\r\nSubject: one\r\n\r\n1\r\n"), dup, dup,
		[]byte("From: b@test\r\nSubject: two\r\n\r\n2\r\n")); err != nil {
		t.Fatal(err)
	}
	st, err := dc.Mailbox(a.User, a.Pass, "INBOX", false)
	if err != nil {
		t.Fatal(err)
	}

	before := uidls(t, gs[0], a)
	// The first session shows uidl_format's UIDLs, as without the map.
	for i, m := range st.Messages {
		if want := fmt.Sprintf("%08x%08x", m.UID, st.UIDValidity); before[i] != want {
			t.Fatalf("UIDL %d = %q, want %q (uidl_format's)", i+1, before[i], want)
		}
	}
	// The map is in Redis, in the user's hash: one map, INBOX.
	key := "t:{uidl:" + upstream.UIDLIdentity(a.User) + "}:maps"
	if fields, err := r.Client(t).HKeys(context.Background(), key).Result(); err != nil || !slices.Equal(fields, []string{"INBOX"}) {
		t.Fatalf("HKEYS %s = %q, %v; want [INBOX]", key, fields, err)
	}

	newV := strconv.FormatUint(uint64(st.UIDValidity)+1000, 10)
	if _, err := dc.Doveadm("mailbox", "update", "-u", a.User, "--uid-validity", newV, "INBOX"); err != nil {
		t.Fatal(err)
	}
	if st2, _ := dc.Mailbox(a.User, a.Pass, "INBOX", false); st2 == nil || st2.UIDValidity == st.UIDValidity {
		t.Fatal("UIDVALIDITY unchanged after doveadm mailbox update")
	}
	if other := uidls(t, gs[1], a); !slices.Equal(other, before) {
		t.Fatalf("on the other instance after the UIDVALIDITY change %q, want %q", other, before)
	}
	if !strings.Contains(gs[1].Logs(), `"rematch":true`) {
		t.Error("instance 2 logged no rematch")
	}
	if back := uidls(t, gs[0], a); !slices.Equal(back, before) {
		t.Fatalf("back on the first instance %q, want %q", back, before)
	}
	if strings.Contains(gs[0].Logs(), `"rematch":true`) {
		t.Error("instance 1 rematched: it did not read the map instance 2 wrote")
	}

	if _, err := dc.Append(a.User, a.Pass, "INBOX", []byte("From: c@test\r\nSubject: three\r\n\r\n3\r\n")); err != nil {
		t.Fatal(err)
	}
	withNew := uidls(t, gs[1], a)
	if len(withNew) != 5 || !slices.Equal(withNew[:4], before) || slices.Contains(before, withNew[4]) {
		t.Fatalf("after a new message %q, want %q and a new UIDL", withNew, before)
	}
	if again := uidls(t, gs[0], a); !slices.Equal(again, withNew) {
		t.Fatalf("the first instance shows %q, the second %q", again, withNew)
	}

	// The operator's commands, on the shared map, while both instances
	// serve.
	file := filepath.Join(t.TempDir(), "mailgate.yaml")
	if err := os.WriteFile(file, []byte(gatewayYAML(t, r, gwOptions{uidlMap: true, instance: "ops"})), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := mailgate(t, file, "uidl-stats"); err != nil || !strings.Contains(out, "users 1, maps 1, messages 5,") {
		t.Fatalf("uidl-stats: %v\n%s", err, out)
	}
	if out, err := mailgate(t, file, "uidl-drop", a.User); err != nil || !strings.Contains(out, "dropped 1 map") {
		t.Fatalf("uidl-drop: %v\n%s", err, out)
	}
	fresh := uidls(t, gs[1], a)
	if len(fresh) != 5 || slices.Equal(fresh, withNew) {
		t.Fatalf("after uidl-drop %q: want uidl_format's UIDLs of the new UIDVALIDITY", fresh)
	}
	if !strings.HasSuffix(fresh[0], fmt.Sprintf("%08x", uint64(st.UIDValidity)+1000)) {
		t.Fatalf("after uidl-drop %q: want uidl_format's UIDLs of UIDVALIDITY %s", fresh, newV)
	}
	if again := uidls(t, gs[0], a); !slices.Equal(again, fresh) {
		t.Fatalf("after uidl-drop the instances differ: %q and %q", again, fresh)
	}
}

// With Redis away a session with the map fails (-ERR [SYS/TEMP]) rather
// than show other UIDLs: the lock may go per instance (degraded mode), the
// map may not. When Redis answers again, so does the map.
func TestUIDLMapRedisAwayFailsTheSession(t *testing.T) {
	r := startRedis(t)
	gs := gateways(t, r, 1, gwOptions{uidlMap: true})
	a := newAccount(t, 2)
	before := uidls(t, gs[0], a)

	r.Stop()
	c, err := login(gs[0].Addr("pop3"), a)
	if code(err) != "SYS/TEMP" {
		if c != nil {
			c.Close()
		}
		t.Fatalf("login with Redis away: %v, want -ERR [SYS/TEMP]", err)
	}
	if !strings.Contains(gs[0].Logs(), `"msg":"uidl map store failed"`) {
		t.Fatal("no log of the store's failure")
	}

	// Redis back (this test's runs without persistence: empty): the
	// sessions work again, and record a new map.
	r.Start()
	waitMetric(t, gs[0], "mailgate_cluster_up", 1, 5*time.Second)
	if again := uidls(t, gs[0], a); !slices.Equal(again, before) {
		t.Fatalf("after Redis returned %q, want %q (the same UIDVALIDITY)", again, before)
	}
}
