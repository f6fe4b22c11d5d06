package deploy_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The parts of the Kubernetes objects the tests look at.
type (
	k8sMeta struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name   string            `yaml:"name"`
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
	}
	k8sConfigMap struct {
		Data map[string]string `yaml:"data"`
	}
	k8sSecret struct {
		StringData map[string]string `yaml:"stringData"`
		Data       map[string]string `yaml:"data"`
	}
	k8sPVC struct {
		Spec struct {
			AccessModes []string `yaml:"accessModes"`
		} `yaml:"spec"`
	}
	k8sService struct {
		Spec struct {
			Type                  string            `yaml:"type"`
			ExternalTrafficPolicy string            `yaml:"externalTrafficPolicy"`
			Selector              map[string]string `yaml:"selector"`
			Ports                 []struct {
				Name       string `yaml:"name"`
				Port       int    `yaml:"port"`
				TargetPort any    `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	k8sProbe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
	}
	k8sDeployment struct {
		Spec struct {
			Replicas int `yaml:"replicas"`
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec struct {
					TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
					SecurityContext               struct {
						RunAsNonRoot *bool `yaml:"runAsNonRoot"`
						RunAsUser    int   `yaml:"runAsUser"`
						FSGroup      int   `yaml:"fsGroup"`
					} `yaml:"securityContext"`
					Containers []struct {
						Name  string   `yaml:"name"`
						Image string   `yaml:"image"`
						Args  []string `yaml:"args"`
						Ports []struct {
							Name          string `yaml:"name"`
							ContainerPort int    `yaml:"containerPort"`
						} `yaml:"ports"`
						SecurityContext struct {
							AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
							ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
							Capabilities             struct {
								Drop []string `yaml:"drop"`
							} `yaml:"capabilities"`
						} `yaml:"securityContext"`
						Resources struct {
							Requests map[string]string `yaml:"requests"`
							Limits   map[string]string `yaml:"limits"`
						} `yaml:"resources"`
						LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
						ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
						VolumeMounts   []struct {
							Name      string `yaml:"name"`
							MountPath string `yaml:"mountPath"`
							ReadOnly  bool   `yaml:"readOnly"`
						} `yaml:"volumeMounts"`
					} `yaml:"containers"`
					Volumes []struct {
						Name      string `yaml:"name"`
						ConfigMap *struct {
							Name string `yaml:"name"`
						} `yaml:"configMap"`
						PersistentVolumeClaim *struct {
							ClaimName string `yaml:"claimName"`
						} `yaml:"persistentVolumeClaim"`
						Secret *struct {
							SecretName string `yaml:"secretName"`
						} `yaml:"secret"`
						EmptyDir any `yaml:"emptyDir"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
)

// k8sObject is one document of a manifest, with its node for decoding the
// kind-specific parts.
type k8sObject struct {
	k8sMeta
	file string
	node *yaml.Node
}

func (o k8sObject) decode(t *testing.T, v any) {
	t.Helper()
	if err := o.node.Decode(v); err != nil {
		t.Fatalf("%s: %v", o.file, err)
	}
}

// TestKubernetes checks deploy/kubernetes as kubectl apply -k would take it:
// kustomization.yaml lists every manifest; the ConfigMap's mailgate.yaml
// validates; the Deployment reads it from where the ConfigMap is mounted,
// opens a container port for each listener and the metrics address, probes
// /healthz and /readyz on the metrics port, runs non-root on a read-only
// root with ACME storage in the cluster's Redis (or on a ReadWriteMany
// PVC); the Service publishes each listener on
// its well-known port and keeps client addresses.
func TestKubernetes(t *testing.T) {
	var kust struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Namespace  string   `yaml:"namespace"`
		Resources  []string `yaml:"resources"`
		Images     []struct {
			Name    string `yaml:"name"`
			NewName string `yaml:"newName"`
			NewTag  string `yaml:"newTag"`
		} `yaml:"images"`
	}
	decodeStrict(t, "kustomization.yaml", readFile(t, "kubernetes/kustomization.yaml"), &kust)
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" && !slices.Contains(kust.Resources, base) {
			t.Errorf("%s is not among kustomization.yaml's resources %v", base, kust.Resources)
		}
	}

	byKind := map[string]k8sObject{}
	for _, r := range kust.Resources {
		p := filepath.Join("kubernetes", r)
		for _, doc := range yamlDocuments(t, p, readFile(t, p)) {
			o := k8sObject{file: r, node: doc}
			o.decode(t, &o.k8sMeta)
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Errorf("%s: apiVersion, kind and metadata.name are required", r)
			}
			if _, dup := byKind[o.Kind]; dup {
				t.Errorf("%s: a second %s", r, o.Kind)
			}
			byKind[o.Kind] = o
		}
	}
	for _, kind := range []string{"ConfigMap", "Deployment", "Service"} {
		if _, ok := byKind[kind]; !ok {
			t.Fatalf("no %s among %v", kind, keys(byKind))
		}
	}

	var cm k8sConfigMap
	byKind["ConfigMap"].decode(t, &cm)
	var dep k8sDeployment
	byKind["Deployment"].decode(t, &dep)
	var svc k8sService
	byKind["Service"].decode(t, &svc)
	var pvc k8sPVC
	pvcObj, havePVC := byKind["PersistentVolumeClaim"]
	if havePVC {
		pvcObj.decode(t, &pvc)
	}

	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(dep.Spec.Template.Spec.Containers))
	}
	c := dep.Spec.Template.Spec.Containers[0]
	pod := dep.Spec.Template.Spec
	podLabels := dep.Spec.Template.Metadata.Labels
	volumes := map[string]int{}
	for i, v := range pod.Volumes {
		volumes[v.Name] = i
	}
	// mountOf returns the volume mounted at the longest prefix of p.
	mountOf := func(p string) (name, mountPath string, readOnly bool) {
		for _, m := range c.VolumeMounts {
			if (p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/")) && len(m.MountPath) > len(mountPath) {
				name, mountPath, readOnly = m.Name, m.MountPath, m.ReadOnly
			}
		}
		return name, mountPath, readOnly
	}

	// The configuration: -config names a file in the ConfigMap's mount.
	cfgPath := configPath(t, c.Args)
	vol, mp, ro := mountOf(cfgPath)
	if i, ok := volumes[vol]; !ok || pod.Volumes[i].ConfigMap == nil || pod.Volumes[i].ConfigMap.Name != byKind["ConfigMap"].Metadata.Name || !ro {
		t.Fatalf("-config %s is not in a read-only mount of ConfigMap %s", cfgPath, byKind["ConfigMap"].Metadata.Name)
	}
	key := strings.TrimPrefix(cfgPath, mp+"/")
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("-config %s: the ConfigMap has no key %q (keys %v)", cfgPath, key, keys(cm.Data))
	}
	state := t.TempDir()
	// The Secret's files, where the pod mounts them.
	secretDir := t.TempDir()
	var secret k8sSecret
	secretObj, haveSecret := byKind["Secret"]
	if haveSecret {
		secretObj.decode(t, &secret)
		for k, v := range secret.StringData {
			if err := os.WriteFile(filepath.Join(secretDir, k), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg, _ := parseConfig(t, "configmap.yaml "+key, []byte(data),
		map[string]string{"/etc/mailgate-redis": secretDir})

	// Cluster mode: the replicas share locks and counts in Redis, whose
	// address is in the ConfigMap and whose password is a file of the
	// Secret, mounted read-only.
	if cfg.Cluster == nil || len(cfg.Cluster.Redis.Addresses) == 0 {
		t.Fatal("the ConfigMap's configuration has no cluster: section; the replicas would not share their locks and limits")
	}
	if pf := cfg.Cluster.Redis.PasswordFile; pf != "" {
		pf = strings.Replace(pf, secretDir, "/etc/mailgate-redis", 1)
		vol, mp, ro := mountOf(pf)
		i, ok := volumes[vol]
		if !ok || pod.Volumes[i].Secret == nil || !ro {
			t.Fatalf("cluster.redis.password_file %s is not in a read-only mount of a Secret", pf)
		}
		if !haveSecret || pod.Volumes[i].Secret.SecretName != secretObj.Metadata.Name {
			t.Errorf("the password's volume names Secret %q, which is not among the resources", pod.Volumes[i].Secret.SecretName)
		}
		if _, ok := secret.StringData[strings.TrimPrefix(pf, mp+"/")]; !ok {
			t.Errorf("Secret %s has no key %q for cluster.redis.password_file", secretObj.Metadata.Name, strings.TrimPrefix(pf, mp+"/"))
		}
	}
	if cfg.Cluster.Instance == "" {
		t.Errorf("cluster.instance is empty: each pod must be named (the default is the host name, the pod's name)")
	}

	// ACME storage: in the cluster's Redis, so the replicas need no shared
	// volume; a directory instead must be on a ReadWriteMany claim.
	if cfg.TLS.ACME == nil {
		t.Fatal("the ConfigMap's configuration has no tls.acme")
	}
	if cfg.TLS.ACME.Storage == "redis" {
		if havePVC {
			t.Errorf("tls.acme.storage is redis, yet %s holds a PersistentVolumeClaim nobody needs", pvcObj.file)
		}
		for _, v := range pod.Volumes {
			if v.PersistentVolumeClaim != nil {
				t.Errorf("volume %s mounts claim %s; with storage: redis the pods share no volume", v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		}
	} else {
		storage := strings.Replace(cfg.TLS.ACME.Storage, state, "/var/lib/mailgate", 1)
		vol, _, ro = mountOf(storage)
		if i, ok := volumes[vol]; !ok || !havePVC || pod.Volumes[i].PersistentVolumeClaim == nil ||
			pod.Volumes[i].PersistentVolumeClaim.ClaimName != pvcObj.Metadata.Name || ro {
			t.Errorf("tls.acme.storage %s is not on a writable mount of a PersistentVolumeClaim", storage)
		}
		if dep.Spec.Replicas > 1 && !slices.Contains(pvc.Spec.AccessModes, "ReadWriteMany") {
			t.Errorf("%d replicas share the ACME claim, which is %v: it must be ReadWriteMany (or use 1 replica)", dep.Spec.Replicas, pvc.Spec.AccessModes)
		}
	}
	if dep.Spec.Replicas != 2 {
		t.Errorf("replicas %d, want 2", dep.Spec.Replicas)
	}

	// Ports: a named container port for every listener, ACME challenge and
	// the metrics address.
	containerPorts := map[string]int{}
	for _, p := range c.Ports {
		containerPorts[p.Name] = p.ContainerPort
	}
	portByNumber := map[int]string{}
	for name, n := range containerPorts {
		portByNumber[n] = name
	}
	metricsPort := port(t, cfg.Metrics.Address)
	if strings.HasPrefix(cfg.Metrics.Address, "127.") || strings.HasPrefix(cfg.Metrics.Address, "localhost") {
		t.Errorf("metrics.address %s: the kubelet's probes come from outside the pod; listen on all interfaces", cfg.Metrics.Address)
	}
	if _, ok := portByNumber[metricsPort]; !ok {
		t.Errorf("no container port for metrics.address %s", cfg.Metrics.Address)
	}
	probe := func(name string, p *k8sProbe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe of %s", name, path)
			return
		}
		if p.HTTPGet.Path != path {
			t.Errorf("%s probes %s, want %s", name, p.HTTPGet.Path, path)
		}
		if n := resolvePort(p.HTTPGet.Port, containerPorts); n != metricsPort {
			t.Errorf("%s probes port %v (%d), want the metrics port %d of the ConfigMap", name, p.HTTPGet.Port, n, metricsPort)
		}
	}
	probe("livenessProbe", c.LivenessProbe, "/healthz")
	probe("readinessProbe", c.ReadinessProbe, "/readyz")

	// The Service: each listener on its well-known port, by name.
	if svc.Spec.Type != "LoadBalancer" || svc.Spec.ExternalTrafficPolicy != "Local" {
		t.Errorf("Service: want type LoadBalancer with externalTrafficPolicy Local (client addresses kept), got %s/%s", svc.Spec.Type, svc.Spec.ExternalTrafficPolicy)
	}
	for k, v := range svc.Spec.Selector {
		if podLabels[k] != v {
			t.Errorf("Service selector %s=%s does not select the pods (labels %v)", k, v, podLabels)
		}
	}
	for k, v := range dep.Spec.Selector.MatchLabels {
		if podLabels[k] != v {
			t.Errorf("Deployment selector %s=%s does not select its own pods", k, v)
		}
	}
	servicePort := map[int]int{} // container port -> service port
	for _, p := range svc.Spec.Ports {
		n := resolvePort(p.TargetPort, containerPorts)
		if n == 0 {
			t.Errorf("Service port %s: targetPort %v is not a container port", p.Name, p.TargetPort)
		}
		servicePort[n] = p.Port
	}
	for _, l := range cfg.Listeners {
		cp := port(t, l.Address)
		if _, ok := portByNumber[cp]; !ok {
			t.Errorf("listener %s (%s): no container port %d", l.Name, l.Address, cp)
		}
		if want := wellKnownPort(l.Protocol, l.TLS); servicePort[cp] != want {
			t.Errorf("listener %s (%s %s): the Service publishes it on %d, clients expect %d", l.Name, l.Protocol, l.TLS, servicePort[cp], want)
		}
		if len(l.ProxyProtocol) > 0 {
			t.Errorf("listener %s expects PROXY headers, but the Service sends none (externalTrafficPolicy Local)", l.Name)
		}
	}
	if a := cfg.TLS.ACME.Challenges.TLSALPN; a != "" && servicePort[port(t, a)] != 443 {
		t.Errorf("the TLS-ALPN-01 challenge listener %s is not published on 443 (the only port the CA uses)", a)
	}
	if a := cfg.TLS.ACME.Challenges.HTTP; a != "" && servicePort[port(t, a)] != 80 {
		t.Errorf("the HTTP-01 challenge listener %s is not published on 80 (the only port the CA uses)", a)
	}
	if _, ok := servicePort[metricsPort]; ok {
		t.Errorf("the LoadBalancer publishes the metrics port")
	}

	// Non-root, read-only root, no capabilities, room to spool.
	sc := c.SecurityContext
	if pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("pod must run as non-root")
	}
	if havePVC && pod.SecurityContext.FSGroup == 0 {
		t.Errorf("pod has no fsGroup: the non-root user cannot write the ACME volume")
	}
	if !sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container securityContext: want readOnlyRootFilesystem, allowPrivilegeEscalation false, drop ALL; got %+v", sc)
	}
	for _, l := range cfg.Listeners {
		if port(t, l.Address) < 1024 {
			t.Errorf("listener %s on a port below 1024 needs a capability the container drops", l.Name)
		}
	}
	if vol, mp, _ := mountOf("/tmp/x"); mp != "/tmp" || pod.Volumes[volumes[vol]].EmptyDir == nil {
		t.Errorf("no emptyDir on /tmp: POP3 bodies spool there and the root is read-only")
	}
	if c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" || c.Resources.Requests["cpu"] == "" {
		t.Errorf("resources: want cpu and memory requests and a memory limit, got %+v", c.Resources)
	}
	if g := pod.TerminationGracePeriodSeconds; g == 0 || float64(g) <= cfg.Timeouts.Shutdown.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %d must exceed timeouts.shutdown %v", g, cfg.Timeouts.Shutdown)
	}
	if len(kust.Images) == 0 || kust.Images[0].Name != strings.Split(c.Image, ":")[0] {
		t.Errorf("kustomization.yaml images do not rename the container image %s", c.Image)
	}
}

// resolvePort returns the number a probe's or a Service's port refers to:
// a number, or the name of a container port.
func resolvePort(p any, named map[string]int) int {
	switch v := p.(type) {
	case int:
		return v
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		return named[v]
	}
	return 0
}
