package upstream

import (
	"bufio"
	"context"
	"time"
)

// Probe checks what a login at t needs, without logging in: the TCP
// connection, the TLS handshake with certificate verification (implicit, or
// after STARTTLS) and an OK greeting; then it says LOGOUT. It is the
// readiness check (/readyz). The error names the backend and, for a
// certificate that does not verify, the key to set; it wraps ErrUnavailable
// (unreachable: ErrUnreachable).
func Probe(ctx context.Context, t Target, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	raw, err := dialConn(ctx, t, timeout)
	if err != nil {
		return err
	}
	b := &backendConn{conn: raw, br: bufio.NewReader(raw), bw: bufio.NewWriter(raw), addr: t.Address}
	defer func() { b.conn.Close() }()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	greeting, err := b.read()
	if err != nil {
		return err
	}
	if greeting.tag != "*" || greeting.status != "OK" {
		return b.unavailable("greeting %s %q, want * OK", greeting.status, greeting.text)
	}
	if t.Config.TLS == TLSStartTLS {
		if err := b.startTLS(ctx, t); err != nil {
			return err
		}
	}
	// The server is there and speaks IMAP: how it answers LOGOUT is no
	// reason to stop sending it users.
	b.conn.SetDeadline(time.Now().Add(time.Second))
	tag := b.nextTag()
	b.command(tag, [][]byte{[]byte(tag + " LOGOUT\r\n")}) //nolint:errcheck
	return nil
}
