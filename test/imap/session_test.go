package imape2e

// A logged-in session through mailgate is Dovecot's own: these tests log in
// every way a client can and then use the mailbox commands that only work
// when bytes pass through untouched (literals both ways, IDLE, MOVE).

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
)

// fetchBodies fetches BODY.PEEK[] of uids and returns them by UID.
func fetchBodies(t testing.TB, c *imapclient.Client, uids ...uint32) map[uint32][]byte {
	t.Helper()
	set := imap.UIDSet{}
	for _, u := range uids {
		set.AddNum(imap.UID(u))
	}
	sec := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
	if err != nil {
		t.Fatalf("UID FETCH BODY.PEEK[]: %v", err)
	}
	got := make(map[uint32][]byte)
	for _, m := range msgs {
		got[uint32(m.UID)] = m.FindBodySection(sec)
	}
	return got
}

func wantBodies(t testing.TB, got map[uint32][]byte, uids []uint32, msgs [][]byte) {
	t.Helper()
	if len(got) != len(uids) {
		t.Fatalf("fetched %d messages, want %d", len(got), len(uids))
	}
	for i, u := range uids {
		if ok, where := dovecot.Equal(got[u], msgs[i]); !ok {
			t.Errorf("UID %d: body differs from what was stored: %s", u, where)
		}
	}
}

// TestStartTLSThenLogin: go-imap's client upgrades with STARTTLS, logs in and
// from then on talks to Dovecot.
func TestStartTLSThenLogin(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	msgs := [][]byte{message("starttls-1", "first\r\n"), message("starttls-2", "second\r\n")}
	uids := seed(t, a, "INBOX", msgs...)

	c := dialClientStartTLS(t, g.Addr("imap"), nil)
	if err := c.Login(a.User, a.Pass).Wait(); err != nil {
		t.Fatalf("LOGIN after STARTTLS: %v", err)
	}
	// The capabilities after login are Dovecot's, not mailgate's pre-auth
	// list (which has neither IDLE nor MOVE).
	caps := c.Caps()
	for _, want := range []imap.Cap{imap.CapIdle, imap.CapMove, imap.CapUIDPlus} {
		if _, ok := caps[want]; !ok {
			t.Errorf("capabilities after login lack %s: %v", want, caps)
		}
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 2 {
		t.Errorf("SELECT: %d messages, want 2", sel.NumMessages)
	}
	wantBodies(t, fetchBodies(t, c, uids...), uids, msgs)
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// TestAuthenticatePlainSASLIR: AUTHENTICATE PLAIN with the initial response
// on the command line (RFC 4959) logs in without a continuation round trip,
// and the tagged OK carries the backend's capabilities.
func TestAuthenticatePlainSASLIR(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + a.User + "\x00" + a.Pass))

	t.Run("raw over implicit TLS", func(t *testing.T) {
		c := dialRawTLS(t, g.Addr("imaps"))
		caps := capsOf(c.Greeting)
		for _, want := range []string{"SASL-IR", "AUTH=PLAIN"} {
			if !hasCap(caps, want) {
				t.Errorf("greeting over TLS lacks %s: %q", want, c.Greeting)
			}
		}
		if hasCap(caps, "LOGINDISABLED") || hasCap(caps, "STARTTLS") {
			t.Errorf("greeting over implicit TLS offers LOGINDISABLED or STARTTLS: %q", c.Greeting)
		}
		untagged, st := c.Tagged("a1", "AUTHENTICATE PLAIN "+ir)
		for _, l := range untagged {
			if strings.HasPrefix(l, "+") {
				t.Errorf("continuation request despite SASL-IR: %q", l)
			}
		}
		if !strings.HasPrefix(st, "a1 OK [CAPABILITY ") || !hasCap(capsOf(st), "IDLE") {
			t.Fatalf("AUTHENTICATE PLAIN: %q, want OK [CAPABILITY ...] with Dovecot's IDLE", st)
		}
		if _, st := c.Tagged("a2", "SELECT INBOX"); !strings.HasPrefix(st, "a2 OK") {
			t.Fatalf("SELECT: %q", st)
		}
		c.Tagged("a3", "LOGOUT")
	})

	t.Run("raw without initial response", func(t *testing.T) {
		c := dialRawTLS(t, g.Addr("imaps"))
		c.Send("b1 AUTHENTICATE PLAIN")
		if l := c.Response(); l != "+ " && l != "+" {
			t.Fatalf("want an empty continuation request, got %q", l)
		}
		c.Send(ir)
		if _, st := c.Until("b1"); !strings.HasPrefix(st, "b1 OK") {
			t.Fatalf("AUTHENTICATE PLAIN: %q", st)
		}
	})

	t.Run("imapclient", func(t *testing.T) {
		c, err := imapclient.DialTLS(g.Addr("imaps"), &imapclient.Options{
			TLSConfig: harness.ClientTLS(t), Dialer: &net.Dialer{Timeout: ioTimeout}})
		if err != nil {
			t.Fatal(err)
		}
		c = newClient(t, c)
		if err := c.Authenticate(sasl.NewPlainClient("", a.User, a.Pass)); err != nil {
			t.Fatalf("AUTHENTICATE PLAIN: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		if err := c.Logout().Wait(); err != nil {
			t.Errorf("LOGOUT: %v", err)
		}
	})
}

// TestWrongPassword: every way of presenting bad credentials gets
// NO [AUTHENTICATIONFAILED] (RFC 5530), and the connection may try again,
// up to limits.preauth_bad_commands (3) failures, at which it ends.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	wrong := "wrong-" + randomHex(t, 8)
	harness.Secret(wrong)
	c := dialRaw(t, g.Addr("imap-clear"))
	c2 := dialRaw(t, g.Addr("imap-clear"))

	for i, try := range []struct {
		c   *rawClient
		cmd string
	}{
		{c, fmt.Sprintf("LOGIN %q %q", a.User, wrong)},
		{c, "AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+a.User+"\x00"+wrong))},
		{c2, fmt.Sprintf("LOGIN %q %q", "nobody-"+randomHex(t, 4)+"@"+domPlain, a.Pass)},
		{c2, fmt.Sprintf("LOGIN %q %q", a.User, wrong)},
		{c2, fmt.Sprintf("LOGIN %q %q", a.User, wrong)},
	} {
		tag := fmt.Sprintf("w%d", i)
		_, st := try.c.Tagged(tag, try.cmd)
		if !strings.HasPrefix(st, tag+" NO [AUTHENTICATIONFAILED]") {
			t.Errorf("%s: %q, want NO [AUTHENTICATIONFAILED]", strings.Fields(try.cmd)[0], st)
		}
	}
	c2.Expect("* BYE Too many invalid commands")
	c2.ExpectClosed()
	if _, st := c.Tagged("ok", fmt.Sprintf("LOGIN %q %q", a.User, a.Pass)); !strings.HasPrefix(st, "ok OK") {
		t.Fatalf("the right password after two wrong ones: %q", st)
	}
	if !logHas(g, `"msg":"login failed"`, a.User) {
		t.Errorf("no \"login failed\" log entry (fail2ban's line) for %s", a.User)
	}
}

// TestMailboxSession runs a client's working session through both relay
// paths: cleartext to cleartext (the kernel's splice) and TLS to cleartext
// (the buffered copy).
func TestMailboxSession(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	for _, listener := range []string{"imap-clear", "imaps"} {
		t.Run(listener, func(t *testing.T) {
			t.Parallel()
			mailboxSession(t, g, listener)
		})
	}
}

func mailboxSession(t *testing.T, g *harness.Gateway, listener string) {
	a := newAccount(t, domPlain)
	msgs := [][]byte{message("session-1", "one\r\n"), message("session-2", strings.Repeat("a line of the body\r\n", 3000))}
	uids := seed(t, a, "INBOX", msgs...)

	// EXISTS counts the client receives outside of command replies.
	exists := make(chan uint32, 64)
	opts := &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				select {
				case exists <- *d.NumMessages:
				default:
				}
			}
		},
	}}
	var c *imapclient.Client
	if listener == "imaps" {
		opts.TLSConfig = harness.ClientTLS(t)
		opts.Dialer = &net.Dialer{Timeout: ioTimeout}
		var err error
		if c, err = imapclient.DialTLS(g.Addr(listener), opts); err != nil {
			t.Fatal(err)
		}
		c = newClient(t, c)
	} else {
		c = dialClientPlain(t, g.Addr(listener), opts)
	}
	if err := c.Login(a.User, a.Pass).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}

	// SELECT and FETCH: the bodies, a 60 KB literal among them, arrive intact.
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 2 {
		t.Fatalf("SELECT: %d messages, want 2", sel.NumMessages)
	}
	wantBodies(t, fetchBodies(t, c, uids...), uids, msgs)

	// APPEND with a literal from the client to the backend.
	appended := message("session-appended", "appended through mailgate\r\n")
	app := c.Append("INBOX", int64(len(appended)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	if _, err := app.Write(appended); err != nil {
		t.Fatal(err)
	}
	if err := app.Close(); err != nil {
		t.Fatal(err)
	}
	ad, err := app.Wait()
	if err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	st := state(t, a, "INBOX")
	if m, ok := st.Message(uint32(ad.UID)); !ok || !bytes.Equal(m.Body, appended) || !m.Has(imap.FlagSeen) {
		t.Fatalf("APPENDUID %d: Dovecot has %+v, want the appended bytes with \\Seen", ad.UID, m)
	}

	// IDLE: mail delivered by another client shows up as EXISTS.
	for len(exists) > 0 {
		<-exists
	}
	want := c.Mailbox().NumMessages + 1
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	seed(t, a, "INBOX", message("session-idle", "arrived during IDLE\r\n"))
	timeout := time.After(15 * time.Second)
	for got := uint32(0); got < want; {
		select {
		case got = <-exists:
		case <-timeout:
			t.Fatalf("no EXISTS %d within 15s of a delivery during IDLE", want)
		}
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE ended with %v", err)
	}

	// MOVE (RFC 6851) to another mailbox.
	if err := c.Create("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	md, err := c.Move(imap.UIDSetNum(imap.UID(uids[0])), "Archive").Wait()
	if err != nil {
		t.Fatalf("MOVE: %v", err)
	}
	if md.DestUIDs == nil {
		t.Errorf("MOVE gave no COPYUID: did the client fall back to COPY?")
	}
	if _, ok := state(t, a, "INBOX").Message(uids[0]); ok {
		t.Errorf("UID %d is still in INBOX after MOVE", uids[0])
	}
	arch := state(t, a, "Archive")
	if len(arch.Messages) != 1 || !bytes.Equal(arch.Messages[0].Body, msgs[0]) {
		t.Errorf("Archive after MOVE: %d messages, want the moved one", len(arch.Messages))
	}

	// LOGOUT: Dovecot says BYE and closes; mailgate closes the client too.
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	select {
	case <-c.Closed():
	case <-time.After(5 * time.Second):
		t.Errorf("connection still open 5s after LOGOUT")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !logHas(g, `"msg":"session end"`, a.User, `"bytes_to_client"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no session end log entry for %s", a.User)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAppendSynchronizingLiteral: the client's "{n}" waits for Dovecot's
// continuation request, which must come back through the relay.
func TestAppendSynchronizingLiteral(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	c := dialRaw(t, g.Addr("imap-clear"))
	if _, st := c.Tagged("l", fmt.Sprintf("LOGIN %q %q", a.User, a.Pass)); !strings.HasPrefix(st, "l OK") {
		t.Fatalf("LOGIN: %q", st)
	}
	msg := message("sync-literal", "sent after the continuation request\r\n")
	c.SendRaw(fmt.Sprintf("ap APPEND INBOX (\\Flagged) {%d}\r\n", len(msg)))
	if l := c.Response(); !strings.HasPrefix(l, "+") {
		t.Fatalf("want a continuation request for the literal, got %q", l)
	}
	c.Send(string(msg))
	_, st := c.Until("ap")
	if !strings.HasPrefix(st, "ap OK [APPENDUID ") {
		t.Fatalf("APPEND: %q", st)
	}
	var validity, uid uint32
	if _, err := fmt.Sscanf(st, "ap OK [APPENDUID %d %d]", &validity, &uid); err != nil {
		t.Fatalf("APPENDUID in %q: %v", st, err)
	}
	m, ok := state(t, a, "INBOX").Message(uid)
	if !ok || !bytes.Equal(m.Body, msg) || !m.Has(imap.FlagFlagged) {
		t.Fatalf("Dovecot has %+v for UID %d, want the literal's bytes, \\Flagged", m, uid)
	}
	// FETCH the other way: a literal from Dovecot, byte for byte.
	c.Tagged("s", "SELECT INBOX")
	untagged, st := c.Tagged("f", fmt.Sprintf("UID FETCH %d BODY.PEEK[]", uid))
	if !strings.HasPrefix(st, "f OK") || len(untagged) != 1 || !strings.Contains(untagged[0], "\r\n"+string(msg)+")") {
		t.Fatalf("UID FETCH: %q %q", untagged, st)
	}
}

// TestLoginStringForms: LOGIN with an atom, quoted strings with escapes,
// synchronizing literals (mailgate's own continuation requests) and
// non-synchronizing ones (RFC 7888), with passwords that need them.
func TestLoginStringForms(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gwOptions{})
	d := backend(t)
	special := account{User: fmt.Sprintf("u%d@%s", userSeq.Add(1), domPlain),
		Pass: `p "w\ ` + randomHex(t, 8) + ` ünïcode`}
	harness.Secret(special.Pass)
	if err := d.AddUser(special.User, special.Pass); err != nil {
		t.Fatal(err)
	}
	quoted := func(s string) string {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
	}
	ascii := newAccount(t, domPlain)

	for _, tc := range []struct {
		name string
		a    account
		// steps are sent one by one; each but the last must be answered by
		// a continuation request.
		steps []string
	}{
		{"atom and quoted", ascii, []string{"t LOGIN " + ascii.User + " " + quoted(ascii.Pass) + "\r\n"}},
		{"synchronizing literals", special, []string{
			fmt.Sprintf("t LOGIN {%d}\r\n", len(special.User)),
			fmt.Sprintf("%s {%d}\r\n", special.User, len(special.Pass)),
			special.Pass + "\r\n"}},
		{"non-synchronizing literals", special, []string{
			fmt.Sprintf("t LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n", len(special.User), special.User, len(special.Pass), special.Pass)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, g.Addr("imap-clear"))
			for i, s := range tc.steps {
				c.SendRaw(s)
				if i < len(tc.steps)-1 {
					if l := c.Response(); !strings.HasPrefix(l, "+") {
						t.Fatalf("step %d: want a continuation request, got %q", i, l)
					}
				}
			}
			if _, st := c.Until("t"); !strings.HasPrefix(st, "t OK") {
				t.Fatalf("LOGIN: %q", st)
			}
			if _, st := c.Tagged("s", "SELECT INBOX"); !strings.HasPrefix(st, "s OK") {
				t.Fatalf("SELECT: %q", st)
			}
		})
	}
}
