// Package cluster is mailgate's cluster mode: the state that several
// instances must share to behave as one gateway, kept in Redis through a
// redis.UniversalClient (one server, Sentinel or Redis Cluster). It
// implements the small interfaces that upstream, tls and the limiter
// declare; only gateway imports it.
//
// Storage is certmagic's Storage on Redis (tls.acme.storage: redis): one
// instance asks the CA under a cluster-wide lock, and every instance loads
// the result.
//
//	client := redis.NewUniversalClient(&redis.UniversalOptions{
//		Addrs: []string{"redis:6379"}, ContextTimeoutEnabled: true,
//	})
//	magic := certmagic.New(cache, certmagic.Config{
//		Storage: cluster.NewStorage(client, "mailgate:", log),
//	})
package cluster
