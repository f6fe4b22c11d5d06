package test

// Real POP3 clients against mailgate in front of Dovecot: curl, fetchmail
// and Python's poplib. Each is skipped loudly when absent (failed under
// CI=true, where .ci/run installs them).

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
)

// run executes a client program with a bounded time and a private HOME.
func run(t *testing.T, home string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "LC_ALL=C")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func TestCurl(t *testing.T) {
	curl := harness.NeedProgram(t, "curl")
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	msgs := [][]byte{message("curl-1", "Hello from curl.\r\n.dot line\r\n"), message("curl-2", "second\r\n")}
	seed(t, a, msgs...)
	st := a.Inbox(t, true)
	home := t.TempDir()
	_, caFile := harness.CA(t)

	for _, tc := range []struct {
		name, url string
		extra     []string
	}{
		{"pop3", "pop3://" + g.Addr("pop3"), nil},
		{"pop3s", "pop3s://" + g.Addr("pop3s"), []string{"--cacert", caFile}},
		{"pop3 with STLS required", "pop3://" + g.Addr("pop3-stls"), []string{"--ssl-reqd", "--cacert", caFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := append([]string{"-sS", "--max-time", "30", "-u", a.User + ":" + a.Pass}, tc.extra...)
			// A URL without a message number lists (LIST).
			out, errOut, err := run(t, home, curl, append(base, tc.url+"/")...)
			if err != nil {
				t.Fatalf("curl list: %v\n%s", err, errOut)
			}
			want := ""
			for i, m := range st.Messages {
				want += fmt.Sprintf("%d %d\r\n", i+1, len(expectRetr(m.Body)))
			}
			if out != want {
				t.Errorf("curl list = %q, want %q", out, want)
			}
			// /N retrieves (RETR); curl undoes the dot-stuffing.
			for i, m := range st.Messages {
				out, errOut, err := run(t, home, curl, append(base, fmt.Sprintf("%s/%d", tc.url, i+1))...)
				if err != nil {
					t.Fatalf("curl retrieve %d: %v\n%s", i+1, err, errOut)
				}
				if out != string(expectRetr(m.Body)) {
					t.Errorf("curl retrieve %d = %q, want %q", i+1, out, expectRetr(m.Body))
				}
			}
			g.loginEventually(a).Quit() // the last curl session has ended
		})
	}
}

// fetchmail in keep mode with UIDL: the first run downloads everything, the
// second nothing (fetchmail remembers UIDLs, so they must be stable).
func TestFetchmailKeepDownloadsOnce(t *testing.T) {
	fetchmail := harness.NeedProgram(t, "fetchmail")
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	var subjects []string
	var msgs [][]byte
	for i := 1; i <= 3; i++ {
		s := fmt.Sprintf("fetchmail-%d-%s", i, strings.SplitN(a.User, "@", 2)[0])
		subjects = append(subjects, s)
		msgs = append(msgs, message(s, fmt.Sprintf("message %d\r\n.dotted\r\n", i)))
	}
	seed(t, a, msgs...)

	home := t.TempDir()
	mbox := filepath.Join(home, "delivered")
	host, port, _ := strings.Cut(g.Addr("pop3"), ":")
	rc := writeFile(t, home, ".fetchmailrc", fmt.Sprintf(`set no syslog
set no bouncemail
poll %s with proto POP3 port %s uidl
  user "%s" there with password "%s" is root here
  options keep no rewrite sslproto ''
  mda "sh -c 'cat; echo ==END==' >> %s"
`, host, port, a.User, a.Pass, mbox), 0o600)
	args := []string{"-f", rc, "--idfile", filepath.Join(home, ".fetchids"), "--nodetach", "--nosyslog", "-v"}

	out, errOut, err := run(t, home, fetchmail, args...)
	if err != nil {
		t.Fatalf("first fetchmail run: %v\n%s\n%s", err, out, errOut)
	}
	got, err := os.ReadFile(mbox)
	if err != nil {
		t.Fatalf("fetchmail delivered nothing: %v\n%s%s", err, out, errOut)
	}
	if n := strings.Count(string(got), "==END=="); n != 3 {
		t.Errorf("first run delivered %d messages, want 3\n%s", n, got)
	}
	for _, s := range subjects {
		if !strings.Contains(string(got), "Subject: "+s) {
			t.Errorf("message %q not delivered", s)
		}
	}
	if !strings.Contains(string(got), "\n.dotted") || strings.Contains(string(got), "..dotted") {
		t.Errorf("dot-stuffing not undone properly in what fetchmail delivered:\n%s", got)
	}

	g.loginEventually(a).Quit() // the first run's session has ended
	out, errOut, err = run(t, home, fetchmail, args...)
	// Exit status 1 is fetchmail's "no mail".
	var ee *exec.ExitError
	if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("second fetchmail run: %v, want exit status 1 (no mail)\n%s\n%s", err, out, errOut)
	}
	again, _ := os.ReadFile(mbox)
	if !bytes.Equal(again, got) {
		t.Errorf("second run delivered again:\n%s", again[len(got):])
	}
	// keep: nothing was removed from the store.
	if n := len(a.Inbox(t, false).Messages); n != 3 {
		t.Errorf("the store holds %d messages after fetchmail --keep, want 3", n)
	}
}

// poplibScript logs in, lists, retrieves everything and prints JSON. Its
// argv: mode (plain, ssl, stls), host, port, user, password, cafile.
const poplibScript = `
import base64, json, poplib, ssl, sys
mode, host, port, user, password, cafile = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
if mode == "ssl":
    p = poplib.POP3_SSL(host, int(port), timeout=30, context=ctx)
else:
    p = poplib.POP3(host, int(port), timeout=30)
    if mode == "stls":
        p.stls(context=ctx)
caps = p.capa()
p.user(user)
p.pass_(password)
count, size = p.stat()
_, listing, _ = p.list()
_, uidls, _ = p.uidl()
msgs = []
for i in range(1, count + 1):
    _, lines, octets = p.retr(i)
    msgs.append({"octets": octets, "body": base64.b64encode(b"\r\n".join(lines) + b"\r\n").decode()})
_, top, _ = p.top(1, 0)
p.quit()
print(json.dumps({"caps": sorted(caps), "stat": [count, size],
    "list": [l.decode() for l in listing], "uidl": [u.decode() for u in uidls], "msgs": msgs,
    "top": base64.b64encode(b"\r\n".join(top) + b"\r\n").decode()}))
`

func TestPythonPoplib(t *testing.T) {
	python := harness.NeedProgram(t, "python3")
	g := startGateway(t, gwOptions{})
	a := newAccount(t)
	seed(t, a, message("poplib-1", "Hello, Python.\r\n..two dots\r\n"), message("poplib-2", "caf\xc3\xa9\r\n"))
	st := a.Inbox(t, true)
	home := t.TempDir()
	_, caFile := harness.CA(t)
	script := writeFile(t, home, "pop.py", poplibScript, 0o644)

	for _, mode := range []struct{ name, listener string }{{"plain", "pop3"}, {"ssl", "pop3s"}, {"stls", "pop3-stls"}} {
		t.Run(mode.name, func(t *testing.T) {
			host, port, _ := strings.Cut(g.Addr(mode.listener), ":")
			out, errOut, err := run(t, home, python, script, mode.name, host, port, a.User, a.Pass, caFile)
			if err != nil {
				t.Fatalf("poplib: %v\n%s", err, errOut)
			}
			var res struct {
				Caps []string `json:"caps"`
				Stat [2]int64 `json:"stat"`
				List []string `json:"list"`
				UIDL []string `json:"uidl"`
				Msgs []struct {
					Octets int64  `json:"octets"`
					Body   string `json:"body"`
				} `json:"msgs"`
				Top string `json:"top"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("poplib output %q: %v", out, err)
			}
			if res.Stat[0] != int64(len(st.Messages)) {
				t.Fatalf("poplib STAT %v, want %d messages", res.Stat, len(st.Messages))
			}
			var total int64
			for i, m := range res.Msgs {
				want := expectRetr(st.Messages[i].Body)
				body, _ := base64.StdEncoding.DecodeString(m.Body)
				if !bytes.Equal(body, want) {
					t.Errorf("poplib RETR %d = %q, want %q", i+1, body, want)
				}
				if m.Octets != int64(len(want)) {
					t.Errorf("poplib counted %d octets in RETR %d, want %d", m.Octets, i+1, len(want))
				}
				if res.List[i] != fmt.Sprintf("%d %d", i+1, len(want)) {
					t.Errorf("poplib LIST line %q, want %q", res.List[i], fmt.Sprintf("%d %d", i+1, len(want)))
				}
				total += int64(len(want))
			}
			if res.Stat[1] != total {
				t.Errorf("poplib STAT size %d, want %d", res.Stat[1], total)
			}
			if len(res.UIDL) != len(st.Messages) {
				t.Errorf("poplib UIDL %q", res.UIDL)
			}
			top, _ := base64.StdEncoding.DecodeString(res.Top)
			hdrEnd := bytes.Index(st.Messages[0].Body, []byte("\r\n\r\n")) + 4
			if !bytes.Equal(top, st.Messages[0].Body[:hdrEnd]) {
				t.Errorf("poplib TOP 1 0 = %q, want the header %q", top, st.Messages[0].Body[:hdrEnd])
			}
			g.loginEventually(a).Quit() // this run's session has ended
		})
	}
}
