package hostile

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailgate/test/transcript"
)

func dialIMAP(t *testing.T, addr string) *transcript.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := transcript.New(t, conn)
	c.Timeout = 10 * time.Second
	c.Expect("* OK")
	return c
}

// TestMaximalIDBeforeLogin is finding 8 of the hostile internet issue end to
// end: the largest ID RFC 2971 allows (30 pairs, 30-octet keys, 1024-octet
// values), sent before login as Dovecot's compliance tester does, as quoted
// strings with every octet escaped (about 62 KiB on one line) and as
// literals, gets OK from mailgate in front of Dovecot, and the login after
// it works. Before the fix: "* BYE Command too long".
func TestMaximalIDBeforeLogin(t *testing.T) {
	e := start(t)
	value := transcript.MaximalIDValue()

	t.Run("quoted", func(t *testing.T) {
		c := dialIMAP(t, e.g.Addr("imap"))
		var q strings.Builder
		q.WriteString("i ID (")
		for i := range transcript.IDMaxPairs {
			if i > 0 {
				q.WriteByte(' ')
			}
			q.WriteString(transcript.QuoteIMAP(transcript.MaximalIDKey(i)) + " " + transcript.QuoteIMAP(value))
		}
		q.WriteString(")")
		c.Send(q.String())
		c.Expect("* ID ")
		c.Expect("i OK")
		login(t, c, e)
	})
	t.Run("literals", func(t *testing.T) {
		c := dialIMAP(t, e.g.Addr("imap"))
		c.SendRaw("i ID (")
		for i := range transcript.IDMaxPairs {
			sep := " "
			if i == 0 {
				sep = ""
			}
			k := transcript.MaximalIDKey(i)
			c.SendRaw(sep + "{" + strconv.Itoa(len(k)) + "}\r\n")
			c.Expect("+ ")
			c.SendRaw(k + " {" + strconv.Itoa(len(value)) + "}\r\n")
			c.Expect("+ ")
			c.SendRaw(value)
		}
		c.SendRaw(")\r\n")
		c.Expect("* ID ")
		c.Expect("i OK")
		login(t, c, e)
	})
}

// login logs e's user in on c, selects INBOX and logs out.
func login(t *testing.T, c *transcript.Conn, e *env) {
	t.Helper()
	c.Send(fmt.Sprintf("a LOGIN %q %q", e.user, e.pass))
	if _, status := c.Until("a"); !strings.HasPrefix(status, "a OK") {
		t.Fatalf("login after a maximal ID: %q", status)
	}
	c.Send("b SELECT INBOX")
	untagged, status := c.Until("b")
	if !strings.HasPrefix(status, "b OK") || !strings.Contains(strings.Join(untagged, "\n"), "2 EXISTS") {
		t.Fatalf("SELECT after a maximal ID: %q %q", untagged, status)
	}
	c.Send("c LOGOUT")
	c.Until("c")
}
