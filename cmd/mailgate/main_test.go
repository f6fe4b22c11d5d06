package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeTakesFileLikeCheckConfig: serve reads the file given as its
// argument, the same way check-config does, and refuses what it cannot use
// instead of falling back to /etc/mailgate/mailgate.yaml.
func TestServeTakesFileLikeCheckConfig(t *testing.T) {
	dir := t.TempDir()
	// A file that does not validate: serve must stop on it, naming it.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("listeners: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.yaml")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"positional", []string{"serve", bad}, 1, bad + ":\n"},
		{"positional missing", []string{"serve", missing}, 1, missing},
		{"flag", []string{"serve", "-config", bad}, 1, bad + ":\n"},
		{"flag and same positional", []string{"serve", "-config", bad, bad}, 1, bad + ":\n"},
		{"flag and other positional", []string{"serve", "-config", bad, missing}, 2, "two configuration files"},
		{"two positionals", []string{"serve", bad, missing}, 2, "unexpected arguments"},
		{"check-config positional", []string{"check-config", bad}, 1, bad + ":\n"},
		{"check-config two positionals", []string{"check-config", bad, missing}, 2, "unexpected arguments"},
		{"demo positional", []string{"demo", "x"}, 2, "unexpected arguments"},
		{"bad flag", []string{"serve", "-nope"}, 2, "usage: mailgate serve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("mailgate %q: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
			}
			if tc.code == 1 && strings.Contains(stderr.String(), "/etc/mailgate/mailgate.yaml") {
				t.Errorf("mailgate %q fell back to the default file:\n%s", tc.args, stderr.String())
			}
		})
	}
}

// TestHelpExitsZero: asking for help is not an error; the usage goes to
// stdout.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"serve", "--help"}, {"serve", "-h"},
		{"check-config", "--help"}, {"demo", "--help"}, {"healthcheck", "--help"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Errorf("mailgate %q: exit %d, want 0\nstderr: %s", args, code, stderr.String())
		}
		if args[0] != "healthcheck" && !strings.Contains(stdout.String(), "usage: mailgate") {
			t.Errorf("mailgate %q printed no usage on stdout: %q (stderr %q)", args, stdout.String(), stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	run([]string{"demo", "--help"}, &stdout, &stderr)
	for _, flag := range []string{"-host", "-pop3", "-pop3s", "-imap", "-imaps"} {
		if !strings.Contains(stdout.String(), flag+" ") {
			t.Errorf("mailgate demo --help does not list %s:\n%s", flag, stdout.String())
		}
	}
}

// TestREADMEDocumentsDemoPorts: the README says how to move the demo off its
// ports, with the flags demo really has.
func TestREADMEDocumentsDemoPorts(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"-host", "-pop3", "-pop3s", "-imap", "-imaps"} {
		if !strings.Contains(string(readme), "`"+flag+"`") && !strings.Contains(string(readme), " "+flag+" ") {
			t.Errorf("README.md does not mention the demo's %s flag", flag)
		}
	}
	if !strings.Contains(string(readme), "mailgate serve /etc/mailgate/mailgate.yaml") {
		t.Errorf("README.md does not show serve FILE")
	}
}

// TestCheckConfigCreatesNothing: check-config on the README's ACME example,
// with its storage directory not there yet, says OK and leaves it absent
// (serve creates it).
func TestCheckConfigCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	storage := filepath.Join(dir, "var", "lib", "mailgate", "acme")
	yaml := `
tls:
  acme:
    domains: [mail.example.com]
    email: postmaster@example.com
    storage: ` + storage + `
    challenges: {http: ":80"}
listeners:
  - {name: imaps, protocol: imap, address: ":993", tls: implicit}
backends:
  dovecot: {address: "imap.internal:143", tls: starttls}
`
	file := filepath.Join(dir, "mailgate.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check-config", file}, &stdout, &stderr); code != 0 {
		t.Fatalf("check-config: exit %d\n%s", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "var")); !os.IsNotExist(err) {
		t.Errorf("check-config created %s (stat: %v)", filepath.Join(dir, "var"), err)
	}
}

// TestCheckConfigWarnsListenerWithoutLogin: a tls: none listener without
// allow_plaintext_auth can accept no login; check-config says so on stderr
// and still passes the file.
func TestCheckConfigWarnsListenerWithoutLogin(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mailgate.yaml")
	yaml := "listeners:\n  - {name: pop3, protocol: pop3, address: \"127.0.0.1:1110\", tls: none}\nbackends: {store: {address: \"127.0.0.1:1143\", tls: none}}\n"
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check-config", file}, &stdout, &stderr); code != 0 {
		t.Fatalf("check-config: exit %d\n%s", code, stderr.String())
	}
	want := file + ": warning: listeners[0]: tls: none without allow_plaintext_auth: true accepts no login"
	if !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), "(line 2)") {
		t.Errorf("check-config stderr:\n%s\nwant %q on line 2", stderr.String(), want)
	}
	if !strings.HasSuffix(stdout.String(), ": OK\n") {
		t.Errorf("check-config stdout %q", stdout.String())
	}
}
