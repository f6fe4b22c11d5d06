package config

import (
	"encoding"
	"os"
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
