package deploy_test

import (
	"slices"
	"strings"
	"testing"
)

// runtimeUID is distroless's nonroot user, the image's USER.
const runtimeUID = "65532"

// TestDockerfileStateDirectory reads the Dockerfile as Docker would (no
// Docker engine needed): the final stage runs as 65532 and, before it
// declares VOLUME /var/lib/mailgate, creates that directory owned by 65532,
// so a named volume mounted there is initialised writable for ACME storage
// instead of root-owned.
func TestDockerfileStateDirectory(t *testing.T) {
	type stage struct {
		name  string
		lines []string
	}
	var stages []stage
	for _, line := range strings.Split(string(readFile(t, "../Dockerfile")), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if f := strings.Fields(line); f[0] == "FROM" {
			st := stage{}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				st.name = f[3]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
		}
	}
	if len(stages) == 0 {
		t.Fatal("the Dockerfile has no FROM")
	}
	final := stages[len(stages)-1]
	owner := func(s string) bool { return s == runtimeUID+":"+runtimeUID || s == "nonroot:nonroot" }

	created, volume, user := false, false, ""
	for _, line := range final.lines {
		f := strings.Fields(line)
		switch f[0] {
		case "USER":
			user = f[1]
		case "VOLUME":
			if strings.Contains(line, `"/var/lib/mailgate"`) || slices.Contains(f[1:], "/var/lib/mailgate") {
				volume = true
				if !created {
					t.Errorf("VOLUME /var/lib/mailgate comes before the directory is created owned by %s: Docker makes it root-owned", runtimeUID)
				}
			}
		case "COPY":
			// COPY --from=STAGE --chown=65532:65532 SRC /var/lib/mailgate,
			// where STAGE made SRC with mkdir.
			if f[len(f)-1] != "/var/lib/mailgate" && f[len(f)-1] != "/var/lib/mailgate/" {
				continue
			}
			var from, chown string
			var args []string
			for _, a := range f[1 : len(f)-1] {
				switch {
				case strings.HasPrefix(a, "--from="):
					from = strings.TrimPrefix(a, "--from=")
				case strings.HasPrefix(a, "--chown="):
					chown = strings.TrimPrefix(a, "--chown=")
				case !strings.HasPrefix(a, "--"):
					args = append(args, a)
				}
			}
			if !owner(chown) {
				t.Errorf("%q: want --chown=%s:%s", line, runtimeUID, runtimeUID)
				continue
			}
			made := false
			for _, st := range stages {
				if st.name != from {
					continue
				}
				for _, l := range st.lines {
					made = made || (strings.HasPrefix(l, "RUN ") && strings.Contains(l, "mkdir") && len(args) == 1 && slices.Contains(strings.Fields(l), args[0]))
				}
			}
			if !made {
				t.Errorf("%q: stage %q does not mkdir %v", line, from, args)
				continue
			}
			created = true
		case "RUN":
			// A base image with a shell could do it in place.
			if strings.Contains(line, "mkdir") && strings.Contains(line, "/var/lib/mailgate") &&
				(strings.Contains(line, "chown "+runtimeUID+":"+runtimeUID) || strings.Contains(line, "chown nonroot:nonroot")) {
				created = true
			}
		}
	}
	if !volume {
		t.Error("the final stage declares no VOLUME /var/lib/mailgate")
	}
	if !created {
		t.Errorf("the final stage never creates /var/lib/mailgate owned by %s", runtimeUID)
	}
	if !owner(user) {
		t.Errorf("the final stage runs as USER %q, want nonroot:nonroot (%s)", user, runtimeUID)
	}
}
