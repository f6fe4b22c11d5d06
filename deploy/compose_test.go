package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"mailgate/test/harness"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// composeFile is the subset of the Compose specification that
// compose/docker-compose.yaml uses; decodeStrict refuses any other key.
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]struct{}       `yaml:"volumes"`
}

type composeService struct {
	BuildRaw    any      `yaml:"build"` // a context path, or {context, dockerfile, args}
	Image       string   `yaml:"image"`
	Hostname    string   `yaml:"hostname"`
	Command     []string `yaml:"command"`
	Volumes     []string `yaml:"volumes"`
	Ports       []string `yaml:"ports"`
	Expose      []string `yaml:"expose"`
	CapDrop     []string `yaml:"cap_drop"`
	SecurityOpt []string `yaml:"security_opt"`
	ReadOnly    bool     `yaml:"read_only"`
	Tmpfs       []string `yaml:"tmpfs"`
	Restart     string   `yaml:"restart"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		Retries     int      `yaml:"retries"`
		StartPeriod string   `yaml:"start_period"`
	} `yaml:"healthcheck"`
}

// buildContext returns the service's build context and Dockerfile.
func (s composeService) buildContext(t *testing.T) (context, dockerfile string) {
	t.Helper()
	switch b := s.BuildRaw.(type) {
	case string:
		return b, "Dockerfile"
	case map[string]any:
		for k := range b {
			if !slices.Contains([]string{"context", "dockerfile", "args"}, k) {
				t.Errorf("build: unknown key %q", k)
			}
		}
		context, _ = b["context"].(string)
		dockerfile, _ = b["dockerfile"].(string)
		if dockerfile == "" {
			dockerfile = "Dockerfile"
		}
		return context, dockerfile
	}
	t.Fatalf("build: %T is neither a path nor a mapping", s.BuildRaw)
	return "", ""
}

// mount is one entry of a service's volumes: a host path (./x, relative to
// the compose file) or a named volume, mounted at Target.
type mount struct {
	Source, Target string
	ReadOnly       bool
	Named          bool // Source is a top-level volume, not a host path
}

func mounts(t *testing.T, s composeService) []mount {
	t.Helper()
	var ms []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 {
			t.Fatalf("volume %q is not SOURCE:TARGET[:ro]", v)
		}
		m := mount{Source: parts[0], Target: parts[1]}
		if len(parts) == 3 {
			if parts[2] != "ro" && parts[2] != "rw" {
				t.Errorf("volume %q: mode %q is not ro or rw", v, parts[2])
			}
			m.ReadOnly = parts[2] == "ro"
		}
		m.Named = !strings.HasPrefix(m.Source, ".") && !strings.HasPrefix(m.Source, "/")
		ms = append(ms, m)
	}
	return ms
}

// mountFor returns the mount that holds container path p.
func mountFor(ms []mount, p string) (mount, bool) {
	var best mount
	found := false
	for _, m := range ms {
		if (p == m.Target || strings.HasPrefix(p, m.Target+"/")) && len(m.Target) >= len(best.Target) {
			best, found = m, true
		}
	}
	return best, found
}

// published is one "HOST_IP:HOST_PORT:CONTAINER_PORT" entry of ports.
type published struct {
	HostIP              string
	HostPort, Container int
}

func publishedPorts(t *testing.T, s composeService) []published {
	t.Helper()
	var ps []published
	for _, p := range s.Ports {
		parts := strings.Split(p, ":")
		if len(parts) != 3 {
			t.Errorf("port %q: publish as 127.0.0.1:HOST:CONTAINER, so the demo is not reachable from the network", p)
			continue
		}
		hp, err1 := strconv.Atoi(parts[1])
		cp, err2 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil {
			t.Errorf("port %q: not numbers", p)
			continue
		}
		ps = append(ps, published{parts[0], hp, cp})
	}
	return ps
}

// dockerfile is what the tests need from the repository's Dockerfile.
type dockerfile struct {
	Build       string   // the RUN line with go build
	Expose      []int    // EXPOSE
	Volumes     []string // VOLUME [...]
	Healthcheck []string // HEALTHCHECK ... CMD [...]
	Cmd         []string // CMD [...]
	Entrypoint  []string // ENTRYPOINT [...]
}

func readDockerfile(t *testing.T, p string) dockerfile {
	t.Helper()
	var d dockerfile
	jsonArray := func(line, after string) []string {
		i := strings.Index(line, after)
		if i < 0 {
			t.Fatalf("%s: %q has no %s", p, line, after)
		}
		var v []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(line[i+len(after):])), &v); err != nil {
			t.Fatalf("%s: %q: exec form wanted: %v", p, line, err)
		}
		return v
	}
	for _, line := range strings.Split(string(readFile(t, p)), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "RUN ") && strings.Contains(line, "go build"):
			d.Build = strings.TrimPrefix(line, "RUN ")
		case strings.HasPrefix(line, "EXPOSE "):
			for _, f := range strings.Fields(line)[1:] {
				n, err := strconv.Atoi(strings.TrimSuffix(f, "/tcp"))
				if err != nil {
					t.Fatalf("%s: EXPOSE %q", p, f)
				}
				d.Expose = append(d.Expose, n)
			}
		case strings.HasPrefix(line, "VOLUME "):
			d.Volumes = jsonArray(line, "VOLUME")
		case strings.HasPrefix(line, "HEALTHCHECK "):
			d.Healthcheck = jsonArray(line, " CMD ")
		case strings.HasPrefix(line, "CMD "):
			d.Cmd = jsonArray(line, "CMD")
		case strings.HasPrefix(line, "ENTRYPOINT "):
			d.Entrypoint = jsonArray(line, "ENTRYPOINT")
		}
	}
	return d
}

// configPath returns the -config argument of a mailgate command line.
func configPath(t *testing.T, args []string) string {
	t.Helper()
	i := slices.Index(args, "-config")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("%q has no -config FILE", args)
	}
	return args[i+1]
}

// TestCompose checks compose/ as `docker compose up` would use it, without
// Docker: the file decodes with only known keys; mailgate.yaml validates
// with the certificates gen-certs.sh makes, mounted where it looks for them;
// every listener and the metrics port are published on 127.0.0.1, on
// unprivileged host ports, and the README's commands use those ports; the
// backend is the Dovecot service, on the port dovecot.conf listens on, with
// the files dovecot.conf names mounted where it reads them.
func TestCompose(t *testing.T) {
	var cf composeFile
	decodeStrict(t, "compose/docker-compose.yaml", readFile(t, "compose/docker-compose.yaml"), &cf)
	mg, ok := cf.Services["mailgate"]
	if !ok {
		t.Fatalf("no service mailgate (services: %v)", keys(cf.Services))
	}
	dc, ok := cf.Services["dovecot"]
	if !ok {
		t.Fatalf("no service dovecot (services: %v)", keys(cf.Services))
	}

	// mailgate is built from the repository's Dockerfile and started with
	// its CMD, which names the configuration file.
	ctx, df := mg.buildContext(t)
	dockerfilePath := filepath.Join("compose", ctx, df)
	if _, err := os.Stat(filepath.Join("compose", ctx, "go.mod")); err != nil {
		t.Errorf("mailgate build context %q is not the repository root: %v", ctx, err)
	}
	d := readDockerfile(t, dockerfilePath)
	cfgInContainer := configPath(t, d.Cmd)
	mgMounts := mounts(t, mg)

	// mailgate.yaml is mounted where CMD reads it, from this folder.
	cfgMount, ok := mountFor(mgMounts, cfgInContainer)
	if !ok || cfgMount.Named {
		t.Fatalf("no host file mounted at %s (the Dockerfile's CMD -config)", cfgInContainer)
	}
	cfgHost := filepath.Join("compose", cfgMount.Source, strings.TrimPrefix(cfgInContainer, cfgMount.Target))
	if !cfgMount.ReadOnly {
		t.Errorf("%s is mounted read-write; :ro is enough", cfgInContainer)
	}

	// It validates once /etc/mailgate/certs is the output of gen-certs.sh.
	certs := demoCerts(t)
	certMount, ok := mountFor(mgMounts, "/etc/mailgate/certs/mailgate.crt")
	if !ok || certMount.Named || filepath.Clean(certMount.Source) != "certs" {
		t.Fatalf("./certs (gen-certs.sh's output) is not mounted at /etc/mailgate/certs: %+v", certMount)
	}
	cfg, _ := parseConfig(t, cfgHost, readFile(t, cfgHost), map[string]string{"/etc/mailgate/certs": certs})

	// Every file the configuration names is inside a mount.
	var files []string
	for _, c := range cfg.TLS.Certificates {
		files = append(files, c.Cert, c.Key)
	}
	for _, b := range cfg.Backends {
		if b.CA != "" {
			files = append(files, b.CA)
		}
	}
	for _, f := range files {
		inContainer := strings.Replace(f, certs, "/etc/mailgate/certs", 1)
		if _, ok := mountFor(mgMounts, inContainer); !ok {
			t.Errorf("mailgate.yaml names %s, which no volume of the mailgate service provides", inContainer)
		}
	}

	// Ports: each listener, and metrics, published on 127.0.0.1 above 1023.
	pub := publishedPorts(t, mg)
	hostPort := map[int]int{} // container -> host
	for _, p := range pub {
		if p.HostIP != "127.0.0.1" {
			t.Errorf("port %d is published on %q; 127.0.0.1 keeps the demo off the network", p.HostPort, p.HostIP)
		}
		if p.HostPort < 1024 {
			t.Errorf("host port %d needs root; use a port above 1023", p.HostPort)
		}
		hostPort[p.Container] = p.HostPort
	}
	want := []int{port(t, cfg.Metrics.Address)}
	for _, l := range cfg.Listeners {
		want = append(want, port(t, l.Address))
	}
	for _, c := range want {
		if _, ok := hostPort[c]; !ok {
			t.Errorf("container port %d (mailgate.yaml) is not published by the mailgate service", c)
		}
		if !slices.Contains(d.Expose, c) {
			t.Errorf("container port %d (mailgate.yaml) is not in the Dockerfile's EXPOSE %v", c, d.Expose)
		}
	}
	if len(pub) != len(want) {
		t.Errorf("the mailgate service publishes %d ports, mailgate.yaml listens on %d", len(pub), len(want))
	}
	// The Dockerfile's HEALTHCHECK asks the metrics port of this config.
	if hc := strings.Join(d.Healthcheck, " "); !strings.Contains(hc, fmt.Sprintf("127.0.0.1:%d/healthz", port(t, cfg.Metrics.Address))) {
		t.Errorf("the Dockerfile's HEALTHCHECK %q does not ask /healthz on the metrics port of %s", hc, cfgHost)
	}

	// The README tells the truth about ports and credentials.
	readme := string(readFile(t, "compose/README.md"))
	for _, l := range cfg.Listeners {
		scheme := l.Protocol
		if l.TLS == "implicit" {
			scheme += "s"
		}
		url := fmt.Sprintf("%s://localhost:%d/", scheme, hostPort[port(t, l.Address)])
		if !strings.Contains(readme, url) {
			t.Errorf("compose/README.md has no command for listener %s (%s)", l.Name, url)
		}
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if u := fmt.Sprintf("http://127.0.0.1:%d%s", hostPort[port(t, cfg.Metrics.Address)], p); !strings.Contains(readme, u) {
			t.Errorf("compose/README.md does not show %s", u)
		}
	}
	if !strings.Contains(readme, "docker compose up") || !strings.Contains(readme, "./gen-certs.sh") {
		t.Errorf("compose/README.md lacks the steps ./gen-certs.sh and docker compose up")
	}

	// Hardening of the mailgate container, and a writable /tmp for spooled
	// POP3 bodies on its read-only root.
	if !mg.ReadOnly || !slices.Contains(mg.CapDrop, "ALL") || !slices.Contains(mg.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("mailgate service: want read_only, cap_drop [ALL], no-new-privileges; got %v %v %v", mg.ReadOnly, mg.CapDrop, mg.SecurityOpt)
	}
	if !slices.ContainsFunc(mg.Tmpfs, func(s string) bool { return strings.HasPrefix(s, "/tmp") }) {
		t.Errorf("mailgate service: read_only needs a tmpfs on /tmp for POP3 spooling")
	}
	if m, ok := mountFor(mgMounts, "/var/lib/mailgate"); !ok || !m.Named || !slices.Contains(d.Volumes, "/var/lib/mailgate") {
		t.Errorf("mailgate's state (the Dockerfile's VOLUME /var/lib/mailgate) is not on a named volume: %+v", m)
	}

	// The backend is the dovecot service, on the port its configuration
	// listens on, and mailgate waits for it to be healthy.
	if len(cfg.Backends) != 1 || cfg.Backends["dovecot"] == nil {
		t.Fatalf("backends %v: want the one backend dovecot", cfg.BackendNames())
	}
	be := cfg.Backends["dovecot"]
	host := strings.Split(be.Address, ":")[0]
	if _, ok := cf.Services[host]; !ok {
		t.Errorf("backend address %s is not a compose service", be.Address)
	}
	conf := string(readFile(t, "compose/dovecot/dovecot.conf"))
	imapPort := dovecotListenerPort(t, conf, "imap")
	if port(t, be.Address) != imapPort {
		t.Errorf("backend %s, but dovecot.conf's imap listener is on %d", be.Address, imapPort)
	}
	if !slices.Contains(dc.Expose, strconv.Itoa(imapPort)) {
		t.Errorf("the dovecot service does not expose %d", imapPort)
	}
	if len(dc.Ports) != 0 {
		t.Errorf("the dovecot service publishes %v; only mailgate should reach it", dc.Ports)
	}
	if mg.DependsOn["dovecot"].Condition != "service_healthy" || dc.Healthcheck == nil {
		t.Errorf("mailgate must wait for a healthy dovecot (depends_on condition service_healthy, and a healthcheck)")
	} else if hc := strings.Join(dc.Healthcheck.Test, " "); !strings.Contains(hc, fmt.Sprintf("/dev/tcp/127.0.0.1/%d", imapPort)) || !strings.Contains(hc, "$$line") {
		// $$ is compose's escape for a literal $: a single $line would be
		// interpolated by compose (to nothing) before bash sees it.
		t.Errorf("dovecot healthcheck %q: want a greeting check on %d with $$-escaped variables", hc, imapPort)
	}

	// The files dovecot.conf reads are mounted where it reads them, from
	// files that exist here; its own build context exists.
	dcMounts := mounts(t, dc)
	for _, f := range []string{"/etc/dovecot/dovecot.conf", "/etc/dovecot/users", "/etc/dovecot/certs/dovecot.crt", "/etc/dovecot/certs/dovecot.key"} {
		if f != "/etc/dovecot/dovecot.conf" && !strings.Contains(conf, f) {
			t.Errorf("dovecot.conf does not read %s", f)
		}
		m, ok := mountFor(dcMounts, f)
		if !ok || m.Named || !m.ReadOnly {
			t.Errorf("%s: not mounted read-only from a host file (%+v)", f, m)
			continue
		}
		if filepath.Clean(m.Source) == "certs" {
			continue // made by gen-certs.sh
		}
		if _, err := os.Stat(filepath.Join("compose", m.Source)); err != nil {
			t.Errorf("%s is mounted from %s: %v", f, m.Source, err)
		}
	}
	dcCtx, dcDockerfile := dc.buildContext(t)
	if _, err := os.Stat(filepath.Join("compose", dcCtx, dcDockerfile)); err != nil {
		t.Errorf("dovecot build: %v", err)
	}
	maildirs, ok := mountFor(dcMounts, "/srv/mail/demo")
	if !ok || !maildirs.Named || !strings.Contains(conf, "home=/srv/mail/") {
		t.Errorf("the maildirs (/srv/mail in dovecot.conf) are not on a named volume: %+v", maildirs)
	}

	// Named volumes are declared; declared volumes are used.
	used := map[string]bool{}
	for _, s := range cf.Services {
		for _, m := range mounts(t, s) {
			if m.Named {
				used[m.Source] = true
				if _, ok := cf.Volumes[m.Source]; !ok {
					t.Errorf("volume %s is used but not declared under volumes:", m.Source)
				}
			}
		}
	}
	for v := range cf.Volumes {
		if !used[v] {
			t.Errorf("volume %s is declared but no service uses it", v)
		}
	}

	// Cluster mode: two replicas of the mailgate image on the same
	// configuration, each on host ports of its own and a host name of its
	// own (cluster.instance), sharing the Redis service that
	// cluster.redis.addresses names, which only they reach.
	if cfg.Cluster == nil {
		t.Fatal("mailgate.yaml has no cluster: section; the demo runs two replicas sharing one Redis")
	}
	var replicas []string
	for name, s := range cf.Services {
		if s.Image == mg.Image {
			replicas = append(replicas, name)
		}
	}
	slices.Sort(replicas)
	if len(replicas) != 2 {
		t.Errorf("services on the mailgate image: %v, want two replicas", replicas)
	}
	hosts := map[string]string{}
	taken := map[int]string{}
	for _, name := range replicas {
		s := cf.Services[name]
		if m, ok := mountFor(mounts(t, s), cfgInContainer); !ok || m.Source != cfgMount.Source {
			t.Errorf("replica %s does not mount %s from %s", name, cfgInContainer, cfgMount.Source)
		}
		if s.Hostname == "" || hosts[s.Hostname] != "" {
			t.Errorf("replica %s: host name %q is empty or also %s's: lock owners and logs could not tell them apart", name, s.Hostname, hosts[s.Hostname])
		}
		hosts[s.Hostname] = name
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
			t.Errorf("replica %s is not hardened like mailgate", name)
		}
		pp := publishedPorts(t, s)
		if len(pp) != len(want) {
			t.Errorf("replica %s publishes %d ports, mailgate.yaml listens on %d", name, len(pp), len(want))
		}
		for _, p := range pp {
			if other, dup := taken[p.HostPort]; dup {
				t.Errorf("host port %d is published by %s and %s", p.HostPort, other, name)
			}
			taken[p.HostPort] = name
			if p.HostIP != "127.0.0.1" {
				t.Errorf("replica %s publishes %d on %q", name, p.HostPort, p.HostIP)
			}
		}
		if _, ok := s.DependsOn["redis"]; !ok && len(cfg.Cluster.Redis.Addresses) > 0 {
			t.Errorf("replica %s does not start after the redis service", name)
		}
	}
	for _, a := range cfg.Cluster.Redis.Addresses {
		host := strings.Split(a, ":")[0]
		rs, ok := cf.Services[host]
		if !ok {
			t.Errorf("cluster.redis.addresses %s is not a compose service", a)
			continue
		}
		if !strings.HasPrefix(rs.Image, "redis:") {
			t.Errorf("service %s runs %q, not Redis", host, rs.Image)
		}
		if !slices.Contains(rs.Expose, strconv.Itoa(port(t, a))) || len(rs.Ports) != 0 {
			t.Errorf("service %s: want port %d exposed to the replicas and nothing published (expose %v, ports %v)", host, port(t, a), rs.Expose, rs.Ports)
		}
	}

	// The demo user of the README exists with the README's password.
	if !slices.Contains(dovecotUsers(t, "compose/dovecot/users"), "demo:{PLAIN}demo") || !strings.Contains(readme, "-u demo:demo") {
		t.Errorf("dovecot/users and README.md disagree on the demo user demo:demo")
	}
}

// dovecotListenerPort returns the port of `inet_listener NAME { port = N }`.
func dovecotListenerPort(t *testing.T, conf, name string) int {
	t.Helper()
	re := regexp.MustCompile(`inet_listener\s+` + regexp.QuoteMeta(name) + `\s*\{\s*port\s*=\s*(\d+)\s*\}`)
	m := re.FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf("dovecot.conf has no inet_listener %s with a port", name)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// dovecotUsers returns the user:password part of each passwd-file entry.
func dovecotUsers(t *testing.T, p string) []string {
	t.Helper()
	var users []string
	for _, line := range strings.Split(string(readFile(t, p)), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 8 {
			t.Errorf("%s: %q has %d fields, a passwd-file line has 8 (user:password:uid:gid:gecos:home:shell:extra)", p, line, len(f))
			continue
		}
		users = append(users, f[0]+":"+f[1])
	}
	return users
}

// TestComposeCerts: gen-certs.sh makes what the configurations expect: a
// mailgate certificate that curl accepts for localhost and 127.0.0.1 with
// --cacert ca.crt, a Dovecot certificate that mailgate accepts for the
// service name, keys that match, the CA key kept private, and a second run
// changes nothing.
func TestComposeCerts(t *testing.T) {
	dir := demoCerts(t)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readFile(t, filepath.Join(dir, "ca.crt"))) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, c := range []struct {
		name  string
		hosts []string
	}{
		{"mailgate", []string{"localhost", "127.0.0.1", "::1", "mailgate"}},
		{"dovecot", []string{"dovecot"}},
	} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, c.name+".crt"), filepath.Join(dir, c.name+".key"))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for _, h := range c.hosts {
			if _, err := pair.Leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots}); err != nil {
				t.Errorf("%s.crt for %s: %v", c.name, h, err)
			}
		}
		if pair.Leaf.IsCA {
			t.Errorf("%s.crt is a CA", c.name)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: want mode 0600: %v %v", fi.Mode(), err)
	}
	before := readFile(t, filepath.Join(dir, "mailgate.crt"))
	if out, err := exec.Command("sh", "compose/gen-certs.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	after := readFile(t, filepath.Join(dir, "mailgate.crt"))
	if string(before) != string(after) {
		t.Error("a second run of gen-certs.sh replaced mailgate.crt; it must keep existing certificates")
	}
	if b, _ := pem.Decode(after); b == nil || b.Type != "CERTIFICATE" {
		t.Error("mailgate.crt is not PEM")
	}
}

// TestComposeDovecotConf checks dovecot.conf with Dovecot's own parser, with
// the certificate paths pointed at gen-certs.sh's output so that doveconf
// also reads them. The image installs Debian 12's dovecot-imapd, the version
// .ci/run installs here.
func TestComposeDovecotConf(t *testing.T) {
	doveconf := harness.NeedProgram(t, "doveconf")
	certs := demoCerts(t)
	conf := strings.ReplaceAll(string(readFile(t, "compose/dovecot/dovecot.conf")), "/etc/dovecot/certs/", certs+"/")
	p := filepath.Join(t.TempDir(), "dovecot.conf")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(doveconf, "-c", p, "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("doveconf -c dovecot.conf -n: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "Warning") || strings.Contains(string(out), "Error") {
		t.Errorf("doveconf complains:\n%s", out)
	}
	// What the demo relies on: IMAP only, TLS before any password.
	// (doveconf -n prints only settings that differ from the defaults, and
	// disable_plaintext_auth = yes is the default.)
	for _, want := range []string{"protocols = imap\n", "ssl = required\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("doveconf -n lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "disable_plaintext_auth = no") {
		t.Errorf("dovecot.conf accepts passwords without TLS")
	}
	// The entrypoint seeds the maildir the userdb points at.
	entry := string(readFile(t, "compose/dovecot/entrypoint.sh"))
	if !strings.Contains(entry, "/srv/mail/demo/Maildir") || !strings.Contains(conf, "home=/srv/mail/%u") || !strings.Contains(conf, "maildir:~/Maildir") {
		t.Errorf("entrypoint.sh seeds a maildir other than the demo user's home (home=/srv/mail/%%u, maildir:~/Maildir)")
	}
	if out, err := exec.Command("sh", "-n", "compose/dovecot/entrypoint.sh").CombinedOutput(); err != nil {
		t.Errorf("entrypoint.sh: %v\n%s", err, out)
	}
}

func keys[M ~map[string]V, V any](m M) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
