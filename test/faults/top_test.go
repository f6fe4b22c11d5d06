package faults

import (
	"bytes"
	"strings"
	"testing"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

// TestTopMovesWhatTopNeedsAgainstDovecot: TOP n 0 of a 10 MB message moves
// at most a few KB from Dovecot (counted by the proxy between the gateway
// and Dovecot), TOP n k little more, and every TOP is RETR's bytes cut at
// the k-th line (RFC 1939 §7), also for the edges: k beyond the body, a body
// without a final CRLF, lines starting with ".", a header with no body, a
// header with no blank line after it. The cache is on (the default): a
// partial body never enters it, so RETR after TOP moves the whole message.
func TestTopMovesWhatTopNeedsAgainstDovecot(t *testing.T) {
	dc := dovecotServer(t)
	a := newAccount(t)
	var big bytes.Buffer
	big.WriteString("From: faults@test\r\nTo: user@test\r\nSubject: ten megabytes\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	line := strings.Repeat("QUJD", 19) + "\r\n"
	for big.Len() < 10<<20 {
		big.WriteString(line)
	}
	msgs := [][]byte{
		big.Bytes(),
		message("dots", 40<<10),
		[]byte("Subject: no final CRLF\r\n\r\n" + strings.Repeat("a line of text\r\n", 900) + "the last line"),
		[]byte("Subject: header only\r\nX-Pad: " + strings.Repeat("p", 9000) + "\r\n\r\n"),
		[]byte("Subject: no blank line\r\nX-Pad: " + strings.Repeat("q", 9000) + "\r\n"),
		[]byte("Subject: long lines\r\n\r\n" + strings.Repeat(strings.Repeat("z", 5000)+"\r\n", 12)),
	}
	if _, err := dc.Append(a.User, a.Pass, "INBOX", msgs...); err != nil {
		t.Fatal(err)
	}
	p := Listen(t, dc.IMAPAddr)
	g := harness.Start(t, gatewayYAML(p.Addr(), "{fetch_ahead: 0B}"))
	c := dialPOP3(t, g.Addr("pop3"), a, 0)
	defer c.Close()

	for _, k := range []int{0, 10} {
		before := p.Moved(Downstream)
		top, err := c.Top(1, k)
		if err != nil {
			t.Fatal(err)
		}
		moved := p.Moved(Downstream) - before
		t.Logf("TOP 1 %d of a %d-byte message: %d bytes from Dovecot", k, big.Len(), moved)
		if moved > 8<<10 {
			t.Errorf("TOP 1 %d of a 10 MB message moved %d bytes from Dovecot, want a few KB", k, moved)
		}
		if want := pop3client.TopOf(big.Bytes(), k); !bytes.Equal(top, want) {
			_, where := dovecot.Equal(top, want)
			t.Errorf("TOP 1 %d: %s", k, where)
		}
	}
	for n := 2; n <= len(msgs); n++ {
		var tops [][]byte
		ks := []int{0, 1, 2, 7, 100, 5000}
		for _, k := range ks {
			top, err := c.Top(n, k)
			if err != nil {
				t.Fatalf("TOP %d %d: %v", n, k, err)
			}
			tops = append(tops, top)
		}
		retr, err := c.Retr(n)
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range ks {
			if want := pop3client.TopOf(retr, k); !bytes.Equal(tops[i], want) {
				_, where := dovecot.Equal(tops[i], want)
				t.Errorf("TOP %d %d is not RETR cut at line %d: %s", n, k, k, where)
			}
		}
	}
	before := p.Moved(Downstream)
	retr, err := c.Retr(1)
	if err != nil {
		t.Fatal(err)
	}
	if ok, where := dovecot.Equal(retr, big.Bytes()); !ok {
		t.Errorf("RETR 1: %s", where)
	}
	if moved := p.Moved(Downstream) - before; moved < int64(big.Len()) {
		t.Errorf("RETR 1 after TOP moved %d bytes, less than the message: a partial body was taken for it", moved)
	}
	harness.Quit(t, c)
}
