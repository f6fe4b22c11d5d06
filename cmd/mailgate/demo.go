package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"mailgate/gateway"
	"mailgate/gateway/config"
	mgtls "mailgate/tls"
	"mailgate/upstream/imaptest"
)

const (
	demoUser     = "demo"
	demoPassword = "demo"
)

// demo runs go-imap's in-memory IMAP server seeded with a demo user and a few
// messages, and mailgate in front of it, all on loopback. It is the README's
// first command: nothing to install, nothing to configure.
func demo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	pop3Port := fs.Int("pop3", 1110, "POP3 port (STLS offered; plaintext login allowed for the demo)")
	pop3sPort := fs.Int("pop3s", 1995, "POP3S port (implicit TLS)")
	imapPort := fs.Int("imap", 1143, "IMAP port (STARTTLS offered; plaintext login allowed for the demo)")
	imapsPort := fs.Int("imaps", 1993, "IMAPS port (implicit TLS)")
	verbose := fs.Bool("v", false, "log every session to stderr")
	if code, ok := parseFlags(fs, args, "demo [-host ADDR] [-pop3 PORT] [-pop3s PORT] [-imap PORT] [-imaps PORT] [-v]", stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailgate: unexpected arguments %q\nusage: mailgate demo [flags]; mailgate demo -h lists them\n", fs.Args())
		return 2
	}

	dir, err := os.MkdirTemp("", "mailgate-demo-")
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)

	backend, err := startDemoBackend()
	if err != nil {
		fmt.Fprintf(stderr, "demo: backend: %v\n", err)
		return 1
	}
	defer backend.Close()

	certFile, keyFile := filepath.Join(dir, "demo-cert.pem"), filepath.Join(dir, "demo-key.pem")
	if err := writeSelfSigned(certFile, keyFile, *host); err != nil {
		fmt.Fprintf(stderr, "demo: certificate: %v\n", err)
		return 1
	}
	hp := func(port int) string { return net.JoinHostPort(*host, fmt.Sprint(port)) }
	yaml := fmt.Sprintf(`
log: {level: info, format: console}
tls:
  certificates:
    - {cert: %q, key: %q}
listeners:
  - {name: pop3,  protocol: pop3, address: %q, tls: starttls, allow_plaintext_auth: true}
  - {name: pop3s, protocol: pop3, address: %q, tls: implicit}
  - {name: imap,  protocol: imap, address: %q, tls: starttls, allow_plaintext_auth: true}
  - {name: imaps, protocol: imap, address: %q, tls: implicit}
backends:
  memory: {address: %q, tls: none}
routing:
  default: memory
limits: {auth_failure_delay: 200ms}
`, certFile, keyFile, hp(*pop3Port), hp(*pop3sPort), hp(*imapPort), hp(*imapsPort), backend.Addr())
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		fmt.Fprintf(stderr, "demo: configuration: %v\n", err)
		return 1
	}
	logger := zap.NewNop()
	if *verbose {
		var level zap.AtomicLevel
		if logger, level, err = newLogger(config.Log{Level: "debug", Format: "console"}); err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return 1
		}
		_ = level
	}
	srv, err := gateway.New(cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	if err := srv.Start(context.Background()); err != nil {
		fmt.Fprintf(stderr, "demo: %v (another demo running? pick other ports with -pop3, -pop3s, -imap, -imaps)\n", err)
		return 1
	}

	fmt.Fprintf(stdout, `mailgate demo is running: an in-memory IMAP server with user %[1]q (password %[2]q)
and mailgate in front of it. Try, from another terminal:

  # POP3: list the maildrop, then retrieve message 1
  curl -u %[1]s:%[2]s pop3://%[3]s/
  curl -u %[1]s:%[2]s pop3://%[3]s/1

  # POP3S (implicit TLS, the demo's self-signed certificate)
  curl --cacert %[4]s -u %[1]s:%[2]s pop3s://%[5]s/

  # Python's poplib
  python3 -c 'import poplib; p = poplib.POP3("%[6]s", %[7]d); p.user("%[1]s"); p.pass_("%[2]s"); print(p.uidl()); print(b"\n".join(p.retr(1)[1]).decode()); p.quit()'

  # IMAP through mailgate (handed through to the backend after login)
  curl -u %[1]s:%[2]s 'imap://%[8]s/INBOX?ALL'
  curl --cacert %[4]s -u %[1]s:%[2]s 'imaps://%[9]s/INBOX;UID=1'

Ports: POP3 %[3]s (STLS), POP3S %[5]s, IMAP %[8]s (STARTTLS), IMAPS %[9]s.
Press Ctrl-C to stop.
`, demoUser, demoPassword, hp(*pop3Port), certFile, hp(*pop3sPort), *host, *pop3Port, hp(*imapPort), hp(*imapsPort))

	sigs := make(chan os.Signal, 1)
	notifyStop(sigs)
	<-sigs
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	fmt.Fprintln(stdout, "stopped")
	return 0
}

func writeSelfSigned(certFile, keyFile, host string) error {
	names := []string{"localhost", host}
	cert, err := mgtls.SelfSigned(names...)
	if err != nil {
		return err
	}
	var certPEM bytes.Buffer
	for _, der := range cert.Certificate {
		pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, certPEM.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// startDemoBackend serves an in-memory IMAP server on a free loopback port,
// with one user and a few messages that show what POP3 clients must get
// right: a line starting with a dot, 8-bit text, an attachment.
func startDemoBackend() (*imaptest.Server, error) {
	var msgs [][]byte
	for _, m := range demoMessages() {
		msgs = append(msgs, []byte(strings.ReplaceAll(strings.TrimLeft(m, "\n"), "\n", "\r\n")))
	}
	return imaptest.Start(imaptest.User{Name: demoUser, Password: demoPassword, Messages: msgs})
}

func demoMessages() []string {
	return []string{`
From: mailgate <postmaster@example.com>
To: demo@example.com
Subject: Welcome to mailgate
Date: Mon, 23 Nov 2026 09:00:00 +0000
Message-ID: <welcome@example.com>
Content-Type: text/plain; charset=utf-8

You are reading this through mailgate: a POP3 maildrop made out of an IMAP
mailbox. Message numbers stay fixed for the session, UIDLs stay the same
across sessions, and DELE takes effect only when you QUIT.
`, `
From: Alice <alice@example.org>
To: demo@example.com
Subject: =?utf-8?q?Caf=C3=A9_meeting?=
Date: Mon, 23 Nov 2026 10:15:00 +0100
Message-ID: <cafe@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Rendez-vous au café à 15h ?
.
The line above is a single dot: POP3 sends it as ".." and your client
shows it as ".".
`, `
From: Bob <bob@example.net>
To: demo@example.com
Subject: Quarterly report
Date: Mon, 23 Nov 2026 11:30:00 -0500
Message-ID: <report@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=us-ascii

The report is attached.

--b1
Content-Type: text/csv; name="report.csv"
Content-Disposition: attachment; filename="report.csv"
Content-Transfer-Encoding: base64

cXVhcnRlcixyZXZlbnVlCjEsMTAwCjIsMTIwCjMsMTUwCg==
--b1--
`}
}
