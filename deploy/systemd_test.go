package deploy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitFile is a parsed systemd unit: section -> key -> values in order (a
// key may repeat, as ExecReload and SystemCallFilter do).
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, p string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, p)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not KEY=VALUE in a section", p, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// TestSystemdUnit checks the unit's hardening and its agreement with
// systemd/mailgate.yaml (which must validate), then, where systemd is
// installed, has systemd-analyze verify it and rate its exposure.
func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, "systemd/mailgate.service")
	svc := u["Service"]
	if svc == nil || u["Unit"] == nil || u["Install"] == nil {
		t.Fatalf("want [Unit], [Service] and [Install] sections, got %v", keys(u))
	}
	for _, c := range []struct{ key, want string }{
		{"DynamicUser", "yes"},
		{"AmbientCapabilities", "CAP_NET_BIND_SERVICE"},
		{"CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"},
		{"NoNewPrivileges", "yes"},
		{"ProtectSystem", "strict"},
		{"ProtectHome", "yes"},
		{"PrivateTmp", "yes"},
		{"PrivateDevices", "yes"},
		{"StateDirectory", "mailgate"},
		{"ConfigurationDirectory", "mailgate"},
		{"Restart", "on-failure"},
		{"LimitNOFILE", "65536"},
		{"SystemCallFilter", "@system-service"},
		{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"ExecReload", "/bin/kill -HUP $MAINPID"},
		{"ExecStart", "/usr/local/bin/mailgate serve -config /etc/mailgate/mailgate.yaml"},
	} {
		if !slices.Contains(svc[c.key], c.want) {
			t.Errorf("[Service] %s=%s missing (have %q)", c.key, c.want, svc[c.key])
		}
	}
	// The reload checks the file first, so that a broken one fails
	// `systemctl reload` visibly; the HUP comes last.
	if r := svc["ExecReload"]; len(r) != 2 || !strings.Contains(r[0], "check-config /etc/mailgate/mailgate.yaml") || !strings.Contains(r[1], "-HUP") {
		t.Errorf("ExecReload %q: want check-config, then kill -HUP", r)
	}

	// systemd/mailgate.yaml validates, keeps ACME storage in the
	// StateDirectory, and shuts down within the unit's stop timeout.
	state := t.TempDir()
	cfg, _ := parseConfig(t, "systemd/mailgate.yaml", readFile(t, "systemd/mailgate.yaml"),
		map[string]string{"/var/lib/mailgate": state})
	if cfg.TLS.ACME == nil || !strings.HasPrefix(cfg.TLS.ACME.Storage, state+"/") {
		t.Errorf("tls.acme.storage must be under /var/lib/mailgate (StateDirectory=mailgate), got %+v", cfg.TLS.ACME)
	}
	stop, err := time.ParseDuration(strings.Join(svc["TimeoutStopSec"], ""))
	if err != nil || stop <= cfg.Timeouts.Shutdown {
		t.Errorf("TimeoutStopSec=%v must exceed timeouts.shutdown (%v), or systemd kills sessions mailgate is still draining", svc["TimeoutStopSec"], cfg.Timeouts.Shutdown)
	}
	for _, l := range cfg.Listeners {
		if port(t, l.Address) < 1024 && !slices.Contains(svc["AmbientCapabilities"], "CAP_NET_BIND_SERVICE") {
			t.Errorf("listener %s on a privileged port without CAP_NET_BIND_SERVICE", l.Name)
		}
	}

	t.Run("systemd-analyze", func(t *testing.T) {
		analyze := optionalProgram(t, "systemd-analyze")
		// verify insists that ExecStart's program exists: point it at an
		// executable stand-in.
		dir := t.TempDir()
		bin := filepath.Join(dir, "mailgate")
		if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		unit := strings.ReplaceAll(string(readFile(t, "systemd/mailgate.service")), "/usr/local/bin/mailgate", bin)
		unitPath := filepath.Join(dir, "mailgate.service")
		if err := os.WriteFile(unitPath, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		// verify exits 0 even for unknown keys and unknown system call
		// groups (it warns and ignores them): any output is a failure.
		out, err := exec.Command(analyze, "verify", unitPath).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
		// The exposure score (0 safest .. 10) of `systemd-analyze security`;
		// --offline needs systemd 250 or later.
		out, err = exec.Command(analyze, "security", "--offline=yes", "--no-pager", unitPath).CombinedOutput()
		m := regexp.MustCompile(`Overall exposure level for mailgate\.service: ([0-9.]+)`).FindSubmatch(out)
		if err != nil || m == nil {
			t.Logf("systemd-analyze security --offline is not available here (%v); exposure not rated", err)
			return
		}
		score, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("systemd-analyze security: exposure %.1f", score)
		if score > 2.0 {
			t.Errorf("exposure %.1f; the unit used to score 1.6 (OK): what lost its hardening?\n%s", score, out)
		}
	})
}
