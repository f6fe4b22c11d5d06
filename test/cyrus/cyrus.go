// Package cyrus runs a throwaway Cyrus IMAP 3.6 server for end-to-end tests:
// one cyrmaster per Server, from a generated imapd.conf and cyrus.conf,
// everything it writes under one temporary directory, listening on a free
// port of 127.0.0.1, users in a private sasldb.
//
//	srv := cyrus.StartForTest(t)
//	srv.AddUser("alice", "secret")                       // sasldb entry and INBOX
//	uids, err := srv.Append("alice", "secret", "INBOX", msg) // mailserver.IMAP helpers
//
// Debian's cyrus-imapd conflicts with dovecot-imapd (both provide
// imap-server), so .ci/install-imap-servers installs its dependencies
// (cyrus-common: cyrmaster, ctl_cyrusdb; sasl2-bin: saslpasswd2) with
// apt-get and unpacks cyrus-imapd itself into a private directory: imapd is
// looked for under $MAILGATE_IMAP_SERVERS/cyrus (default
// /opt/mailgate-imap/cyrus). Nothing under /etc is read: every service gets
// -C with the generated imapd.conf. Cyrus logs only to syslog, so a failure
// to start shows the master's output alone.
//
// Behaviour that matters to the POP3 maildrop (see LIBRARY-NOTES): Cyrus
// answers the UID FETCH of a message another session expunged with its body
// and \Deleted (FLAGS before UID) and reports the EXPUNGE afterwards, and
// replaces 8-bit bytes in headers on APPEND.
package cyrus

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/mailserver"
)

// Programs: cyrmaster and ctl_cyrusdb from cyrus-common, saslpasswd2 from
// sasl2-bin (installed normally), imapd from the unpacked cyrus-imapd.
const (
	Master      = "/usr/sbin/cyrmaster"
	CtlCyrusDB  = "/usr/lib/cyrus/bin/ctl_cyrusdb"
	SaslPasswd2 = "/usr/sbin/saslpasswd2"
)

// IMAPD is the unpacked imapd.
func IMAPD() string {
	return filepath.Join(mailserver.PackagesDir(), "cyrus", "usr/lib/cyrus/bin/imapd")
}

// ServerName is the instance's servername, and so the realm of its sasldb
// users (a user without a domain authenticates in that realm).
const ServerName = "cyrus.test"

// admin is the instance's administrator, who creates the users' mailboxes.
const admin = "cyradm"

const install = "run .ci/install-imap-servers"

// Server is a running instance.
type Server struct {
	// IMAP helpers (Login, Append, Expunge, Mailbox...) act as another IMAP
	// client of the instance's users.
	mailserver.IMAP
	mailserver.Instance        // Dir, the process, Stop
	IMAPAddr            string // 127.0.0.1:port, cleartext IMAP (LOGIN and AUTH=PLAIN allowed)

	adminPass string
	mu        sync.Mutex // serializes AddUser (saslpasswd2 locks the db, but one at a time is simpler)
}

// StartForTest starts a Server for t and stops it in t.Cleanup. When Cyrus
// is not installed (or we are not root) the test is skipped loudly, or fails
// under CI=true.
func StartForTest(t testing.TB) *Server {
	t.Helper()
	return mailserver.ForTest(t, "Cyrus IMAP", install, Start)
}

// Start runs a new instance and waits until it greets. The caller must call
// Stop.
func Start() (*Server, error) {
	if err := mailserver.NeedPrograms("cyrus", Master, CtlCyrusDB, SaslPasswd2, IMAPD()); err != nil {
		return nil, err
	}
	// Cyrus runs as its own user (created by cyrus-common) and needs to own
	// its directories. A short path: unix sockets live under it.
	cu, err := user.Lookup("cyrus")
	if err != nil {
		return nil, fmt.Errorf("cyrus %w: no user cyrus (cyrus-common creates it): %v", mailserver.ErrNotInstalled, err)
	}
	uid, _ := strconv.Atoi(cu.Uid)
	gid, _ := strconv.Atoi(cu.Gid)
	dir, err := os.MkdirTemp("", "cyrus-")
	if err != nil {
		return nil, err
	}
	s := &Server{Instance: mailserver.Instance{Dir: dir}, adminPass: fmt.Sprintf("adm-%d", time.Now().UnixNano())}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	for _, d := range []string{"conf", "spool", "run"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o750); err != nil {
			return fail(err)
		}
	}
	if err := s.saslUser(admin, s.adminPass); err != nil {
		return fail(err)
	}
	if err := chownTree(dir, uid, gid); err != nil {
		return fail(err)
	}
	if err := mailserver.OnFreePort(s.start); err != nil {
		return fail(err)
	}
	return s, nil
}

// start starts the instance on port (it cannot take port 0).
func (s *Server) start(port int) error {
	s.IMAPAddr = mailserver.Addr(port)
	s.IMAP.Addr = s.IMAPAddr
	conf := filepath.Join(s.Dir, "imapd.conf")
	// Private paths for everything (Debian's defaults are under /run/cyrus
	// and /var/lib/cyrus); plaintext logins on loopback, as the tests use.
	imapd := fmt.Sprintf(`configdirectory: %[1]s/conf
partition-default: %[1]s/spool
defaultpartition: default
servername: %[2]s
admins: %[3]s
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: %[1]s/sasldb2
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
unixhierarchysep: no
altnamespace: no
proc_path: %[1]s/run/proc
mboxname_lockpath: %[1]s/run/lock
idlesocket: %[1]s/run/idle
notifysocket: %[1]s/run/notify
lmtpsocket: %[1]s/run/lmtp
syslog_prefix: cyrus-test
`, s.Dir, ServerName, admin)
	master := fmt.Sprintf(`START {
  recover cmd="%[1]s -C %[2]s -r"
}
SERVICES {
  imap cmd="%[3]s -C %[2]s" listen="%[4]s" prefork=0 maxchild=200
}
EVENTS {
}
DAEMON {
}
`, CtlCyrusDB, conf, IMAPD(), s.IMAPAddr)
	if err := os.WriteFile(conf, []byte(imapd), 0o644); err != nil {
		return err
	}
	mconf := filepath.Join(s.Dir, "cyrus.conf")
	if err := os.WriteFile(mconf, []byte(master), 0o644); err != nil {
		return err
	}
	// -D: stay in the foreground as our child; cyrmaster drops to the
	// cyrus user itself.
	cmd := exec.Command(Master, "-D", "-C", conf, "-M", mconf, "-p", filepath.Join(s.Dir, "run", "master.pid"))
	cmd.Dir = s.Dir
	return s.Run(cmd, s.IMAPAddr, 20*time.Second)
}

// saslUser sets a sasldb user's password (saslpasswd2 -u servername: the
// realm of users without a domain).
func (s *Server) saslUser(name, password string) error {
	cmd := exec.Command(SaslPasswd2, "-p", "-c", "-f", filepath.Join(s.Dir, "sasldb2"), "-u", ServerName, name)
	cmd.Stdin = strings.NewReader(password)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("saslpasswd2 %s: %v: %s", name, err, out)
	}
	return nil
}

// AddUser adds a sasldb user and creates its INBOX (user.NAME, as the
// administrator). Names are plain (no domain, no '.').
func (s *Server) AddUser(name, password string) error {
	if name == "" || strings.ContainsAny(name, ".@/ \r\n\"") {
		return errors.New("cyrus: user name must be non-empty, without '.', '@', '/', spaces or quotes")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.saslUser(name, password); err != nil {
		return err
	}
	c, err := s.Login(admin, s.adminPass)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Create("user."+name, nil).Wait(); err != nil {
		return fmt.Errorf("cyrus: CREATE user.%s: %w", name, err)
	}
	return nil
}

func chownTree(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}
