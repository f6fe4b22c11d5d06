package imape2e

// After login the relay must pass every byte as it came, whatever the
// stream is: compressed by the backend (COMPRESS=DEFLATE) or a burst of
// pipelined commands and literals the client never waited between.

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/transcript"
)

// deflateConn is the client side of RFC 4978 §4: from the tagged OK of
// COMPRESS on, each direction is one raw DEFLATE stream (RFC 1951, no zlib
// header), and the client flushes after every command so the server can
// decode it at once.
type deflateConn struct {
	net.Conn
	r io.Reader
	w *flate.Writer
}

func newDeflateConn(c net.Conn, wire *atomic.Int64) *deflateConn {
	w, _ := flate.NewWriter(c, flate.DefaultCompression) // the level is valid
	return &deflateConn{Conn: c, r: flate.NewReader(countingReader{c, wire}), w: w}
}

func (c *deflateConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *deflateConn) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err == nil {
		err = c.w.Flush() // RFC 4978 §4: a sync flush ends each command
	}
	return n, err
}

// countingReader counts the bytes that came off the wire.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// literalOf returns the first literal in an IMAP response as Response
// returns it ("... {N}\r\n" then N octets).
func literalOf(t testing.TB, resp string) []byte {
	t.Helper()
	m := regexp.MustCompile(`\{(\d+)\}\r\n`).FindStringSubmatchIndex(resp)
	if m == nil {
		t.Fatalf("no literal in %.200q", resp)
	}
	n, _ := strconv.Atoi(resp[m[2]:m[3]])
	if m[1]+n > len(resp) {
		t.Fatalf("literal of %d octets cut short in %.200q", n, resp)
	}
	return []byte(resp[m[1] : m[1]+n])
}

// TestCompressDeflateThroughRelay: Dovecot with imap_zlib offers
// COMPRESS=DEFLATE after login; a client that negotiates it through
// mailgate (cleartext splice path and implicit-TLS front) fetches messages
// byte for byte over the compressed streams, decoding with compress/flate.
func TestCompressDeflateThroughRelay(t *testing.T) {
	t.Parallel()
	zdc := dovecot.StartForTest(t, dovecot.Options{Compress: true})
	cert, key := harness.LeafFiles(t, t.TempDir())
	g := harness.Start(t, fmt.Sprintf(`log: {level: debug, format: json}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
  - {name: imap-clear, protocol: imap, address: "127.0.0.1:0", tls: none, allow_plaintext_auth: true}
backends:
  zlib: {address: %q, tls: none}
routing: {default: zlib}
limits: {per_ip: 10000, auth_failure_delay: 1ms}
`, cert, key, zdc.IMAPAddr))

	user, pass := "zlib@plain.test", "pw-"+randomHex(t, 12)
	harness.Secret(pass)
	if err := zdc.AddUser(user, pass); err != nil {
		t.Fatal(err)
	}
	// A compressible message large enough for several DEFLATE blocks and
	// socket reads, and a small one.
	big := message("zlib-big", strings.Repeat("The quick brown fox jumps over the lazy dog, line after line.\r\n", 8000))
	small := message("zlib-small", "short\r\n")
	msgs := [][]byte{big, small}
	uids, err := zdc.Append(user, pass, "INBOX", msgs...)
	if err != nil {
		t.Fatal(err)
	}

	for _, listener := range []string{"imap-clear", "imaps"} {
		t.Run(listener, func(t *testing.T) {
			var c *rawClient
			if listener == "imaps" {
				c = dialRawTLS(t, g.Addr(listener))
			} else {
				c = dialRaw(t, g.Addr(listener))
			}
			_, st := c.Tagged("a", "LOGIN "+transcript.QuoteIMAP(user)+" "+transcript.QuoteIMAP(pass))
			if !strings.HasPrefix(st, "a OK") {
				t.Fatalf("LOGIN: %q", st)
			}
			caps := capsOf(st)
			if caps == nil {
				untagged, _ := c.Tagged("b", "CAPABILITY")
				caps = capsOf(strings.Join(untagged, " "))
			}
			if !hasCap(caps, "COMPRESS=DEFLATE") {
				t.Fatalf("Dovecot with imap_zlib, through mailgate, offers no COMPRESS=DEFLATE: %v", caps)
			}
			if _, st := c.Tagged("z", "COMPRESS DEFLATE"); !strings.HasPrefix(st, "z OK") {
				t.Fatalf("COMPRESS DEFLATE: %q", st)
			}
			if n := c.Reader().Buffered(); n != 0 {
				t.Fatalf("%d bytes after the COMPRESS OK before anything was asked", n)
			}
			var wire atomic.Int64
			zc := transcript.New(t, newDeflateConn(c.NetConn(), &wire))
			zc.Timeout = ioTimeout

			if _, st := zc.Tagged("s", "SELECT INBOX"); !strings.HasPrefix(st, "s OK") {
				t.Fatalf("SELECT over DEFLATE: %q", st)
			}
			var plain int
			for i, uid := range uids {
				tag := fmt.Sprintf("f%d", i)
				untagged, st := zc.Tagged(tag, fmt.Sprintf("UID FETCH %d BODY.PEEK[]", uid))
				if !strings.HasPrefix(st, tag+" OK") || len(untagged) != 1 {
					t.Fatalf("UID FETCH %d over DEFLATE: %q after %d responses", uid, st, len(untagged))
				}
				body := literalOf(t, untagged[0])
				if ok, where := dovecot.Equal(body, msgs[i]); !ok {
					t.Fatalf("UID %d over DEFLATE: body differs from what was stored: %s", uid, where)
				}
				plain += len(untagged[0])
			}
			if w := wire.Load(); w*4 > int64(plain) {
				t.Errorf("%d octets on the wire for %d of responses: the backend's stream was not compressed", w, plain)
			}
			if _, st := zc.Tagged("n", "NOOP"); !strings.HasPrefix(st, "n OK") {
				t.Fatalf("NOOP over DEFLATE: %q", st)
			}
			zc.Tagged("l", "LOGOUT")
			zc.ExpectClosed()
		})
	}
}

// TestPipelinedTrafficThroughRelay: in the manner of imaptest, a client
// sends its LOGIN and a long burst of commands in one go, never waiting for
// a reply: FETCHes of bodies, NOOPs, STATUS and APPENDs with non-synchronizing
// literals (RFC 7888), while it reads the answers concurrently. Every
// command gets its tagged OK, every body arrives byte for byte and every
// appended message is stored as sent, on the splice path and through TLS.
func TestPipelinedTrafficThroughRelay(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	for _, listener := range []string{"imap-clear", "imaps"} {
		t.Run(listener, func(t *testing.T) {
			t.Parallel()
			a := newAccount(t, domPlain)
			msgs := [][]byte{
				message("pipe-1", "one\r\n"),
				message("pipe-2", strings.Repeat("a body line of the second message\r\n", 2000)),
				message("pipe-3", strings.Repeat("x", 900)+"\r\n"),
			}
			uids := seed(t, a, "INBOX", msgs...)
			var c *rawClient
			if listener == "imaps" {
				c = dialRawTLS(t, g.Addr(listener))
			} else {
				c = dialRaw(t, g.Addr(listener))
			}

			var burst bytes.Buffer
			var tags []string
			add := func(tag, cmd string) {
				tags = append(tags, tag)
				burst.WriteString(tag + " " + cmd + "\r\n")
			}
			add("a", "LOGIN "+transcript.QuoteIMAP(a.User)+" "+transcript.QuoteIMAP(a.Pass))
			add("s", "SELECT INBOX")
			var appended [][]byte
			for i := range 40 {
				uid := uids[i%len(uids)]
				add(fmt.Sprintf("f%d", i), fmt.Sprintf("UID FETCH %d BODY.PEEK[]", uid))
				switch i % 4 {
				case 0:
					add(fmt.Sprintf("n%d", i), "NOOP")
				case 1:
					add(fmt.Sprintf("t%d", i), "STATUS INBOX (MESSAGES UIDNEXT)")
				case 2:
					m := message(fmt.Sprintf("pipe-appended-%d", i), strings.Repeat("appended in a burst\r\n", 10*i))
					appended = append(appended, m)
					tags = append(tags, fmt.Sprintf("p%d", i))
					fmt.Fprintf(&burst, "p%d APPEND INBOX {%d+}\r\n%s\r\n", i, len(m), m)
				}
			}
			add("z", "LOGOUT")

			sent := make(chan error, 1)
			go func() {
				_, err := c.NetConn().Write(burst.Bytes())
				sent <- err
			}()
			status := map[string]string{}
			bodies := map[string][]byte{}
			for len(status) < len(tags) {
				resp := c.Response()
				tag, rest, _ := strings.Cut(resp, " ")
				switch {
				case tag == "*" && strings.Contains(rest, "FETCH") && strings.Contains(rest, "BODY[]"):
					uid := regexp.MustCompile(`UID (\d+)`).FindStringSubmatch(rest)
					if uid == nil {
						t.Fatalf("FETCH response without UID: %.200q", resp)
					}
					bodies[fmt.Sprintf("%s/%d", uid[1], len(bodies))] = literalOf(t, resp)
				case tag == "*" || tag == "+":
				default:
					status[tag] = rest
				}
			}
			if err := <-sent; err != nil {
				t.Fatalf("writing the burst: %v", err)
			}
			for _, tag := range tags {
				if !strings.HasPrefix(status[tag], "OK") {
					t.Errorf("%s: %q", tag, status[tag])
				}
			}
			if len(bodies) != 40 {
				t.Fatalf("%d bodies fetched, want 40", len(bodies))
			}
			byUID := map[string][]byte{}
			for i, u := range uids {
				byUID[strconv.Itoa(int(u))] = msgs[i]
			}
			for k, b := range bodies {
				uid, _, _ := strings.Cut(k, "/")
				if ok, where := dovecot.Equal(b, byUID[uid]); !ok {
					t.Errorf("UID %s: fetched body differs: %s", uid, where)
				}
			}
			c.ExpectClosed()
			st := state(t, a, "INBOX")
			if len(st.Messages) != len(msgs)+len(appended) {
				t.Fatalf("INBOX has %d messages, want %d", len(st.Messages), len(msgs)+len(appended))
			}
			for i, m := range appended {
				if ok, where := dovecot.Equal(st.Messages[len(msgs)+i].Body, m); !ok {
					t.Errorf("appended message %d differs: %s", i, where)
				}
			}
		})
	}
}
