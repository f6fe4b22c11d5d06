// Package dovecot runs a throwaway Dovecot IMAP (and optionally POP3) server
// for end-to-end tests and the load tool: one master process per Server, from
// a generated configuration, everything it writes under one temporary
// directory, listening on free ports of 127.0.0.1.
//
//	srv := dovecot.StartForTest(t, dovecot.Options{POP3: true})
//	srv.AddUser("alice@a.test", "secret")
//	uids, err := srv.Append("alice@a.test", "secret", "INBOX", msg1, msg2)
//	st, err := srv.Mailbox("alice@a.test", "secret", "INBOX", true) // UIDs, flags, BODY[]
//
// Outside tests (the load tool), Start and Stop do the same without testing.TB.
//
// Needs root: Dovecot's master binds, chroots its login processes and switches
// to the mail user. Mail processes refuse to run as root, so mail belongs to
// the system user vmail, created here when missing. Written against Dovecot
// 2.3 as Debian 12 packages it (dovecot-imapd, dovecot-pop3d); nothing under
// /etc/dovecot is read, and a system instance, if one runs, is left alone.
package dovecot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"mailgate/test/mailserver"
	"mailgate/test/testca"
)

// DefaultBinary is where Debian's dovecot-core installs the master.
const DefaultBinary = "/usr/sbin/dovecot"

// Message, MailboxState and Client are the helpers' types (mailserver).
type (
	Message      = mailserver.Message
	MailboxState = mailserver.MailboxState
	Client       = mailserver.Client
)

// Equal reports whether two bodies are byte-identical, and if not, where
// they first differ (mailserver.Equal).
func Equal(got, want []byte) (bool, string) { return mailserver.Equal(got, want) }

// Version is the installed Dovecot's version as "dovecot 2.3.21", or
// "dovecot (version unknown)" when DefaultBinary --version fails; for the
// headers of benchmark reports.
func Version() string {
	out, err := exec.Command(DefaultBinary, "--version").Output()
	if f := strings.Fields(string(out)); err == nil && len(f) > 0 {
		return "dovecot " + f[0]
	}
	return "dovecot (version unknown)"
}

// ErrNotInstalled is returned by Start when the dovecot binary is absent.
var ErrNotInstalled = errors.New("dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)")

// Options choose what the instance offers. The zero value is cleartext IMAP
// only.
type Options struct {
	// TLS turns on STARTTLS on the IMAP port and adds an implicit-TLS
	// listener (IMAPSAddr), with a certificate for 127.0.0.1 and localhost
	// signed by CA.
	TLS bool
	// CA signs the server certificate when TLS is set; nil makes a new one
	// (Server.CA).
	CA *testca.CA
	// POP3 adds Dovecot's own cleartext POP3 listener (POP3Addr) on the same
	// mail store, with pop3_uidl_format %08Xu%08Xv (or POP3UIDLFormat).
	POP3 bool
	// POP3UIDLFormat is pop3_uidl_format; empty: %08Xu%08Xv, Dovecot's
	// default and mailgate's.
	POP3UIDLFormat string
	// TrustedNetworks is Dovecot's login_trusted_networks (space-separated
	// CIDRs): clients from there may forward the real client's address with
	// ID x-originating-ip, as mailgate's forward_client_ip does. Empty: none.
	TrustedNetworks string
	// IMAPC makes the instance a proxy over IMAP instead of a store: its
	// mail_location is imapc:~/imapc against the IMAP server at this
	// host:port (cleartext), logging in with each user's own name and
	// password (passdb default_fields userdb_imapc_password=%w), with imapc_features rfc822.size
	// fetch-headers. Users must exist on both (AddUser on each). With POP3
	// it is Dovecot's own POP3-over-IMAP, the peer mailbench compares
	// mailgate with.
	IMAPC string
	// Proxy makes the instance an IMAP proxy instead of a store, Dovecot's
	// login-process proxying as a proxy tier runs it: every login is passed
	// to the IMAP server at this host:port (cleartext) with the client's own
	// name and password, which that server checks (passdb static with
	// proxy=y nopassword=y). The login processes run in performance mode
	// (service_count = 0, one per CPU), each relaying many clients.
	Proxy string
	// Compress loads the zlib plugin and, for IMAP, imap_zlib, so that the
	// server offers COMPRESS=DEFLATE (RFC 4978) once a client is logged in.
	Compress bool
	// Binary is the dovecot executable; empty means DefaultBinary.
	Binary string
	// StartTimeout bounds waiting for the IMAP greeting; zero means 15s.
	StartTimeout time.Duration
}

// Server is one running Dovecot instance.
type Server struct {
	// IMAP helpers (Login, Append, Expunge, Mailbox...) act as another
	// IMAP client of the instance's users.
	mailserver.IMAP
	// Dir (everything the instance writes), the master process, and Stop,
	// which stops the master (SIGTERM, SIGKILL after 10s; it ends all its
	// processes) and removes Dir.
	mailserver.Instance
	IMAPAddr  string     // 127.0.0.1:port, cleartext IMAP (STARTTLS offered when TLS)
	IMAPSAddr string     // implicit TLS IMAP; empty unless Options.TLS
	POP3Addr  string     // Dovecot's own POP3; empty unless Options.POP3
	CA        *testca.CA // signer of the server certificate; nil unless Options.TLS
	CAFile    string     // CA as a PEM file; empty unless Options.TLS

	conf string
	mu   sync.Mutex // serializes AddUser
}

// StartForTest starts a Server for t and stops it in t.Cleanup. When Dovecot
// is not installed (or we are not root) the test is skipped loudly, except
// under CI=true, where a skipped backend would hide every end-to-end test, so
// the test fails instead.
func StartForTest(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		SkipOrFail(t, err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping dovecot: %v", err)
		}
	})
	return s
}

// SkipOrFail ends t after Start failed. A missing prerequisite (no dovecot
// binary, not root) skips the test loudly, or fails it when the environment
// variable CI is "true"; any other error fails it.
func SkipOrFail(t testing.TB, err error) {
	t.Helper()
	unavailable := errors.Is(err, ErrNotInstalled) || errors.Is(err, errNotRoot)
	switch {
	case !unavailable:
		t.Fatalf("dovecot: %v", err)
	case os.Getenv("CI") == "true":
		t.Fatalf("CI=true but the Dovecot end-to-end tests cannot run: %v", err)
	default:
		t.Skipf("SKIPPING: %v (these tests need a real Dovecot; .ci/run installs it)", err)
	}
}

// Shared is one Dovecot for all the tests of a package, started by the first
// test that asks for it: each test makes users of its own, so tests cannot
// see each other's mail, and the run pays one startup. Declare it as a
// package variable and let TestMain stop it:
//
//	var backend = dovecot.Shared{Options: dovecot.Options{TLS: true}}
//
//	func TestMain(m *testing.M) { os.Exit(backend.Run(m)) }
type Shared struct {
	Options Options // fixed before the first Get

	once sync.Once
	srv  *Server
	err  error
}

// Get returns the instance, starting it on first use. When it cannot start,
// t (and every later caller) is skipped or failed as by SkipOrFail.
func (s *Shared) Get(t testing.TB) *Server {
	t.Helper()
	s.once.Do(func() { s.srv, s.err = Start(s.Options) })
	if s.err != nil {
		SkipOrFail(t, s.err)
	}
	return s.srv
}

// Run runs the package's tests (m.Run), then stops the instance if a test
// started one, and returns the exit code for os.Exit: 1 when stopping
// failed (reported on stderr), m.Run's code otherwise.
func (s *Shared) Run(m *testing.M) int {
	code := m.Run()
	if s.srv != nil {
		if err := s.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping dovecot:", err)
			code = 1
		}
	}
	return code
}

var errNotRoot = errors.New("dovecot tests must run as root (the master binds, chroots and switches to the vmail user)")

// Start runs a new instance and waits until its IMAP port greets. The caller
// must call Stop.
func Start(opts Options) (*Server, error) {
	bin := opts.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	mailUser, err := ensureMailUser()
	if err != nil {
		return nil, err
	}
	// A short path under /tmp, not t.TempDir(): Dovecot puts unix sockets
	// under base_dir, and sun_path holds only 108 bytes.
	dir, err := os.MkdirTemp("", "dovecot-")
	if err != nil {
		return nil, err
	}
	s := &Server{Instance: mailserver.Instance{Dir: dir}, conf: filepath.Join(dir, "dovecot.conf")}
	if err := s.prepare(opts, mailUser); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	// Ports are picked free and then handed to Dovecot, which cannot take
	// port 0: another process may grab one in between, so retry a few times.
	for attempt := 1; ; attempt++ {
		err = s.start(bin, opts, mailUser, timeout)
		if err == nil {
			return s, nil
		}
		if attempt == 3 || !errors.Is(err, errAddrInUse) {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

var errAddrInUse = errors.New("a port was taken before dovecot could bind it")

type mailUser = mailserver.User

func ensureMailUser() (mailUser, error) { return mailserver.MailUser() }

// prepare writes the certificates, the empty passwd file and the mail root.
func (s *Server) prepare(opts Options, mu mailUser) error {
	// The mail processes (vmail) must reach the homes below Dir.
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return err
	}
	home := filepath.Join(s.Dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		return err
	}
	if err := os.Chown(home, mu.UID, mu.GID); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(s.Dir, "users"), 0o755); err != nil {
		return err
	}
	if !opts.TLS {
		return nil
	}
	s.CA = opts.CA
	if s.CA == nil {
		ca, err := testca.New()
		if err != nil {
			return err
		}
		s.CA = ca
	}
	var err error
	if s.CAFile, err = s.CA.WriteCA(s.Dir); err != nil {
		return err
	}
	if _, _, err = s.CA.WriteLeaf(s.Dir, "server", "localhost", "127.0.0.1"); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.Dir, "dh.pem"), []byte(ffdhe2048), 0o644)
}

// ffdhe2048 is the 2048-bit finite field group of RFC 7919 appendix A.1, for
// ssl_dh: a published group, so no slow parameter generation per run.
const ffdhe2048 = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

// confTemplate is a complete configuration: nothing from /etc/dovecot is
// read, so the system instance (if any) and this one never share a socket,
// a port or a file.
var confTemplate = template.Must(template.New("conf").Parse(`# Generated by mailgate/test/dovecot; removed when the test ends.
instance_name = {{.Instance}}
base_dir = {{.Dir}}/run
state_dir = {{.Dir}}/state
log_path = {{.Dir}}/dovecot.log
info_log_path = {{.Dir}}/dovecot.log
protocols = {{.Protocols}}
listen = 127.0.0.1
{{if .TrustedNetworks}}login_trusted_networks = {{.TrustedNetworks}}
{{end -}}
shutdown_clients = yes

{{if .TLS -}}
ssl = yes
ssl_cert = <{{.Dir}}/server.crt
ssl_key = <{{.Dir}}/server.key
ssl_dh = <{{.Dir}}/dh.pem
ssl_min_protocol = TLSv1.2
{{- else -}}
ssl = no
{{- end}}
# Loopback counts as secure for Dovecot anyway; the gateway logs in in clear.
disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests try wrong passwords on purpose, all from 127.0.0.1: Dovecot's delay
# per failure and its growing per-IP penalty (anvil) would slow down every
# later login of the run. mode = 0 is the documented way to turn the penalty
# off.
auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

{{if .ProxyHost -}}
# A proxy: the server behind checks the password the client gave.
passdb {
  driver = static
  args = proxy=y host={{.ProxyHost}} port={{.ProxyPort}} nopassword=y
}
{{else -}}
# One passwd-file per user: Dovecot looks at a passwd-file's mtime at most
# once a second, so a user added to a shared file right after a login could
# stay unknown for a second; a new file is read on first use.
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {{.Dir}}/users/%u
{{- if .IMAPCHost}}
  # imapc logs in to the backend with the password the client gave.
  default_fields = userdb_imapc_password=%w
{{- end}}
}
{{end -}}
userdb {
  driver = static
  args = uid={{.UID}} gid={{.GID}} home={{.Dir}}/home/%d/%n
}
{{if .IMAPCHost -}}
mail_location = imapc:~/imapc
imapc_host = {{.IMAPCHost}}
imapc_port = {{.IMAPCPort}}
imapc_user = %u
imapc_features = rfc822.size fetch-headers
{{- else -}}
mail_location = maildir:~/Maildir
{{- end}}
mail_uid = {{.UID}}
mail_gid = {{.GID}}
first_valid_uid = {{.UID}}
first_valid_gid = {{.GID}}
mail_fsync = never
{{if .Compress -}}
# COMPRESS=DEFLATE (RFC 4978) after login.
mail_plugins = $mail_plugins zlib
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
}
{{end -}}
namespace inbox {
  inbox = yes
}

# Load tests open hundreds of sessions per user from 127.0.0.1.
mail_max_userip_connections = 1000
default_process_limit = 1000
default_client_limit = 4000
pop3_uidl_format = {{.POP3UIDLFormat}}

service imap-login {
  inet_listener imap {
    port = {{.IMAPPort}}
  }
  inet_listener imaps {
    port = {{.IMAPSPort}}
  }
{{- if .ProxyHost}}
  # Performance mode: long-lived login processes, each relaying many clients.
  service_count = 0
  process_min_avail = {{.CPUs}}
  client_limit = 20000
{{- end}}
}
service pop3-login {
  inet_listener pop3 {
    port = {{.POP3Port}}
  }
  inet_listener pop3s {
    port = 0
  }
}
`))

// start writes the configuration with fresh ports, runs the master in the
// foreground (so it is our child and its pid is ours) and waits for the IMAP
// greeting.
func (s *Server) start(bin string, opts Options, mu mailUser, timeout time.Duration) error {
	need := 1
	if opts.TLS {
		need++
	}
	if opts.POP3 {
		need++
	}
	ports, err := mailserver.FreePorts(need)
	if err != nil {
		return err
	}
	vars := struct {
		Instance, Dir, Protocols      string
		TrustedNetworks               string
		TLS, Compress                 bool
		UID, GID                      int
		IMAPPort, IMAPSPort, POP3Port int
		IMAPCHost, IMAPCPort          string
		POP3UIDLFormat                string
		ProxyHost, ProxyPort          string
		CPUs                          int
	}{POP3UIDLFormat: cmp.Or(opts.POP3UIDLFormat, "%08Xu%08Xv"), CPUs: runtime.NumCPU(), Instance: "mailgate-" + filepath.Base(s.Dir), Dir: s.Dir, Protocols: "imap", TLS: opts.TLS,
		Compress: opts.Compress, TrustedNetworks: opts.TrustedNetworks,
		UID: mu.UID, GID: mu.GID, IMAPPort: ports[0]}
	ports = ports[1:]
	s.IMAPAddr = mailserver.Addr(vars.IMAPPort)
	s.IMAP.Addr = s.IMAPAddr
	if opts.IMAPC != "" {
		host, port, err := net.SplitHostPort(opts.IMAPC)
		if err != nil {
			return fmt.Errorf("Options.IMAPC: %w", err)
		}
		vars.IMAPCHost, vars.IMAPCPort = host, port
	}
	if opts.Proxy != "" {
		host, port, err := net.SplitHostPort(opts.Proxy)
		if err != nil {
			return fmt.Errorf("Options.Proxy: %w", err)
		}
		vars.ProxyHost, vars.ProxyPort = host, port
	}
	if opts.TLS {
		vars.IMAPSPort, ports = ports[0], ports[1:]
		s.IMAPSAddr = mailserver.Addr(vars.IMAPSPort)
	}
	if opts.POP3 {
		vars.Protocols = "imap pop3"
		vars.POP3Port = ports[0]
		s.POP3Addr = mailserver.Addr(vars.POP3Port)
	}
	var conf bytes.Buffer
	if err := confTemplate.Execute(&conf, vars); err != nil {
		return err
	}
	if err := os.WriteFile(s.conf, conf.Bytes(), 0o644); err != nil {
		return err
	}
	// A previous attempt's log would be mistaken for this one's.
	os.Remove(filepath.Join(s.Dir, "dovecot.log"))

	// -F: in the foreground, our child (the master takes its children with
	// it).
	if err := s.Run(exec.Command(bin, "-F", "-c", s.conf), s.IMAPAddr, timeout); err != nil {
		if l := s.Log(); l != "" {
			err = fmt.Errorf("%w\n--- dovecot.log ---\n%s", err, mailserver.Tail(l, 40))
		}
		if strings.Contains(err.Error(), "Address already in use") {
			return fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return err
	}
	return nil
}

// Pid is the master process's: its children are the instance's processes
// (the load tool reads their memory).
func (s *Server) Pid() int { return s.Proc.Pid() }

// Log returns what the instance has logged so far (for failure messages).
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "dovecot.log"))
	return string(b)
}

// AddUser adds a passwd-file user, who can log in at once, also while the
// server runs (a changed password may take Dovecot a second to notice). Mail
// goes to Home(name)/Maildir.
func (s *Server) AddUser(name, password string) error {
	if name == "" || strings.ContainsAny(name, ":/\n\r") || strings.ContainsAny(password, ":\n\r") {
		return fmt.Errorf("dovecot: user name must be non-empty without ':', '/' or line breaks; password without ':' or line breaks")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Write a new file and rename it: a login never sees half a file.
	file := filepath.Join(s.Dir, "users", name)
	tmp := file + ".new"
	if err := os.WriteFile(tmp, []byte(name+":{PLAIN}"+password+"::::::\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// Doveadm runs doveadm with the instance's configuration (as root; the mail
// processes switch to vmail) and returns its output.
func (s *Server) Doveadm(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "doveadm", append([]string{"-c", s.conf}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("doveadm %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// CopyMessages copies the message files of user's INBOX from this instance
// to user on other, byte for byte, without Dovecot's index or uidlist: the
// copy is the same mail with new UIDs and a new UIDVALIDITY, as after a
// migration between servers. No session of user may be open on other; user
// must be a user of other (AddUser).
func (s *Server) CopyMessages(user string, other *Server) error {
	mu, err := ensureMailUser()
	if err != nil {
		return err
	}
	src, dst := filepath.Join(s.Home(user), "Maildir"), filepath.Join(other.Home(user), "Maildir")
	for _, dir := range []string{filepath.Dir(filepath.Dir(dst)), filepath.Dir(dst), dst, dst + "/cur", dst + "/new", dst + "/tmp"} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.Chown(dir, mu.UID, mu.GID); err != nil {
			return err
		}
	}
	for _, sub := range []string{"cur", "new"} {
		entries, err := os.ReadDir(filepath.Join(src, sub))
		if err != nil {
			return err
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(src, sub, e.Name()))
			if err != nil {
				return err
			}
			target := filepath.Join(dst, sub, e.Name())
			if err := os.WriteFile(target, b, 0o600); err != nil {
				return err
			}
			if err := os.Chown(target, mu.UID, mu.GID); err != nil {
				return err
			}
		}
	}
	return nil
}

// Home returns user's home directory (where its Maildir is).
func (s *Server) Home(user string) string {
	local, domain, _ := strings.Cut(user, "@")
	return filepath.Join(s.Dir, "home", domain, local)
}

// CloneMailboxes gives user to a copy of every mailbox of user from, with the
// same UIDs, UIDVALIDITY and flags: message files are hard-linked (Dovecot
// never rewrites a maildir file, it only renames it within its own user's
// directory), indexes and uidlists are copied. It seeds many users with large
// mailboxes in no time; no session of either user may be open meanwhile.
// to must already be a user (AddUser).
func (s *Server) CloneMailboxes(from, to string) error {
	mu, err := ensureMailUser()
	if err != nil {
		return err
	}
	src, dst := s.Home(from), s.Home(to)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	os.Chown(filepath.Dir(dst), mu.UID, mu.GID)
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case filepath.Base(filepath.Dir(path)) == "cur" || filepath.Base(filepath.Dir(path)) == "new":
			return os.Link(path, target) // a message file: never modified in place
		default:
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, b, info.Mode().Perm()); err != nil {
				return err
			}
		}
		return os.Lchown(target, mu.UID, mu.GID)
	})
}
