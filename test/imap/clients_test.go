package imape2e

// Real IMAP clients through mailgate: curl and Python's imaplib, over
// STARTTLS and implicit TLS, each verifying mailgate's certificate with the
// test CA. (go-imap's imapclient is the client of the other tests.) A
// missing program skips loudly, or fails under CI=true.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/harness"
)

// run executes a client program under a time bound with a private HOME
// (no user configuration like ~/.curlrc gets in the way) and extra env.
func run(t *testing.T, env []string, name string, args ...string) (stdout []byte, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), append([]string{"HOME=" + t.TempDir(), "LC_ALL=C"}, env...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.String(), err
}

// clientMailbox seeds three messages and expunges the first, so that UIDs
// and sequence numbers differ and a client mixing them up fails. It returns
// the UID to fetch and its exact bytes.
func clientMailbox(t *testing.T, a account) (uint32, []byte) {
	t.Helper()
	msgs := [][]byte{
		message("client-gone", "expunged before the test\r\n"),
		message("client-1", "Hello, client.\r\n.a line starting with a dot\r\n"),
		message("client-2", "The one to fetch.\r\n\r\nWith an empty line above and 8-bit text: gr\xc3\xbc\xc3\x9fe.\r\n"),
	}
	uids := seed(t, a, "INBOX", msgs...)
	if err := backend(t).Expunge(a.User, a.Pass, "INBOX", uids[0]); err != nil {
		t.Fatal(err)
	}
	return uids[2], msgs[2]
}

func TestCurl(t *testing.T) {
	curl := harness.NeedProgram(t, "curl")
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	uid, want := clientMailbox(t, a)
	_, caFile := harness.CA(t)

	for _, tc := range []struct {
		name, url string
		extra     []string
	}{
		{"imap with STARTTLS required", "imap://" + g.Addr("imap"), []string{"--ssl-reqd"}},
		{"imaps", "imaps://" + g.Addr("imaps"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := append([]string{"-sS", "--max-time", "30", "--cacert", caFile, "-u", a.User + ":" + a.Pass}, tc.extra...)

			// The root URL lists the mailboxes (LIST "" *).
			out, errOut, err := run(t, nil, curl, append(base, tc.url+"/")...)
			if err != nil {
				t.Fatalf("curl LIST: %v\n%s", err, errOut)
			}
			if !strings.Contains(string(out), "* LIST") || !strings.Contains(string(out), "INBOX") {
				t.Errorf("curl LIST output lacks INBOX:\n%s", out)
			}

			// A mailbox with ;UID= fetches that message's BODY[].
			out, errOut, err = run(t, nil, curl, append(base, tc.url+"/INBOX;UID="+strconv.Itoa(int(uid)))...)
			if err != nil {
				t.Fatalf("curl FETCH: %v\n%s", err, errOut)
			}
			if ok, where := dovecot.Equal(out, want); !ok {
				t.Errorf("curl fetched UID %d with different bytes: %s\ngot:\n%q", uid, where, out)
			}
		})
	}
}

// imaplibScript logs in with Python's imaplib (IMAP4_SSL, or IMAP4 with
// starttls), selects INBOX, fetches one message by UID and logs out; the
// result goes to stdout as JSON. Credentials come in the environment.
const imaplibScript = `
import base64, imaplib, json, os, ssl
env = os.environ
ctx = ssl.create_default_context(cafile=env["IMAP_CAFILE"])
host, port = env["IMAP_HOST"], int(env["IMAP_PORT"])
if env["IMAP_MODE"] == "imaps":
    m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=30)
else:
    m = imaplib.IMAP4(host, port, timeout=30)
    m.starttls(ssl_context=ctx)
m.login(env["IMAP_USER"], env["IMAP_PASS"])
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
count = int(data[0])
typ, data = m.uid("FETCH", env["IMAP_UID"], "(BODY.PEEK[])")
assert typ == "OK", (typ, data)
body = data[0][1]
typ, _ = m.logout()
print(json.dumps({"count": count, "body": base64.b64encode(body).decode(), "logout": typ}))
`

func TestPythonImaplib(t *testing.T) {
	python := harness.NeedProgram(t, "python3")
	t.Parallel()
	g := startGateway(t, gwOptions{})
	a := newAccount(t, domPlain)
	uid, want := clientMailbox(t, a)
	_, caFile := harness.CA(t)

	for _, mode := range []struct{ name, listener string }{{"imaps", "imaps"}, {"starttls", "imap"}} {
		t.Run(mode.name, func(t *testing.T) {
			host, port, err := net.SplitHostPort(g.Addr(mode.listener))
			if err != nil {
				t.Fatal(err)
			}
			out, errOut, err := run(t, []string{
				"IMAP_MODE=" + mode.name, "IMAP_HOST=" + host, "IMAP_PORT=" + port, "IMAP_CAFILE=" + caFile,
				"IMAP_USER=" + a.User, "IMAP_PASS=" + a.Pass, "IMAP_UID=" + strconv.Itoa(int(uid)),
			}, python, "-c", imaplibScript)
			if err != nil {
				t.Fatalf("python imaplib: %v\n%s", err, errOut)
			}
			var res struct {
				Count  int
				Body   string
				Logout string
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("python output %q: %v", out, err)
			}
			body, err := base64.StdEncoding.DecodeString(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			if res.Count != 2 || res.Logout != "BYE" {
				t.Errorf("SELECT saw %d messages (want 2), LOGOUT %q (want BYE)", res.Count, res.Logout)
			}
			if ok, where := dovecot.Equal(body, want); !ok {
				t.Errorf("imaplib fetched UID %d with different bytes: %s", uid, where)
			}
		})
	}
}
