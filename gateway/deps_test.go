package gateway

import (
	"os/exec"
	"strings"
	"testing"
)

// The architecture, as the import graph keeps it: the protocol fronts know
// nothing of mailgate but their own gateway/internal helpers (they declare
// the interfaces and errors they need; gateway/login.go adapts upstream and
// routing to them), and no product package imports test code.
func TestImportBoundaries(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not on PATH: cannot read the import graph")
	}
	for _, front := range []string{"mailgate/gateway/pop3", "mailgate/gateway/imap"} {
		out, err := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", front).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", front, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == front || !strings.HasPrefix(dep, "mailgate/") {
				continue
			}
			if !strings.HasPrefix(dep, "mailgate/gateway/internal/") {
				t.Errorf("%s depends on %s; a front may import only mailgate/gateway/internal/...", front, dep)
			}
		}
	}
	out, err := exec.Command(gobin, "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "mailgate/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list mailgate/...: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "mailgate/test/") || f[0] == "mailgate/test" {
			continue
		}
		checked++
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, "mailgate/test/") || imp == "mailgate/test" {
				t.Errorf("product package %s imports %s (test code)", f[0], imp)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d packages checked: the listing is wrong", checked)
	}
}
