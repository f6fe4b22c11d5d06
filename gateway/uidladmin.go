package gateway

import (
	"fmt"

	"go.uber.org/zap"

	"mailgate/gateway/cluster"
	"mailgate/gateway/config"
	"mailgate/upstream"
)

// UIDLAdmin is pop3.uidl_map's store as the operator's commands use it
// (mailgate uidl-import, uidl-drop, uidl-stats).
type UIDLAdmin interface {
	upstream.UIDLStore
	// Drop forgets every map of a user (a UIDLIdentity); it says how many
	// there were.
	Drop(user string) (int, error)
	// Stats counts users, maps, messages and bytes.
	Stats() (upstream.UIDLStoreStats, error)
	// Close releases the file or the connections.
	Close() error
}

// OpenUIDLAdmin opens cfg's pop3.uidl_map store outside a gateway: the
// embedded store's file (which one process at a time opens: a running
// gateway holds it), or, with store: redis, the cluster's Redis (shared, so
// usable while the gateways serve). Nothing is dialled before the first
// call.
func OpenUIDLAdmin(cfg *config.Config, log *zap.Logger) (UIDLAdmin, error) {
	m := cfg.POP3.UIDLMap
	switch {
	case m == nil:
		return nil, fmt.Errorf("pop3.uidl_map is not configured: there is no store")
	case m.Store == upstream.UIDLMapRedis:
		if cfg.Cluster == nil {
			// Validation refuses it; a Config built by hand may not be.
			return nil, fmt.Errorf("pop3.uidl_map.store: redis needs the cluster: section")
		}
		c := cluster.New(cfg.Cluster, log, nil)
		return redisUIDLAdmin{cluster.NewUIDLStore(c.Redis(), c.KeyPrefix(), int64(m.MaxBytes)), c}, nil
	default:
		st, err := upstream.OpenUIDLBolt(m.Store, int64(m.MaxBytes))
		if err != nil {
			return nil, fmt.Errorf("pop3.uidl_map.store: %w", err)
		}
		return st, nil
	}
}

// redisUIDLAdmin is the cluster's store with the client it owns.
type redisUIDLAdmin struct {
	*cluster.UIDLStore
	client *cluster.Client
}

func (a redisUIDLAdmin) Close() error { return a.client.Close() }
