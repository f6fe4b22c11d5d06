package main

// The UIDL map's operator commands (pop3.uidl_map): import from an old POP3
// server, drop a user, statistics. With the embedded store they open its
// file, which one process at a time may do: run them while mailgate serve
// is stopped. With store: redis they use the cluster's Redis, shared with
// the running gateways.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway"
	"mailgate/gateway/config"
	"mailgate/upstream"
)

// openUIDLStore loads the configuration and opens its pop3.uidl_map store.
func openUIDLStore(path string, stderr io.Writer) (*config.Config, gateway.UIDLAdmin, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "%s:\n%v\n", path, err)
		return nil, nil, false
	}
	st, err := gateway.OpenUIDLAdmin(cfg, zap.NewNop())
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: %s: %v\n", path, err)
		return nil, nil, false
	}
	return cfg, st, true
}

const uidlDropSynopsis = "uidl-drop -config FILE USER..."

// uidlDrop forgets the maps of deleted users.
func uidlDrop(args []string, stdout, stderr io.Writer) int {
	fs, path := configFlags("uidl-drop", defaultConfig, "configuration file")
	if code, ok := parseFlags(fs, args, uidlDropSynopsis, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "usage: mailgate %s\n", uidlDropSynopsis)
		return 2
	}
	_, st, ok := openUIDLStore(*path, stderr)
	if !ok {
		return 1
	}
	defer st.Close()
	code := 0
	for _, user := range fs.Args() {
		id := upstream.UIDLIdentity(user)
		n, err := st.Drop(id)
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "%s: %v\n", id, err)
			code = 1
		case n == 0:
			fmt.Fprintf(stdout, "%s: no map\n", id)
		default:
			fmt.Fprintf(stdout, "%s: dropped %d map(s)\n", id, n)
		}
	}
	return code
}

// uidlStats prints what the store holds, and its cost per message.
func uidlStats(args []string, stdout, stderr io.Writer) int {
	fs, path := configFlags("uidl-stats", defaultConfig, "configuration file")
	if code, ok := parseFlags(fs, args, "uidl-stats -config FILE", stdout, stderr); !ok {
		return code
	}
	_, st, ok := openUIDLStore(*path, stderr)
	if !ok {
		return 1
	}
	defer st.Close()
	s, err := st.Stats()
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: %v\n", err)
		return 1
	}
	perMsg := 0.0
	if s.Messages > 0 {
		perMsg = float64(s.Bytes) / float64(s.Messages)
	}
	fmt.Fprintf(stdout, "users %d, maps %d, messages %d, record bytes %d (%.1f per message)", s.Users, s.Maps, s.Messages, s.Bytes, perMsg)
	if s.Measured >= 0 {
		// The Redis store: the counter max_bytes checks, and the records
		// summed one by one (they differ after a crash between the two
		// writes).
		fmt.Fprintf(stdout, " counted, %d measured", s.Measured)
	}
	if s.FileBytes > 0 {
		fmt.Fprintf(stdout, ", file bytes %d", s.FileBytes)
	}
	fmt.Fprintf(stdout, ", corrupt records %d\n", s.Corrupt)
	return 0
}

const uidlImportSynopsis = "uidl-import -config FILE -server HOST:PORT -users FILE [-tls none|starttls|implicit] [-ca FILE] " +
	"[-master USER -master-password-file FILE [-master-separator *]] [-replace] [-timeout 60s]"

// uidlImport logs in to an old POP3 server for each user, reads UIDL, LIST
// and TOP n 0 of every message, and records the old UIDLs in the map, so
// that the users' clients download nothing again through mailgate. It
// never deletes: QUIT after no DELE changes nothing (RFC 1939 §6).
func uidlImport(args []string, stdout, stderr io.Writer) int {
	fs, path := configFlags("uidl-import", defaultConfig, "configuration file (its pop3.uidl_map.store and pop3.mailbox)")
	server := fs.String("server", "", "the old POP3 server, host:port")
	tlsMode := fs.String("tls", "none", "none, starttls (STLS) or implicit (POP3S)")
	caFile := fs.String("ca", "", "PEM file of the CA that signs the old server's certificate (default: the system's)")
	usersFile := fs.String("users", "", `one user a line: "LOGIN PASSWORD" (the rest of the line after the first space or tab is the password), or only "LOGIN" with -master; # starts a comment`)
	master := fs.String("master", "", "master user: log in as LOGIN + separator + master, with the master's password")
	masterPWFile := fs.String("master-password-file", "", "file holding the master user's password")
	sep := fs.String("master-separator", "*", "separator between login and master user (Dovecot's auth_master_user_separator)")
	replace := fs.Bool("replace", false, "replace a user's map that exists already (the user has used mailgate since)")
	timeout := fs.Duration("timeout", time.Minute, "deadline of each POP3 command")
	if code, ok := parseFlags(fs, args, uidlImportSynopsis, stdout, stderr); !ok {
		return code
	}
	if *server == "" || *usersFile == "" || fs.NArg() > 0 || (*master != "") != (*masterPWFile != "") {
		fmt.Fprintf(stderr, "usage: mailgate %s\n", uidlImportSynopsis)
		return 2
	}
	if _, _, err := net.SplitHostPort(*server); err != nil {
		fmt.Fprintf(stderr, "mailgate: -server %q is not host:port\n", *server)
		return 2
	}
	var tc *tls.Config
	switch *tlsMode {
	case "none":
	case "starttls", "implicit":
		host, _, _ := net.SplitHostPort(*server)
		tc = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				fmt.Fprintf(stderr, "mailgate: -ca: %v\n", err)
				return 1
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "mailgate: -ca %s: no PEM certificate in it\n", *caFile)
				return 1
			}
		}
	default:
		fmt.Fprintf(stderr, "mailgate: -tls %q is not one of none, starttls, implicit\n", *tlsMode)
		return 2
	}
	users, err := readImportUsers(*usersFile, *master != "")
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: -users: %v\n", err)
		return 1
	}
	var masterPW string
	if *masterPWFile != "" {
		b, err := os.ReadFile(*masterPWFile)
		if err != nil {
			fmt.Fprintf(stderr, "mailgate: -master-password-file: %v\n", err)
			return 1
		}
		masterPW = strings.TrimRight(string(b), "\r\n")
	}
	cfg, st, ok := openUIDLStore(*path, stderr)
	if !ok {
		return 1
	}
	defer st.Close()

	code := 0
	for _, u := range users {
		login, pw := u.login, u.password
		if *master != "" {
			login, pw = u.login+*sep+*master, masterPW
		}
		msgs, err := fetchOldPOP3(*server, *tlsMode, tc, login, pw, *timeout)
		if err != nil {
			// The error never carries the password: fetchOldPOP3 reports
			// commands by keyword only.
			fmt.Fprintf(stderr, "%s: %v\n", u.login, err)
			code = 1
			continue
		}
		key := upstream.UIDLKey{User: upstream.UIDLIdentity(u.login), Mailbox: cfg.POP3.Mailbox}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		res, err := upstream.ImportUIDLs(ctx, st, key, msgs, *replace)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", u.login, err)
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: %d messages, %d UIDLs recorded, %d skipped (not RFC 1939 §7 or repeated)\n",
			key.User, len(msgs), res.Recorded, res.Skipped)
	}
	return code
}

type importUser struct{ login, password string }

func readImportUsers(path string, loginsOnly bool) ([]importUser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var users []importUser
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimRight(sc.Text(), "\r")
		if t := strings.TrimSpace(text); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		login, pw, found := strings.Cut(strings.Replace(text, "\t", " ", 1), " ")
		switch {
		case loginsOnly:
			users = append(users, importUser{login: strings.TrimSpace(text)})
		case !found || login == "" || pw == "":
			return nil, fmt.Errorf("%s:%d: want LOGIN PASSWORD", path, line)
		default:
			users = append(users, importUser{login, pw})
		}
	}
	return users, sc.Err()
}

// pop3Conn is the import's minimal POP3 client (RFC 1939), every read and
// write under a deadline.
type pop3Conn struct {
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

// errPOP3 is an -ERR answer; the text is the server's, the command only its
// keyword (never a password).
type errPOP3 struct{ cmd, text string }

func (e *errPOP3) Error() string { return e.cmd + ": -ERR " + e.text }

func (c *pop3Conn) line() (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(s, "\r\n"), nil
}

func (c *pop3Conn) send(lines ...string) error {
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err := io.WriteString(c.conn, strings.Join(lines, "\r\n")+"\r\n")
	return err
}

// status reads a status line: +OK's text, or an errPOP3.
func (c *pop3Conn) status(cmd string) (string, error) {
	s, err := c.line()
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	if rest, ok := strings.CutPrefix(s, "+OK"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", &errPOP3{cmd, strings.TrimSpace(strings.TrimPrefix(s, "-ERR"))}
}

// multi reads a multi-line response's body after its +OK, undoing the
// byte-stuffing (RFC 1939 §3); lines keep their CRLF.
func (c *pop3Conn) multi(cmd string) ([]byte, error) {
	if _, err := c.status(cmd); err != nil {
		return nil, err
	}
	var out []byte
	for {
		c.conn.SetReadDeadline(time.Now().Add(c.timeout))
		s, err := c.r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		if s == ".\r\n" || s == ".\n" {
			return out, nil
		}
		if strings.HasPrefix(s, ".") {
			s = s[1:]
		}
		out = append(out, s...)
	}
}

// fetchOldPOP3 reads one user's UIDLs, sizes and headers.
func fetchOldPOP3(addr, mode string, tc *tls.Config, login, password string, timeout time.Duration) ([]upstream.UIDLImportMessage, error) {
	d := net.Dialer{Timeout: timeout}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := raw
	if mode == "implicit" {
		tconn := tls.Client(raw, tc)
		tconn.SetDeadline(time.Now().Add(timeout))
		if err := tconn.Handshake(); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		conn = tconn
	}
	c := &pop3Conn{conn: conn, r: bufio.NewReader(conn), timeout: timeout}
	defer func() { c.conn.Close() }()
	if _, err := c.status("greeting"); err != nil {
		return nil, err
	}
	if mode == "starttls" {
		// RFC 2595 §4: STLS, then the handshake; nothing else is sent
		// before it.
		if err := c.send("STLS"); err != nil {
			return nil, err
		}
		if _, err := c.status("STLS"); err != nil {
			return nil, err
		}
		tconn := tls.Client(raw, tc)
		tconn.SetDeadline(time.Now().Add(timeout))
		if err := tconn.Handshake(); err != nil {
			return nil, fmt.Errorf("TLS: %w", err)
		}
		c.conn, c.r = tconn, bufio.NewReader(tconn)
	}
	if err := c.send("USER " + login); err != nil {
		return nil, err
	}
	if _, err := c.status("USER"); err != nil {
		return nil, err
	}
	if err := c.send("PASS " + password); err != nil {
		return nil, err
	}
	if _, err := c.status("PASS"); err != nil {
		return nil, err
	}
	uidls, err := c.listing("UIDL")
	if err != nil {
		return nil, err
	}
	sizes, err := c.listing("LIST")
	if err != nil {
		return nil, err
	}
	nums := make([]int, 0, len(uidls))
	for n := range uidls {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	var msgs []upstream.UIDLImportMessage
	// TOP n 0 in pipelined batches (RFC 2449 PIPELINING; a server without
	// it still answers in order, only slower).
	const batch = 64
	for i := 0; i < len(nums); i += batch {
		part := nums[i:min(i+batch, len(nums))]
		cmds := make([]string, len(part))
		for j, n := range part {
			cmds[j] = fmt.Sprintf("TOP %d 0", n)
		}
		if err := c.send(cmds...); err != nil {
			return nil, err
		}
		for _, n := range part {
			header, err := c.multi("TOP")
			var perr *errPOP3
			if errors.As(err, &perr) {
				continue // deleted meanwhile: nothing to record
			}
			if err != nil {
				return nil, err
			}
			size, _ := strconv.ParseInt(sizes[n], 10, 64)
			msgs = append(msgs, upstream.UIDLImportMessage{UIDL: uidls[n], Size: size, Header: header})
		}
	}
	if err := c.send("QUIT"); err == nil {
		c.status("QUIT") //nolint:errcheck // nothing was deleted either way
	}
	return msgs, nil
}

// listing runs UIDL or LIST without argument: message number -> the rest.
func (c *pop3Conn) listing(cmd string) (map[int]string, error) {
	if err := c.send(cmd); err != nil {
		return nil, err
	}
	body, err := c.multi(cmd)
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, l := range strings.Split(strings.TrimRight(string(body), "\r\n"), "\n") {
		num, rest, ok := strings.Cut(strings.TrimSpace(l), " ")
		n, err := strconv.Atoi(num)
		if !ok || err != nil {
			if strings.TrimSpace(l) == "" {
				continue
			}
			return nil, fmt.Errorf("%s: bad line %q", cmd, l)
		}
		out[n] = strings.TrimSpace(rest)
	}
	return out, nil
}
