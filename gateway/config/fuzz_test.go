package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzDecode: any input decodes into a Config or gives problems, never a
// panic, every problem's line lies within the input, and defaults apply to
// whatever was decoded. (Validate is left out: it reads files named in the input.)
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("a: &a [x, x]\nb: &b [*a, *a]\nlisteners: *b\n"))
	f.Add([]byte("backends: {a: &x {address: \":1\"}, b: *x, <<: {c: {address: \":2\"}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := new(Config)
		d := &decodeState{lines: map[string]int{}}
		d.decode(data, cfg)
		cfg.ApplyDefaults()
		ps := d.problems
		// Lines as YAML counts them: LF, CRLF and a lone CR each end one.
		lines := 1
		for i, c := range data {
			if c == '\n' || (c == '\r' && (i+1 == len(data) || data[i+1] != '\n')) {
				lines++
			}
		}
		for _, p := range ps {
			if p.Line < 0 || p.Line > lines+1 {
				t.Fatalf("problem %q: line %d outside the input's %d lines", p, p.Line, lines)
			}
		}
	})
}

// TestAliasBomb: merge keys and aliases that expand exponentially are cut
// short, by the walk's bound and by yaml's own aliasing limit.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("l0: &l0 {level: info}\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&b, "l%d: &l%d {<<: [*l%d, *l%d]}\n", i, i, i-1, i-1)
	}
	b.WriteString("log: *l40\n")
	start := time.Now()
	_, err := Parse([]byte(b.String()))
	if err == nil {
		t.Fatal("Parse accepted an alias bomb")
	}
	t.Log(err)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Parse took %v", d)
	}
}
