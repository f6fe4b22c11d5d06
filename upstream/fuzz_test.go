package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// scriptConn is a backend connection whose every byte comes from a fixed
// script; what the login writes is discarded.
type scriptConn struct {
	r *bytes.Reader
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzLoginResponses feeds arbitrary backend output to the hand-written
// login: greeting, CAPABILITY, continuation requests, literals, tagged
// replies. It must never panic or read without bound, a failure must be
// ErrUnavailable or a *LoginError of one of the three kinds and never name
// the password, and on success the bytes handed over are exactly the rest of
// what the backend sent (none lost, none invented).
func FuzzLoginResponses(f *testing.F) {
	for _, seed := range []string{
		"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR ID] hi\r\nmg2 OK ID\r\nmg1 OK [CAPABILITY IMAP4rev1 IDLE] in\r\n* 3 EXISTS\r\n",
		"* OK hi\r\n* CAPABILITY IMAP4rev1 LITERAL+\r\nmg1 OK\r\nmg2 OK logged in\r\n* CAPABILITY IMAP4rev1\r\nmg3 OK\r\n",
		"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n+ \r\nmg1 NO [AUTHENTICATIONFAILED] no\r\n",
		"* OK [CAPABILITY IMAP4rev1] hi\r\n+ go\r\nmg1 NO [CONTACTADMIN] call us\r\n",
		"* OK [CAPABILITY IMAP4rev1] hi\r\n* FOO {5}\r\nabcde more\r\nmg1 BAD {3}\r\nxyz\r\n",
		"* PREAUTH [CAPABILITY IMAP4rev1] as someone\r\n",
		"* BYE busy\r\n",
		"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n",
		"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n+ more\r\nmg1 BAD cancelled\r\n",
		"* OK [CAPABILITY] x\r\nmg1 OK [CAPABILITY] y\r\n",
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	const password = "pa55-\"w{3}\r\nrd"
	f.Fuzz(func(t *testing.T, script []byte, forward bool) {
		conn := &scriptConn{r: bytes.NewReader(script)}
		b := &backendConn{conn: conn, br: bufio.NewReader(conn), bw: bufio.NewWriter(conn), addr: "backend:143"}
		cfg := &BackendConfig{Address: "backend:143", TLS: TLSNone, ForwardClientIP: forward}
		tgt := Target{Address: cfg.Address, Config: cfg, ClientAddr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}}
		s, err := b.login(context.Background(), tgt, "alice", password)
		if err != nil {
			if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), "pa55") {
				t.Fatalf("error names the password: %v", err)
			}
			var le *LoginError
			if errors.As(err, &le) {
				switch le.Kind {
				case ErrAuthFailed, ErrInUse, ErrUnavailable:
				default:
					t.Fatalf("LoginError of kind %v", le.Kind)
				}
				return
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want ErrUnavailable or a *LoginError", err)
			}
			return
		}
		if s.Caps == nil {
			t.Fatal("logged in without capabilities")
		}
		rest, _ := io.ReadAll(s.Conn)
		if !bytes.HasSuffix(script, rest) {
			t.Fatalf("handed over %q, not the end of the script", rest)
		}
	})
}
