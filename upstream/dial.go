package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Target is one backend server chosen for one session: the gateway builds it
// from the routing decision.
type Target struct {
	Name    string         // the backend's name in the configuration (logs only)
	Address string         // host:port of the server to dial
	Config  *BackendConfig // validated
	// ClientAddr is the end client (after PROXY protocol), for
	// forward_client_ip and send_proxy_protocol.
	ClientAddr net.Addr
	// LocalAddr is the gateway address the client connected to, for
	// forward_client_ip (x-connected-ip); nil leaves it out.
	LocalAddr net.Addr
	// Login is the user name as the client gave it, before routing's
	// rewrite_user: the identity of the user's UIDL map (UIDLIdentity),
	// which stays when routing moves the user to another backend. Empty:
	// the backend user name.
	Login string
}

// dialConn connects to t.Address under ctx and the dial timeout and, for
// implicit TLS, completes the handshake with certificate verification (unless
// insecure_skip_verify). STARTTLS is the caller's business: it is an IMAP
// exchange. The returned connection has no deadline set.
func dialConn(ctx context.Context, t Target, timeout time.Duration) (net.Conn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", t.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %v", ErrUnreachable, t.Address, err)
	}
	if v := t.Config.SendProxyProtocol; v != "" && t.ClientAddr != nil {
		if err := sendProxyHeader(ctx, conn, v, t.ClientAddr); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: PROXY header to %s: %v", ErrUnavailable, t.Address, err)
		}
	}
	if t.Config.TLS != TLSImplicit {
		return conn, nil
	}
	tc := tls.Client(conn, t.Config.TLSConfig(t.Address))
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, handshakeError(t, "TLS handshake", err)
	}
	return tc, nil
}

// handshakeError describes a failed TLS handshake with a backend for the log:
// which backend and server, and, when its certificate did not verify, which
// key of the configuration to set.
func handshakeError(t Target, stage string, err error) error {
	name := t.Name
	if name == "" {
		name = "NAME"
	}
	var (
		host    x509.HostnameError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		hint    string
	)
	switch {
	case errors.As(err, &host):
		hint = fmt.Sprintf("; set backends.%s.server_name to a name its certificate holds", name)
	case errors.As(err, &unknown):
		hint = fmt.Sprintf("; set backends.%s.ca to the PEM file of the CA that signed its certificate", name)
	case errors.As(err, &invalid):
		hint = fmt.Sprintf("; its certificate is not valid (expired, or not for a server): renew it, or check backends.%s.ca", name)
	}
	return fmt.Errorf("%w: backend %s: %s with %s: %v%s", ErrUnavailable, name, stage, t.Address, err, hint)
}

// sendProxyHeader writes a PROXY protocol header (v1 or v2) saying the
// connection comes from client, before anything else (and before TLS).
func sendProxyHeader(ctx context.Context, conn net.Conn, version string, client net.Addr) error {
	v := byte(2)
	if version == "v1" {
		v = 1
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
		defer conn.SetWriteDeadline(time.Time{})
	}
	_, err := proxyproto.HeaderProxyFromAddrs(v, client, conn.RemoteAddr()).WriteTo(conn)
	return err
}
