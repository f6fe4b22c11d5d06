package deploy_test

import (
	"context"
	"debug/elf"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dockerBuild is the Dockerfile's build command, word for word, with the
// image's VERSION build argument. If the Dockerfile changes, change this
// (and make sure the binary stays static).
const dockerBuild = `CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mailgate ./cmd/mailgate`

// TestDockerBuild runs the Dockerfile's build step outside Docker and checks
// what the image relies on: a static binary (distroless/static has no libc
// and no dynamic loader), which reports the version it was built with,
// validates the deployment configurations with `mailgate check-config`, and
// answers the image's HEALTHCHECK command.
func TestDockerBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mailgate (a few seconds); skipped with -short")
	}
	d := readDockerfile(t, "../Dockerfile")
	if d.Build != dockerBuild {
		t.Fatalf("the Dockerfile builds with\n\t%s\nbut this test checks\n\t%s\nupdate dockerBuild", d.Build, dockerBuild)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("SKIPPING: no go command on PATH: %v", err)
	}

	bin := filepath.Join(t.TempDir(), "mailgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The same command with VERSION=test and the output in a temporary
	// directory, run from the repository root as in the image (WORKDIR /src).
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w -X main.version=test", "-o", bin, "./cmd/mailgate")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("program header %v: the binary is dynamically linked; distroless/static cannot run it", p.Type)
			}
		}
		if s := f.Section(".dynamic"); s != nil {
			t.Errorf("the binary has a .dynamic section")
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("the binary needs %v", libs)
		}
		if s := f.Section(".symtab"); s != nil {
			t.Errorf("the binary has a symbol table: -s did not strip it")
		}
	})

	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil {
			t.Fatalf("mailgate version: %v\n%s", err, out)
		}
		if !strings.HasPrefix(string(out), "mailgate test") {
			t.Errorf("mailgate version printed %q, want \"mailgate test ...\" (-X main.version)", out)
		}
	})

	// Each deployment configuration, as the binary itself checks it.
	t.Run("check-config", func(t *testing.T) {
		certs := demoCerts(t)
		state := t.TempDir()
		configs := map[string]map[string]string{
			"compose/mailgate.yaml": {"/etc/mailgate/certs": certs},
			"systemd/mailgate.yaml": {"/var/lib/mailgate": state},
			"haproxy/mailgate.yaml": haproxyPaths(t, certs),
		}
		for name, paths := range configs {
			_, text := parseConfig(t, name, readFile(t, name), paths)
			p := filepath.Join(t.TempDir(), "mailgate.yaml")
			if err := os.WriteFile(p, text, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "check-config", p).CombinedOutput()
			if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), ": OK") {
				t.Errorf("mailgate check-config %s: %v\n%s", name, err, out)
			}
		}
		// And a broken one is refused, so the OKs above mean something.
		p := filepath.Join(t.TempDir(), "broken.yaml")
		if err := os.WriteFile(p, []byte("listeners:\n  - {name: pop3s, protocol: pop3, address: \":995\", tls: none}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "check-config", p).CombinedOutput(); err == nil {
			t.Errorf("mailgate check-config accepted a broken file:\n%s", out)
		}
	})

	// The image's HEALTHCHECK command, against a server that is healthy
	// and one that is not.
	t.Run("healthcheck", func(t *testing.T) {
		if len(d.Healthcheck) < 3 || d.Healthcheck[0] != "/usr/local/bin/mailgate" || d.Healthcheck[1] != "healthcheck" {
			t.Fatalf("the Dockerfile's HEALTHCHECK is %q, want mailgate healthcheck URL", d.Healthcheck)
		}
		healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
			}
		}))
		defer healthy.Close()
		url := strings.Replace(d.Healthcheck[2], "http://127.0.0.1:9110", healthy.URL, 1)
		if out, err := exec.Command(bin, "healthcheck", url).CombinedOutput(); err != nil {
			t.Errorf("mailgate healthcheck %s: %v\n%s", url, err, out)
		}
		healthy.Close()
		out, err := exec.Command(bin, "healthcheck", url).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Errorf("mailgate healthcheck of a closed port: %v (want exit status 1)\n%s", err, out)
		}
	})
}
