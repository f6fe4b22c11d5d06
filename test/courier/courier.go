// Package courier runs a throwaway Courier IMAP 5.0 server for end-to-end
// tests: couriertcpd with imaplogin and imapd, and the authdaemond they log
// in through, users in a private userdb, mail in Maildirs under one
// temporary directory, listening on a free port of 127.0.0.1.
//
//	srv := courier.StartForTest(t)
//	srv.AddUser("alice", "secret")                       // userdb entry and Maildir
//	uids, err := srv.Append("alice", "secret", "INBOX", msg) // mailserver.IMAP helpers
//
// Debian's courier-imap conflicts with dovecot-imapd (both provide
// imap-server), so .ci/install-imap-servers installs its dependencies
// (courier-base: couriertcpd; courier-authdaemon, courier-authlib-userdb)
// with apt-get and unpacks courier-imap itself into a private directory:
// imaplogin and imapd are looked for under $MAILGATE_IMAP_SERVERS/courier
// (default /opt/mailgate-imap/courier).
//
// Courier's configuration directory (/etc/courier: authdaemonrc, userdb.dat)
// and the authdaemon socket (/run/courier/authdaemon) are compiled in. The
// instance therefore runs in a mount namespace of its own (unshare -m) with
// private directories bind-mounted over both: the system's files are never
// read or written. The servers log to stderr here (their output is kept for
// failures).
//
// Behaviour that matters to the POP3 maildrop (see LIBRARY-NOTES): Courier
// sends no capabilities with its login OK and offers no AUTH=PLAIN in
// cleartext (LOGIN only), answers the UID FETCH of a message another session
// expunged with a short placeholder body, and reports others' expunges only
// in answer to NOOP or IDLE.
package courier

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/test/mailserver"
)

// Programs installed normally (courier-base, courier-authdaemon,
// courier-authlib-userdb) and the mount namespace tool.
const (
	TCPD        = "/usr/sbin/couriertcpd"
	AuthDaemond = "/usr/lib/courier/courier-authlib/authdaemond"
	UserDB      = "/usr/sbin/userdb"
	MakeUserDB  = "/usr/sbin/makeuserdb"
	UserDBPW    = "/usr/sbin/userdbpw"
	Unshare     = "/usr/bin/unshare"
)

// The compiled-in paths the instance's private directories are mounted
// over.
const (
	confDir   = "/etc/courier"
	socketDir = "/run/courier/authdaemon"
)

func pkgRoot() string { return filepath.Join(mailserver.PackagesDir(), "courier") }

// IMAPLogin and IMAPD are the unpacked programs.
func IMAPLogin() string { return filepath.Join(pkgRoot(), "usr/lib/courier/courier/imaplogin") }
func IMAPD() string     { return filepath.Join(pkgRoot(), "usr/bin/imapd") }

const install = "run .ci/install-imap-servers"

// Server is a running instance.
type Server struct {
	// IMAP helpers (Login, Append, Expunge, Mailbox...) act as another IMAP
	// client of the instance's users.
	mailserver.IMAP
	mailserver.Instance        // Dir, the process, Stop
	IMAPAddr            string // 127.0.0.1:port, cleartext IMAP (LOGIN only)

	mail mailserver.User
	mu   sync.Mutex // serializes AddUser (makeuserdb rewrites one file)
}

// StartForTest starts a Server for t and stops it in t.Cleanup. When
// Courier is not installed (or we are not root) the test is skipped loudly,
// or fails under CI=true.
func StartForTest(t testing.TB) *Server {
	t.Helper()
	return mailserver.ForTest(t, "Courier IMAP", install, Start)
}

// Start runs a new instance and waits until it greets. The caller must call
// Stop.
func Start() (*Server, error) {
	if err := mailserver.NeedPrograms("courier", TCPD, AuthDaemond, UserDB, MakeUserDB, UserDBPW, Unshare, IMAPLogin(), IMAPD()); err != nil {
		return nil, err
	}
	mail, err := mailserver.MailUser()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "courier-")
	if err != nil {
		return nil, err
	}
	s := &Server{Instance: mailserver.Instance{Dir: dir}, mail: mail}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.prepare(); err != nil {
		return fail(err)
	}
	if err := mailserver.OnFreePort(s.start); err != nil {
		return fail(err)
	}
	return s, nil
}

// prepare makes the private configuration directory (the system's and the
// package's files, then ours) and the socket directory.
func (s *Server) prepare() error {
	// The mail user's imapd must reach the homes below Dir.
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return err
	}
	etc := filepath.Join(s.Dir, "etc")
	for _, d := range []string{etc, filepath.Join(s.Dir, "authd"), filepath.Join(s.Dir, "home")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	for _, src := range []string{confDir, filepath.Join(pkgRoot(), "etc/courier")} {
		if out, err := exec.Command("cp", "-a", src+"/.", etc).CombinedOutput(); err != nil {
			return fmt.Errorf("copying %s: %v: %s", src, err, out)
		}
	}
	rc := `authmodulelist="authuserdb"
authmodulelistorig="authuserdb"
daemons=3
authdaemonvar=` + socketDir + `
DEBUG_LOGIN=0
DEFAULTOPTIONS=""
LOGGEROPTS=""
`
	if err := os.WriteFile(filepath.Join(etc, "authdaemonrc"), []byte(rc), 0o644); err != nil {
		return err
	}
	// An empty database, so that authdaemond starts with one.
	os.Remove(filepath.Join(etc, "userdb"))
	if err := os.WriteFile(filepath.Join(etc, "userdb"), nil, 0o600); err != nil {
		return err
	}
	return s.makeUserDB()
}

// script runs in the new mount namespace: the bind mounts, then
// authdaemond and couriertcpd as children of the shell, which passes a
// SIGTERM on to both (and gets one itself if the test binary dies). The
// environment of imaplogin and imapd is the package's imapd file (as its
// init script does), with private paths for what it names.
const script = `set -e
mount --bind "$M_DIR/etc" ` + confDir + `
mount --bind "$M_DIR/authd" ` + socketDir + `
"$M_AUTHDAEMOND" &
auth=$!
for i in $(seq 100); do [ -S ` + socketDir + `/socket ] && break; sleep 0.05; done
set -a
. ` + confDir + `/imapd
IMAPACCESSFILE="$M_DIR/etc/imapaccess"
PIDFILE="$M_DIR/imapd.pid"
set +a
"$M_TCPD" -address=127.0.0.1 -maxprocs=200 -maxperip=200 -nodnslookup -noidentlookup \
	"$M_PORT" "$M_IMAPLOGIN" "$M_IMAPD" Maildir &
tcpd=$!
trap 'kill $tcpd $auth 2>/dev/null; wait; exit 0' TERM INT
wait
`

// start starts the instance on port (it cannot take port 0).
func (s *Server) start(port int) error {
	s.IMAPAddr = mailserver.Addr(port)
	s.IMAP.Addr = s.IMAPAddr
	cmd := exec.Command(Unshare, "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "M_DIR="+s.Dir, "M_AUTHDAEMOND="+AuthDaemond, "M_TCPD="+TCPD,
		"M_PORT="+strconv.Itoa(port), "M_IMAPLOGIN="+IMAPLogin(), "M_IMAPD="+IMAPD())
	return s.Run(cmd, s.IMAPAddr, 20*time.Second)
}

// Home is user's home directory (its Maildir is Home/Maildir).
func (s *Server) Home(user string) string { return filepath.Join(s.Dir, "home", user) }

// AddUser adds a userdb user with a Maildir of its own, owned by the mail
// user, who can log in at once.
func (s *Server) AddUser(name, password string) error {
	if name == "" || strings.ContainsAny(name, "/ \t\r\n|") || strings.ContainsAny(password, "\r\n") {
		return errors.New("courier: user name must be non-empty without '/', '|' or spaces; password without line breaks")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	home := s.Home(name)
	for _, d := range []string{"", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"} {
		p := filepath.Join(home, d)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		if err := os.Chown(p, s.mail.UID, s.mail.GID); err != nil {
			return err
		}
	}
	pwc := exec.Command(UserDBPW)
	pwc.Stdin = strings.NewReader(password + "\n")
	hash, err := pwc.Output()
	if err != nil {
		return fmt.Errorf("userdbpw: %v", err)
	}
	db := filepath.Join(s.Dir, "etc", "userdb")
	for _, args := range [][]string{
		{"-f", db, name, "set", "uid=" + strconv.Itoa(s.mail.UID), "gid=" + strconv.Itoa(s.mail.GID),
			"home=" + home, "mail=" + filepath.Join(home, "Maildir")},
		{"-f", db, name, "set", "systempw=" + strings.TrimSpace(string(hash))},
	} {
		if out, err := exec.Command(UserDB, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("userdb %s: %v: %s", name, err, out)
		}
	}
	return s.makeUserDB()
}

// makeUserDB compiles userdb into userdb.dat, which authdaemond re-reads
// when it changes.
func (s *Server) makeUserDB() error {
	db := filepath.Join(s.Dir, "etc", "userdb")
	if out, err := exec.Command(MakeUserDB, "-f", db).CombinedOutput(); err != nil {
		return fmt.Errorf("makeuserdb: %v: %s", err, out)
	}
	return nil
}

// Log is what the instance has written so far (authdaemond, couriertcpd,
// imaplogin), for failure messages.
func (s *Server) Log() string {
	if s.Proc == nil {
		return ""
	}
	return s.Proc.Output.String()
}
