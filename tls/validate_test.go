package tls

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateCreatesNothing: validating an ACME section whose storage does
// not exist yet passes (serve will create it) and leaves it absent; serve's
// prepareStorage then creates it, and fails with the key and the path when
// it cannot.
func TestValidateCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	storage := filepath.Join(dir, "lib", "mailgate", "acme")
	c := Config{MinVersion: "1.2", ACME: &ACMEConfig{Domains: []string{"mail.example.com"}, Email: "pm@example.com", Storage: storage}}
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatalf("Validate: %v", errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "lib")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Validate created %s (stat: %v)", filepath.Join(dir, "lib"), err)
	}
	if err := prepareStorage(storage); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(storage); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("prepareStorage: %v %v", fi, err)
	}
	entries, _ := os.ReadDir(storage)
	if len(entries) != 0 {
		t.Errorf("prepareStorage left %v behind", entries)
	}

	// Below a regular file: neither can be created, and both say why.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.ACME.Storage = filepath.Join(file, "acme")
	errs := c.Validate()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "acme.storage: "+c.ACME.Storage+" cannot be created: "+file+" is not a directory") {
		t.Errorf("Validate below a file: %v", errs)
	}
	if err := prepareStorage(c.ACME.Storage); err == nil || !strings.HasPrefix(err.Error(), "tls.acme.storage: cannot create "+c.ACME.Storage) {
		t.Errorf("prepareStorage below a file: %v", err)
	}
}
