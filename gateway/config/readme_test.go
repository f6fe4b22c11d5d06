package config

import (
	"encoding"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// configKeys walks t along its yaml tags and returns every key a file may
// set, as dotted paths: a list's items add nothing ("listeners.name"), a
// map's keys are "*" ("backends.*.address"). Values that decode themselves
// (sizes), maps of scalars (headers) and scalars are leaves.
func configKeys(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	textual := reflect.TypeFor[encoding.TextUnmarshaler]()
	custom := reflect.TypeFor[yaml.Unmarshaler]()
	if reflect.PointerTo(t).Implements(textual) || reflect.PointerTo(t).Implements(custom) {
		return []string{prefix}
	}
	switch t.Kind() {
	case reflect.Slice:
		return configKeys(t.Elem(), prefix)
	case reflect.Map:
		if e := t.Elem(); e.Kind() == reflect.Struct || (e.Kind() == reflect.Pointer && e.Elem().Kind() == reflect.Struct) {
			return configKeys(e, prefix+".*")
		}
		return []string{prefix}
	case reflect.Struct:
		var keys []string
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "-" || name == "" {
				continue
			}
			p := name
			if prefix != "" {
				p = prefix + "." + name
			}
			keys = append(keys, configKeys(f.Type, p)...)
		}
		return keys
	}
	return []string{prefix}
}

// readmeKeys reads the README's configuration reference: for each section
// heading "### `tls.acme`" the keys in the first column of its tables, as
// paths ("tls.acme.challenges.http"; "[]" in a cell is dropped, so
// `rules[].user` documents routing.rules.user).
func readmeKeys(readme string) map[string]bool {
	heading := regexp.MustCompile("^### `([a-z0-9_.]+)`")
	cell := regexp.MustCompile("^\\| `([a-z0-9_.\\[\\]]+)`")
	keys := map[string]bool{}
	section := ""
	for _, line := range strings.Split(readme, "\n") {
		if m := heading.FindStringSubmatch(line); m != nil {
			section = m[1]
			continue
		}
		if strings.HasPrefix(line, "#") {
			section = ""
			continue
		}
		if m := cell.FindStringSubmatch(line); m != nil && section != "" {
			keys[section+"."+strings.ReplaceAll(m[1], "[]", "")] = true
		}
	}
	return keys
}

// TestREADMEDocumentsEveryKey keeps the README's configuration reference
// complete: every key the file format accepts has a row in the table of its
// section.
func TestREADMEDocumentsEveryKey(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := readmeKeys(string(readme))
	keys := configKeys(reflect.TypeFor[Config](), "")
	if len(keys) < 40 || !slices.Contains(keys, "tls.acme.challenges.http") || !slices.Contains(keys, "backends.*.address") {
		t.Fatalf("the walk found too little: %v", keys)
	}
	for _, k := range keys {
		if !documented[strings.ReplaceAll(k, "*.", "")] {
			t.Errorf("%s is not in the README's configuration reference: give it a row in the table of its section", k)
		}
	}
}

// TestREADMEExamplesWork: the README's rewrite_user examples produce names a
// stock Dovecot accepts (auth_username_chars: letters, digits and .-_@), its
// package list has every program the tests run, and it refers to no file
// that is not in the repository.
func TestREADMEExamplesWork(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	dovecotChars := regexp.MustCompile(`^[A-Za-z0-9.\-_@]*$`)
	rewrites := regexp.MustCompile(`rewrite_user: "([^"]*)"`).FindAllStringSubmatch(readme, -1)
	if len(rewrites) < 3 {
		t.Fatalf("found only %d rewrite_user examples", len(rewrites))
	}
	vars := strings.NewReplacer("{user}", "a@b.example", "{local}", "a", "{domain}", "b.example")
	for _, m := range rewrites {
		if name := vars.Replace(m[1]); !dovecotChars.MatchString(name) {
			t.Errorf("rewrite_user %q gives %q: a stock Dovecot refuses that user name", m[1], name)
		}
	}
	apt := regexp.MustCompile(`(?m)^apt-get install (.*)$`).FindStringSubmatch(readme)
	if apt == nil {
		t.Fatal("no apt-get install line in the README")
	}
	for _, pkg := range []string{"dovecot-imapd", "dovecot-pop3d", "pebble", "haproxy", "curl", "fetchmail", "python3", "openssl", "redis-server"} {
		if !slices.Contains(strings.Fields(apt[1]), pkg) {
			t.Errorf("the Testing section's apt-get line lacks %s", pkg)
		}
	}
	for _, m := range regexp.MustCompile(`[A-Za-z0-9_./-]+\.md\b`).FindAllString(readme, -1) {
		if _, err := os.Stat(filepath.Join("../..", m)); err != nil {
			t.Errorf("the README refers to %s, which is not in the repository", m)
		}
	}
}
