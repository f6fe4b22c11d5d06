package deploy_test

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// haproxySection is one frontend or backend of haproxy.cfg: its keyword
// lines, split into fields.
type haproxySection struct {
	kind, name string
	lines      [][]string
}

func parseHAProxy(t *testing.T, p string) []haproxySection {
	t.Helper()
	var secs []haproxySection
	for _, line := range strings.Split(string(readFile(t, p)), "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "global", "defaults", "frontend", "backend", "listen":
			s := haproxySection{kind: f[0]}
			if len(f) > 1 {
				s.name = f[1]
			}
			secs = append(secs, s)
			continue
		}
		if len(secs) == 0 {
			t.Fatalf("%s: %q outside any section", p, line)
		}
		secs[len(secs)-1].lines = append(secs[len(secs)-1].lines, f)
	}
	return secs
}

// haproxyPaths are the stand-ins for the files haproxy/mailgate.yaml names:
// the demo certificates, and a Redis password file.
func haproxyPaths(t *testing.T, certs string) map[string]string {
	t.Helper()
	redisPassword := filepath.Join(t.TempDir(), "redis-password")
	if err := os.WriteFile(redisPassword, []byte("example\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"/etc/mailgate/tls.crt":        filepath.Join(certs, "mailgate.crt"),
		"/etc/mailgate/tls.key":        filepath.Join(certs, "mailgate.key"),
		"/etc/mailgate/redis-password": redisPassword,
	}
}

// TestHAProxy checks haproxy.cfg against haproxy/mailgate.yaml (which must
// validate): every frontend passes its port to mailgate's listener of the
// same port with send-proxy-v2, every mailgate listener is reached, and
// every listener trusts PROXY headers from a network (and only from
// private addresses, never from everywhere). Then haproxy -c, if installed.
func TestHAProxy(t *testing.T) {
	certs := demoCerts(t)
	cfg, _ := parseConfig(t, "haproxy/mailgate.yaml", readFile(t, "haproxy/mailgate.yaml"), haproxyPaths(t, certs))
	// The two instances HAProxy balances to are one gateway.
	if cfg.Cluster == nil || len(cfg.Cluster.Redis.Addresses) == 0 {
		t.Error("haproxy/mailgate.yaml has no cluster: section: the two instances would not share locks and limits")
	}
	listenerPorts := map[int]string{}
	for _, l := range cfg.Listeners {
		listenerPorts[port(t, l.Address)] = l.Name
		if len(l.ProxyPrefixes()) == 0 {
			t.Errorf("listener %s has no proxy_protocol: behind HAProxy it would see HAProxy's address", l.Name)
		}
		for _, p := range l.ProxyPrefixes() {
			if p.Bits() == 0 || !p.Addr().IsPrivate() {
				t.Errorf("listener %s trusts PROXY headers from %v: only the load balancer's own network may send them", l.Name, p)
			}
		}
	}

	secs := parseHAProxy(t, "haproxy/haproxy.cfg")
	backends := map[string]haproxySection{}
	for _, s := range secs {
		if s.kind == "backend" {
			backends[s.name] = s
		}
	}
	reached := map[int]bool{}
	for _, s := range secs {
		switch s.kind {
		case "defaults":
			if !hasLine(s, "mode", "tcp") {
				t.Errorf("defaults: want mode tcp (mailgate terminates TLS itself)")
			}
		case "frontend":
			var bind int
			var backend string
			for _, l := range s.lines {
				switch l[0] {
				case "bind":
					bind = port(t, l[1])
				case "default_backend":
					backend = l[1]
				}
			}
			b, ok := backends[backend]
			if !ok {
				t.Errorf("frontend %s: default_backend %q does not exist", s.name, backend)
				continue
			}
			servers := 0
			sendsProxy := hasLine(b, "default-server", "send-proxy-v2")
			for _, l := range b.lines {
				if l[0] != "server" {
					continue
				}
				servers++
				ap, err := netip.ParseAddrPort(l[2])
				if err != nil {
					t.Errorf("backend %s: server %s: %v", b.name, l[1], err)
					continue
				}
				if int(ap.Port()) != bind {
					t.Errorf("frontend %s binds %d but backend %s sends to %v", s.name, bind, b.name, ap)
				}
				if !sendsProxy && !strings.Contains(strings.Join(l, " "), "send-proxy-v2") {
					t.Errorf("backend %s: server %s does not send-proxy-v2", b.name, l[1])
				}
			}
			if servers == 0 {
				t.Errorf("backend %s has no servers", b.name)
			}
			if _, ok := listenerPorts[bind]; !ok {
				t.Errorf("frontend %s binds %d, where mailgate.yaml has no listener", s.name, bind)
			}
			reached[bind] = true
			// Health checks ask /readyz on the metrics port, without a PROXY
			// header (the metrics listener takes none).
			if !hasLine(b, "http-check", "/readyz") || !hasLine(b, "default-server", "port") {
				t.Errorf("backend %s: health check is not GET /readyz on the metrics port", b.name)
			}
			if !hasLine(b, "default-server", strconv.Itoa(port(t, cfg.Metrics.Address))) {
				t.Errorf("backend %s: health check port is not mailgate's metrics port %s", b.name, cfg.Metrics.Address)
			}
		}
	}
	for p, name := range listenerPorts {
		if !reached[p] {
			t.Errorf("listener %s (port %d) has no HAProxy frontend", name, p)
		}
	}

	t.Run("haproxy -c", func(t *testing.T) {
		haproxy := optionalProgram(t, "haproxy")
		out, err := exec.Command(haproxy, "-c", "-f", "haproxy/haproxy.cfg").CombinedOutput()
		if err != nil || strings.Contains(string(out), "WARNING") || strings.Contains(string(out), "ALERT") {
			t.Errorf("haproxy -c -f haproxy.cfg: %v\n%s", err, out)
		}
	})
}

// hasLine reports whether a line of s starts with keyword and has word
// among its other fields.
func hasLine(s haproxySection, keyword, word string) bool {
	for _, l := range s.lines {
		if l[0] != keyword {
			continue
		}
		for _, f := range l[1:] {
			if f == word {
				return true
			}
		}
	}
	return false
}
