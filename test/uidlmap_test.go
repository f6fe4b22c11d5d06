package test

// pop3.uidl_map end to end, against real Dovecots: UIDLs that survive a new
// UIDVALIDITY, a move to another backend, a restart, and an import from an
// old POP3 server.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailgate/gateway/config"
	"mailgate/test/dovecot"
	"mailgate/test/harness"
	"mailgate/test/pop3client"
)

func uidlMapPOP3(store string) string { return fmt.Sprintf("{uidl_map: {store: %q}}", store) }

// uidls lists the account's UIDLs through the gateway (a whole session,
// QUIT without DELE).
func (g *gw) uidls(a account) []string {
	g.t.Helper()
	return uidlsOf(g.t, g.loginEventually(a))
}

func uidlsOf(t testing.TB, c *pop3client.Client) []string {
	t.Helper()
	out, err := c.UIDLsQuit()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fetchmailKeep is fetchmail in keep mode with UIDL for one account.
type fetchmailKeep struct {
	t         *testing.T
	bin, home string
	mbox      string
	args      []string
	g         *gw
	a         account
}

func newFetchmailKeep(t *testing.T, g *gw, a account) *fetchmailKeep {
	fm := &fetchmailKeep{t: t, bin: harness.NeedProgram(t, "fetchmail"), home: t.TempDir(), g: g, a: a}
	fm.mbox = filepath.Join(fm.home, "delivered")
	host, port, _ := strings.Cut(g.Addr("pop3"), ":")
	rc := writeFile(t, fm.home, ".fetchmailrc", fmt.Sprintf(`set no syslog
set no bouncemail
poll %s with proto POP3 port %s uidl
  user "%s" there with password "%s" is root here
  options keep no rewrite sslproto ''
  mda "sh -c 'cat; echo ==END==' >> %s"
`, host, port, a.User, a.Pass, fm.mbox), 0o600)
	fm.args = []string{"-f", rc, "--idfile", filepath.Join(fm.home, ".fetchids"), "--nodetach", "--nosyslog", "-v"}
	return fm
}

// run runs fetchmail once and returns how many messages it delivered.
func (fm *fetchmailKeep) run() int {
	fm.t.Helper()
	before, _ := os.ReadFile(fm.mbox)
	out, errOut, err := run(fm.t, fm.home, fm.bin, fm.args...)
	after, _ := os.ReadFile(fm.mbox)
	n := strings.Count(string(after[len(before):]), "==END==")
	// Exit status 1 is fetchmail's "no mail".
	if err != nil && n > 0 || err != nil && !strings.Contains(err.Error(), "exit status 1") {
		fm.t.Fatalf("fetchmail: %v\n%s\n%s", err, out, errOut)
	}
	fm.g.loginEventually(fm.a).Quit() // its session has ended
	return n
}

// A new UIDVALIDITY on the backend (doveadm mailbox update --uid-validity):
// the UIDL list is the same, fetchmail --keep downloads nothing, a message
// added afterwards gets a new UIDL and is downloaded once; byte-identical
// duplicates keep distinct UIDLs; all of it survives a restart.
func TestUIDLMapSurvivesUIDVALIDITYChange(t *testing.T) {
	store := filepath.Join(t.TempDir(), "uidl.db")
	g := startGateway(t, gwOptions{POP3: uidlMapPOP3(store)})
	a := newAccount(t)
	fm := newFetchmailKeep(t, g, a)
	local := strings.SplitN(a.User, "@", 2)[0]
	dup := message("dup-"+local, "the same bytes twice\r\n")
	uids := seed(t, a, message("one-"+local, "1\r\n"), dup, dup, message("two-"+local, "2\r\n"))
	oldV := a.Inbox(t, false).UIDValidity

	before := g.uidls(a)
	// The first session shows uidl_format's UIDLs, as without the map.
	for i, uid := range uids {
		if want := fmt.Sprintf("%08x%08x", uid, oldV); before[i] != want {
			t.Fatalf("UIDL %d = %q, want %q (uidl_format's)", i+1, before[i], want)
		}
	}
	if n := fm.run(); n != 4 {
		t.Fatalf("first fetchmail run delivered %d, want 4", n)
	}

	if _, err := dovecotServer(t).Doveadm("mailbox", "update", "-u", a.User, "--uid-validity", strconv.FormatUint(uint64(oldV)+1000, 10), "INBOX"); err != nil {
		t.Fatal(err)
	}
	if v := a.Inbox(t, false).UIDValidity; v == oldV {
		t.Fatalf("UIDVALIDITY still %d after doveadm mailbox update", v)
	}
	if after := g.uidls(a); !slices.Equal(after, before) {
		t.Fatalf("UIDLs after the UIDVALIDITY change %q, want %q", after, before)
	}
	if n := fm.run(); n != 0 {
		t.Fatalf("fetchmail --keep downloaded %d messages again after the UIDVALIDITY change", n)
	}

	seed(t, a, message("three-"+local, "3\r\n"))
	withNew := g.uidls(a)
	if len(withNew) != 5 || !slices.Equal(withNew[:4], before) || slices.Contains(before, withNew[4]) {
		t.Fatalf("after a new message %q, want %q and a new UIDL", withNew, before)
	}
	if n := fm.run(); n != 1 {
		t.Fatalf("fetchmail delivered %d, want only the new message", n)
	}

	g.Restart()
	if again := g.uidls(a); !slices.Equal(again, withNew) {
		t.Fatalf("after a restart %q, want %q", again, withNew)
	}
}

// The user's messages copied byte for byte (message files only: new UIDs,
// a new UIDVALIDITY) to a second Dovecot that has one message of the user
// already, and routing moved there by a reload: the same UIDLs, each for the
// same message, and a new one for the message that was only there.
func TestUIDLMapFollowsUserToAnotherBackend(t *testing.T) {
	store := filepath.Join(t.TempDir(), "uidl.db")
	second := dovecot.StartForTest(t, dovecot.Options{})
	o := gwOptions{POP3: uidlMapPOP3(store), MoreBackends: fmt.Sprintf("  second: {address: %q, tls: none}\n", second.IMAPAddr)}
	g := startGateway(t, o)
	a := newAccount(t)
	if err := second.AddUser(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	local := strings.SplitN(a.User, "@", 2)[0]
	dup := message("dup-"+local, "twice\r\n")
	seed(t, a, message("a-"+local, "a\r\n"), dup, message("b-"+local, "b\r\n"), dup)

	c := g.loginEventually(a)
	before := uidlsBodies(t, c)
	// The second server has a message of its own already, so the copies
	// get other UIDs, and another UIDVALIDITY.
	extra := message("extra-"+local, "already there\r\n")
	if _, err := second.Append(a.User, a.Pass, "INBOX", extra); err != nil {
		t.Fatal(err)
	}
	oldV := a.Inbox(t, false).UIDValidity
	if _, err := second.Doveadm("mailbox", "update", "-u", a.User, "--uid-validity", strconv.FormatUint(uint64(oldV)+77, 10), "INBOX"); err != nil {
		t.Fatal(err)
	}
	if err := dovecotServer(t).CopyMessages(a.User, second); err != nil {
		t.Fatal(err)
	}
	o.Default = "second"
	cfg, err := config.Parse([]byte(gatewayYAML(t, o)))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	after := uidlsBodies(t, g.loginEventually(a))
	if !strings.Contains(g.Logs(), `"backend":"second"`) {
		t.Fatal("the session after the reload did not go to the second backend")
	}
	if len(after) != len(before)+1 {
		t.Fatalf("%d messages after the move, want %d", len(after), len(before)+1)
	}
	for u, body := range before {
		if after[u] != body {
			t.Errorf("UIDL %q: another message (or none) after the move", u)
		}
	}
	for u, body := range after {
		if _, ok := before[u]; !ok && body != string(expectRetr(extra)) {
			t.Errorf("new UIDL %q for a message that was there before the move", u)
		}
	}
}

// uidlsBodies lists UIDL -> message bytes in one session.
func uidlsBodies(t *testing.T, c *pop3client.Client) map[string]string {
	t.Helper()
	items, err := c.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, it := range items {
		b, err := c.Retr(it.N)
		if err != nil {
			t.Fatal(err)
		}
		out[it.UIDL] = string(b)
	}
	if len(out) != len(items) {
		t.Fatalf("UIDLs not unique: %v", items)
	}
	harness.Quit(t, c)
	return out
}

// mailgate uidl-import from Dovecot's own POP3 with another UIDL format
// (%v.%u): afterwards mailgate shows the old server's UIDLs for the same
// messages, duplicates included; uidl-stats counts them; uidl-drop forgets
// the user, who then sees uidl_format's UIDLs.
func TestUIDLImportFromDovecotPOP3(t *testing.T) {
	bin := harness.Binary(t)
	old := dovecot.StartForTest(t, dovecot.Options{POP3: true, POP3UIDLFormat: "%v.%u"})
	a := account{User: fmt.Sprintf("import-%d@e2e.test", userSeq.Add(1)), Pass: "pw-import-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	harness.Secret(a.Pass)
	if err := old.AddUser(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	dup := message("dup-import", "twice\r\n")
	if _, err := old.Append(a.User, a.Pass, "INBOX", message("x-import", "x\r\n"), dup, dup, message("y-import", "y\r\n")); err != nil {
		t.Fatal(err)
	}
	c, err := pop3client.Dial(old.POP3Addr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(a.User, a.Pass); err != nil {
		t.Fatal(err)
	}
	want := uidlsOf(t, c)
	if len(want) != 4 || !strings.Contains(want[0], ".") {
		t.Fatalf("Dovecot's POP3 UIDLs %q: want 4 in %%v.%%u", want)
	}

	dir := t.TempDir()
	store := filepath.Join(dir, "uidl.db")
	yaml := gatewayYAML(t, gwOptions{Backend: fmt.Sprintf("{address: %q, tls: none}", old.IMAPAddr), POP3: uidlMapPOP3(store)})
	cfgFile := writeFile(t, dir, "mailgate.yaml", yaml, 0o600)
	users := writeFile(t, dir, "users", "# login password\n"+strings.ToUpper(a.User[:1])+a.User[1:]+" "+a.Pass+"\n", 0o600)
	out, errOut, err := run(t, dir, bin, "uidl-import", "-config", cfgFile, "-server", old.POP3Addr, "-users", users)
	if err != nil || !strings.Contains(out, "4 UIDLs recorded") {
		t.Fatalf("uidl-import: %v\n%s%s", err, out, errOut)
	}
	if strings.Contains(out+errOut, a.Pass) {
		t.Fatal("uidl-import printed the password")
	}

	g := &gw{Gateway: harness.Start(t, yaml), t: t}
	got := g.uidls(a)
	if !slices.Equal(got, want) {
		t.Fatalf("through mailgate after the import %q, want the old server's %q", got, want)
	}
	if again := g.uidls(a); !slices.Equal(again, want) {
		t.Fatalf("second session %q, want %q", again, want)
	}
	g.Stop(5 * time.Second) // the store is one process's

	out, errOut, err = run(t, dir, bin, "uidl-stats", "-config", cfgFile)
	if err != nil || !strings.Contains(out, "users 1, maps 1, messages 4") {
		t.Fatalf("uidl-stats: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err = run(t, dir, bin, "uidl-drop", "-config", cfgFile, a.User)
	if err != nil || !strings.Contains(out, "dropped 1 map") {
		t.Fatalf("uidl-drop: %v\n%s%s", err, out, errOut)
	}
	g = &gw{Gateway: harness.Start(t, yaml), t: t}
	if fresh := g.uidls(a); slices.Equal(fresh, want) || len(fresh) != 4 {
		t.Fatalf("after uidl-drop %q: want uidl_format's UIDLs, not the imported ones", fresh)
	}
}
