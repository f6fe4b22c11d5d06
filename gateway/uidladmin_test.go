package gateway

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap/zaptest"

	"mailgate/gateway/config"
	"mailgate/upstream"
)

// The operator's commands open the store the configuration names: the
// embedded file, or the cluster's Redis under cluster.key_prefix, which a
// gateway on the same configuration then reads.
func TestOpenUIDLAdmin(t *testing.T) {
	m := miniredis.RunT(t)
	base := "listeners: [{name: p, protocol: pop3, address: \"127.0.0.1:0\", tls: none}]\n" +
		"backends: {b: {address: \"127.0.0.1:1\", tls: none}}\nrouting: {default: b}\n"
	parse := func(extra string) *config.Config {
		t.Helper()
		cfg, err := config.Parse([]byte(base + extra))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	ctx := context.Background()
	k := upstream.UIDLKey{User: "alice", Mailbox: "INBOX"}
	for _, tc := range []struct {
		name, extra string
		check       func(t *testing.T)
	}{
		{"bbolt", fmt.Sprintf("pop3: {uidl_map: {store: %q}}\n", filepath.Join(t.TempDir(), "uidl.db")), func(t *testing.T) {}},
		{"redis", fmt.Sprintf("pop3: {uidl_map: {store: redis}}\ncluster: {redis: {addresses: [%q]}, key_prefix: \"k:\", instance: ops}\n", m.Addr()),
			func(t *testing.T) {
				if v := m.HGet("k:{uidl:alice}:maps", "INBOX"); v != "rec" {
					t.Fatalf("in Redis under the key prefix: %q", v)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := OpenUIDLAdmin(parse(tc.extra), zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Update(ctx, k, func([]byte) ([]byte, error) { return []byte("rec"), nil }); err != nil {
				t.Fatal(err)
			}
			if s, err := st.Stats(); err != nil || s.Users != 1 || s.Maps != 1 {
				t.Fatalf("Stats = %+v, %v", s, err)
			}
			tc.check(t)
			if n, err := st.Drop("alice"); n != 1 || err != nil {
				t.Fatalf("Drop = %d, %v", n, err)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := OpenUIDLAdmin(parse(""), zaptest.NewLogger(t)); err == nil || !strings.Contains(err.Error(), "pop3.uidl_map is not configured") {
		t.Fatalf("without uidl_map: %v", err)
	}
}
