package imap

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"mailgate/gateway/internal/connlog"
	"mailgate/test/transcript"
)

// TestMaximalIDAccepted: RFC 2971's largest ID (30 pairs, 30-octet keys,
// 1024-octet values), as one line of quoted strings with every octet
// escaped, as LITERAL+ and as synchronizing literals, is answered OK, and
// the session goes on (finding 8 of issue 11: it was "* BYE Command too
// long").
func TestMaximalIDAccepted(t *testing.T) {
	b := newFakeBackend(nil)
	c := startPipe(t, testConfig(t, b))
	c.Expect("* OK")

	var q strings.Builder
	q.WriteString("q ID (")
	for i := range maxIDPairs {
		if i > 0 {
			q.WriteByte(' ')
		}
		q.WriteString(transcript.QuoteIMAP(transcript.MaximalIDKey(i)) + " " + transcript.QuoteIMAP(transcript.MaximalIDValue()))
	}
	q.WriteString(")")
	if n := len(q.String()); n <= 16<<10 || n > maxLine {
		t.Fatalf("quoted ID of %d octets: want over the old 16 KiB cap and within maxLine %d", n, maxLine)
	}
	c.Send(q.String())
	c.Expect(`* ID ("name" "mailgate")`)
	c.Expect("q OK ID completed")

	// LITERAL+: the whole command at once.
	var l strings.Builder
	l.WriteString("l ID (")
	for i := range maxIDPairs {
		if i > 0 {
			l.WriteByte(' ')
		}
		k, v := transcript.MaximalIDKey(i), transcript.MaximalIDValue()
		l.WriteString("{" + strconv.Itoa(len(k)) + "+}\r\n" + k + " {" + strconv.Itoa(len(v)) + "+}\r\n" + v)
	}
	l.WriteString(")\r\n")
	c.SendRaw(l.String())
	c.Expect(`* ID ("name" "mailgate")`)
	c.Expect("l OK ID completed")

	// Synchronizing literals: one continuation request per literal.
	c.SendRaw("s ID (")
	for i := range maxIDPairs {
		sep := " "
		if i == 0 {
			sep = ""
		}
		k, v := transcript.MaximalIDKey(i), transcript.MaximalIDValue()
		c.SendRaw(sep + "{" + strconv.Itoa(len(k)) + "}\r\n")
		c.Expect("+ ")
		c.SendRaw(k + " {" + strconv.Itoa(len(v)) + "}\r\n")
		c.Expect("+ ")
		c.SendRaw(v)
	}
	c.SendRaw(")\r\n")
	c.Expect(`* ID ("name" "mailgate")`)
	c.Expect("s OK ID completed")

	c.Send("a LOGIN alice secret")
	c.Expect("a OK")
	if len(b.logins) != 1 {
		t.Fatalf("backend saw %d logins, want 1", len(b.logins))
	}
}

// TestOverlongIDStillBounded: one line past maxLine still ends the session.
func TestOverlongIDStillBounded(t *testing.T) {
	c := startPipe(t, testConfig(t, newFakeBackend(nil)))
	c.Expect("* OK")
	go c.NetConn().Write([]byte("a ID (\"k\" \"" + strings.Repeat("v", maxLine) + "\")\r\n"))
	c.Expect("* BYE Command too long")
	c.ExpectClosed()
}

// TestLongUserNameRefusedLocally: a user name over 255 octets (LOGIN quoted
// and as a literal, AUTHENTICATE PLAIN and LOGIN) is answered as a wrong
// password without reaching the Backend, and counts as a failure of the
// connection (issue 11, finding 5).
func TestLongUserNameRefusedLocally(t *testing.T) {
	b := newFakeBackend(nil)
	cfg := testConfig(t, b)
	cfg.BadCommandLimit = 4
	c := startPipe(t, cfg)
	c.Expect("* OK")
	long := strings.Repeat("u", 256)
	c.Send("a LOGIN " + long + " secret")
	c.Expect("a NO [AUTHENTICATIONFAILED]")
	c.SendRaw("b LOGIN {8000+}\r\n" + strings.Repeat("x", 8000) + " secret\r\n")
	c.Expect("b NO [AUTHENTICATIONFAILED]")
	c.Send("c AUTHENTICATE PLAIN " + b64("\x00"+long+"\x00secret"))
	c.Expect("c NO [AUTHENTICATIONFAILED]")
	c.Send("d AUTHENTICATE LOGIN")
	c.Expect("+ ")
	c.Send(b64(long))
	c.Expect("+ ")
	c.Send(b64("secret"))
	c.Expect("d NO [AUTHENTICATIONFAILED]")
	c.Expect("* BYE Too many invalid commands")
	c.ExpectClosed()
	select {
	case l := <-b.logins:
		t.Fatalf("a %d-octet user name reached the backend", len(l.User))
	default:
	}

	// 255 octets is still a user name.
	c = startPipe(t, testConfig(t, b))
	c.Expect("* OK")
	c.Send("a LOGIN " + strings.Repeat("u", 255) + " secret")
	c.Expect("a OK")
	if l := <-b.logins; len(l.User) != 255 {
		t.Fatalf("backend got a %d-octet name", len(l.User))
	}
}

// TestHTTPRequestEndsConnection: an HTTP request line as a pre-auth command
// closes the connection at once, unanswered, logged with result
// protocol_mismatch (issue 11, finding 10: ALPACA).
func TestHTTPRequestEndsConnection(t *testing.T) {
	for _, line := range []string{"GET / HTTP/1.1", "POST /login HTTP/1.1", "HEAD ", "CONNECT mail.example.org:443 HTTP/1.1", "OPTIONS * HTTP/1.1", "PUT /x HTTP/1.1"} {
		t.Run(line, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			cfg := testConfig(t, newFakeBackend(nil))
			cfg.Logger = zap.New(core)
			c := startPipe(t, cfg)
			c.Expect("* OK")
			c.Send("a NOOP")
			c.Expect("a OK")
			go c.NetConn().Write([]byte(line + "\r\nHost: mail.example.org\r\n\r\n"))
			c.ExpectClosed()
			deadline := time.Now().Add(5 * time.Second)
			for logs.FilterMessage("session end").Len() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if ends := logs.FilterMessage("session end"); ends.Len() != 1 || ends.FilterField(connlog.ProtocolMismatch.Field()).Len() != 1 {
				t.Fatalf("session end lines %v, want one with result %s", ends.All(), connlog.ProtocolMismatch)
			}
		})
	}
	// An IMAP tag that only starts like a method is IMAP.
	c := startPipe(t, testConfig(t, newFakeBackend(nil)))
	c.Expect("* OK")
	c.Send("GETX NOOP")
	c.Expect("GETX OK")
}
