package hostile

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/harness"
)

func tlsDial(t *testing.T, d *net.Dialer, addr string) (net.Conn, error) {
	return tls.DialWithDialer(d, "tcp", addr, harness.ClientTLS(t))
}

// dialMany opens n connections to addr, all from this process.
func dialMany(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d of %d to %s: %v", len(conns)+1, n, addr, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// TestSlowloris: clients that send a command one byte a second. On the IMAP
// listener the pre-auth timeout cuts them (imap_preauth, 2s here); POP3's
// idle timeout must be at least 10 minutes (RFC 1939 §3), so there the test
// asserts that the trickle costs little and disturbs nobody, then hangs up.
func TestSlowloris(t *testing.T) {
	e := start(t)
	const perListener = 20
	before := heapInuse()
	type victim struct {
		conn  net.Conn
		imap  bool
		began time.Time
	}
	var vs []victim
	for _, l := range []string{"pop3", "imap"} {
		for _, c := range dialMany(t, e.g.Addr(l), perListener) {
			vs = append(vs, victim{conn: c, imap: l == "imap", began: time.Now()})
		}
	}
	// One byte a second for four seconds, on every connection at once.
	line := []byte("a1 LOGIN slow")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, v := range vs {
		wg.Go(func() {
			for i := 0; i < 4 && i < len(line); i++ {
				if _, err := v.conn.Write(line[i : i+1]); err != nil {
					return // cut by the gateway
				}
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	e.probeAll(t)
	wg.Wait()
	close(stop)
	checkHeap(t, "40 slowloris clients", before)
	// IMAP: cut by the pre-auth timeout, counted from the connect.
	for _, v := range vs {
		if !v.imap {
			continue
		}
		left := max(0, imapPreauth+slack-time.Since(v.began))
		waitClosed(t, v.conn, left+time.Millisecond)
	}
}

// TestLongLines: 1 MiB lines (no line end for a megabyte, then CRLF) are
// refused with an error, within a bounded heap, and the connection either
// stays usable or is closed; nobody else notices.
func TestLongLines(t *testing.T) {
	big := []byte(strings.Repeat("A", 1<<20) + "\r\n")
	start(t).attackEach(t, "sending 1 MiB lines", []string{"pop3", "imap"}, func(c net.Conn, l string) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		r.ReadString('\n') // greeting
		if _, err := c.Write(big); err != nil {
			return // closed mid-line: fine
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return // closed: fine
		}
		if !strings.HasPrefix(line, "-ERR") && !strings.Contains(line, " BAD") && !strings.Contains(line, " BYE") {
			t.Errorf("%s answered a 1 MiB line with %q", l, clip(line))
		}
	})
}

// attackEach runs attack on ten connections to each of listeners at once,
// with a normal client served on every listener meanwhile (probeAll), and
// checks that the heap grew by less than the budget.
func (e *env) attackEach(t *testing.T, what string, listeners []string, attack func(c net.Conn, listener string)) {
	t.Helper()
	const clients = 10
	before := heapInuse()
	var wg sync.WaitGroup
	for _, l := range listeners {
		for _, c := range dialMany(t, e.g.Addr(l), clients) {
			wg.Go(func() { attack(c, l) })
		}
	}
	time.Sleep(200 * time.Millisecond) // the attack under way
	e.probeAll(t)
	wg.Wait()
	checkHeap(t, fmt.Sprintf("%d clients %s", clients*len(listeners), what), before)
}

// TestBinaryJunk: random bytes (NULs, bare CRs, 8-bit) get errors and, after
// the bad-command limit, a closed connection, well before any timeout.
func TestBinaryJunk(t *testing.T) {
	start(t).attackEach(t, "sending binary junk", []string{"pop3", "imap", "pop3s", "imaps"}, func(c net.Conn, _ string) {
		junk := make([]byte, 64<<10)
		rand.Read(junk)
		// Some line ends, so that the junk is many bad commands.
		for i := 100; i < len(junk); i += 100 {
			junk[i] = '\n'
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Write(junk)
		// The gateway must hang up: bad commands on the cleartext
		// listeners, a failed handshake on the TLS ones.
		waitClosed(t, c, 10*time.Second)
	})
}

// TestHalfOpen: a thousand connections on each cleartext listener that
// connect and send nothing. The heap grows by less than the budget, normal
// clients are served meanwhile, and on IMAP the pre-auth timeout closes
// every one of them.
func TestHalfOpen(t *testing.T) {
	e := start(t)
	const n = 1000
	// Both ends of 2,000 connections live in this process, plus the
	// gateway's and Dovecot's own.
	raiseFileLimit(t, 2*2*n+1024)
	before := heapInuse()
	began := time.Now()
	pop := dialMany(t, e.g.Addr("pop3"), n)
	imap := dialMany(t, e.g.Addr("imap"), n)
	t.Logf("%d half-open connections in %v", 2*n, time.Since(began).Round(time.Millisecond))
	e.probeAll(t)
	checkHeap(t, "2,000 half-open connections", before)

	// IMAP: every one closed by the pre-auth timeout, counted from the
	// connect (the last connect came after the first by the dial time).
	var wg sync.WaitGroup
	deadline := began.Add(imapPreauth + slack + time.Since(began))
	for _, c := range imap {
		wg.Go(func() { waitClosed(t, c, max(time.Millisecond, time.Until(deadline))) })
	}
	wg.Wait()
	for _, c := range pop {
		c.Close()
	}
	// Once the attackers are gone, the gateway is as it was.
	e.probeAll(t)
}

// TestTLSHandshakeStall: on the implicit TLS listeners, clients send the
// start of a ClientHello and stall. The handshake timeout (2s here) closes
// them; normal TLS clients are served meanwhile.
func TestTLSHandshakeStall(t *testing.T) {
	e := start(t)
	const perListener = 100
	before := heapInuse()
	// A TLS record header announcing a 512-byte handshake message, and the
	// first bytes of a ClientHello: the server must wait for the rest.
	partial := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x11, 0x22, 0x33}
	var conns []net.Conn
	began := time.Now()
	for _, l := range []string{"pop3s", "imaps"} {
		for _, c := range dialMany(t, e.g.Addr(l), perListener) {
			if _, err := c.Write(partial); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	e.probeAll(t)
	checkHeap(t, "200 stalled TLS handshakes", before)
	deadline := began.Add(tlsHandshake + slack + time.Since(began))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { waitClosed(t, c, max(time.Millisecond, time.Until(deadline))) })
	}
	wg.Wait()
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
