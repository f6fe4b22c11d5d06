//go:build !unix

package tls

// writable cannot ask the kernel here; serve's own check (prepareStorage)
// is the one that counts.
func writable(string) error { return nil }
