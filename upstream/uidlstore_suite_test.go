package upstream_test

import (
	"path/filepath"
	"testing"

	"mailgate/test/uidlstoretest"
	"mailgate/upstream"
)

// The embedded store through the stores' conformance suite.
func TestUIDLBoltConformance(t *testing.T) {
	uidlstoretest.Run(t, func(t *testing.T, maxBytes int64) []uidlstoretest.Store {
		s, err := upstream.OpenUIDLBolt(filepath.Join(t.TempDir(), "uidl.db"), maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return []uidlstoretest.Store{s}
	})
}
