package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses the configuration file at path; see Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data)
}

// Parse decodes a configuration strictly, applies the defaults and validates
// it. Any error is a Problems listing everything wrong at once, each with its
// path and line: unknown keys (with the keys that are known), values of the
// wrong type, sizes and durations that do not parse, and everything Validate
// finds. The returned Config is nil unless there are no problems.
func Parse(data []byte) (*Config, error) {
	cfg := new(Config)
	d := &decodeState{lines: map[string]int{}}
	d.decode(data, cfg)
	cfg.lines = d.lines
	cfg.ApplyDefaults()
	probs := d.problems
	var vp Problems
	if err := cfg.Validate(); err != nil {
		vp = err.(Problems)
	}
	// A key that failed to decode is left at its zero value; whatever
	// validation says about it, or below it, repeats the same mistake.
	for _, p := range vp {
		if !d.covers(p.Path) {
			probs = append(probs, p)
		}
	}
	if len(probs) > 0 {
		sortProblems(probs)
		return nil, probs
	}
	return cfg, nil
}

// decodeState collects what a decode finds: every key's line, for the
// Problems of Validate, and the problems of decoding itself.
type decodeState struct {
	lines    map[string]int // path ("listeners[1].tls") -> line of its key or item
	values   []valueNode    // every typed value node, to place yaml's type errors
	visits   int            // nodes walked, bounded against alias bombs
	problems Problems
	bad      []string // paths with decode problems
}

type valueNode struct {
	node *yaml.Node
	path string
	typ  reflect.Type
}

func (d *decodeState) add(path, msg string, line int) {
	d.problems = append(d.problems, Problem{Path: path, Message: msg, Line: line})
	d.bad = append(d.bad, path)
}

// covers reports whether path is at or below a key that failed to decode.
func (d *decodeState) covers(path string) bool {
	for _, b := range d.bad {
		if b == "" || isUnder(path, b) {
			return true
		}
	}
	return false
}

func isUnder(path, parent string) bool {
	return path == parent || strings.HasPrefix(path, parent+".") || strings.HasPrefix(path, parent+"[")
}

// decode fills cfg from data. yaml's own strict mode (KnownFields) reports
// an unknown key but not its path, and stops at the first size that does not
// parse, without a line. So decoding goes in three steps: parse into a node
// tree; walk the tree along the Config type, recording each key's path and
// line, reporting unknown keys and checking every encoding.TextUnmarshaler
// value (a bad one is reported and nulled, so yaml decodes it as zero and
// goes on); then let yaml decode the tree, placing its type errors by line.
// Finally, if all that found nothing, a strict yaml.Decoder with KnownFields
// runs over the raw bytes as a cross-check of the walk.
func (d *decodeState) decode(data []byte, cfg *Config) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return // an empty file: validation says what is missing
		}
		d.syntax(err)
		return
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.add("", "a second YAML document (after ---): put the whole configuration in one document", extra.Line)
		return
	case !errors.Is(err, io.EOF):
		d.syntax(err)
		return
	}
	top := &root
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = top.Content[0]
	}
	if top.Kind != yaml.MappingNode {
		if top.ShortTag() == "!!null" {
			return
		}
		d.add("", "the file must be a mapping of sections (log, tls, listeners, backends, routing, pop3, limits, timeouts, metrics, cluster)", top.Line)
		return
	}
	d.walk(top, reflect.TypeOf(*cfg), "", 0)
	if err := root.Decode(cfg); err != nil {
		d.yamlError(err)
	}
	if len(d.problems) > 0 {
		return
	}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(new(Config)); err != nil {
		d.yamlError(err)
	}
}

// maxWalk bounds the nodes the walk visits; a real configuration has a few
// hundred.
const maxWalk = 100000

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType    = reflect.TypeFor[time.Duration]()
)

// walk follows n along the Go type t. path is n's path; depth bounds alias
// chains (an alias may refer to an anchor that contains it).
func (d *decodeState) walk(n *yaml.Node, t reflect.Type, path string, depth int) {
	// Aliases can make a small file a huge tree ("billion laughs"); yaml's
	// decoder refuses excessive aliasing itself, the walk must just not blow
	// up first.
	if n == nil || depth > 64 || d.visits > maxWalk {
		return
	}
	d.visits++
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			d.walk(c, t, path, depth+1)
		}
		return
	case yaml.AliasNode:
		d.walk(n.Alias, t, path, depth+1)
		return
	}
	d.values = append(d.values, valueNode{node: n, path: path, typ: t})
	if n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" && reflect.PointerTo(t).Implements(textUnmarshaler) {
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.add(path, err.Error(), n.Line)
			// yaml would abort the whole decode on this error: make it a null,
			// which decodes as the zero value.
			n.Tag, n.Value, n.Style = "!!null", "", 0
		}
		return
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMerge(k) {
				d.walkMerge(v, t, path, depth+1)
				continue
			}
			child := join(path, k.Value)
			f, ok := fields.byName[k.Value]
			if !ok {
				msg, suggested := unknownKey(k.Value, fields.names)
				d.add(child, msg, k.Line)
				if suggested != "" {
					// "address: required" would only repeat the typo.
					d.bad = append(d.bad, join(path, suggested))
				}
				continue
			}
			d.mark(child, k.Line)
			d.walk(v, f, child, depth+1)
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMerge(k) {
				d.walkMerge(v, t, path, depth+1)
				continue
			}
			child := join(path, k.Value)
			d.mark(child, k.Line)
			d.walk(v, t.Elem(), child, depth+1)
		}
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			child := fmt.Sprintf("%s[%d]", path, i)
			d.mark(child, item.Line)
			d.walk(item, t.Elem(), child, depth+1)
		}
	}
}

// walkMerge follows the value of a merge key (<<): a mapping or a list of
// mappings whose keys count as the enclosing mapping's.
func (d *decodeState) walkMerge(v *yaml.Node, t reflect.Type, path string, depth int) {
	for v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind == yaml.SequenceNode {
		for _, m := range v.Content {
			d.walk(m, t, path, depth+1)
		}
		return
	}
	d.walk(v, t, path, depth)
}

func (d *decodeState) mark(path string, line int) {
	if _, ok := d.lines[path]; !ok {
		d.lines[path] = line
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// isMerge reports a YAML merge key (<<), which yaml.v3 supports.
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge")
}

type fieldSet struct {
	byName map[string]reflect.Type
	names  []string // in declaration order, for messages
}

// yamlFields lists the keys yaml.v3 accepts for struct type t: the yaml tag's
// name, or the lower-cased field name; ",inline" structs contribute their
// own keys.
func yamlFields(t reflect.Type) fieldSet {
	fs := fieldSet{byName: map[string]reflect.Type{}}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("yaml")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if strings.Contains(","+opts+",", ",inline,") {
				ft := f.Type
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct {
					add(ft)
				}
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fs.byName[name] = f.Type
			fs.names = append(fs.names, name)
		}
	}
	add(t)
	return fs
}

// unknownKey says that key is unknown, lists the known ones and suggests
// the closest, which it also returns.
func unknownKey(key string, known []string) (msg, suggested string) {
	msg = fmt.Sprintf("unknown key (known: %s)", strings.Join(known, ", "))
	best, bestD := "", 3 // suggest only close matches
	for _, k := range known {
		if dist := editDistance(strings.ToLower(key), k); dist < bestD {
			best, bestD = k, dist
		}
	}
	if best != "" {
		msg += fmt.Sprintf("; did you mean %q?", best)
	}
	return msg, best
}

// editDistance is the Levenshtein distance, for "did you mean".
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	reLine        = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	reCannot      = regexp.MustCompile("^cannot unmarshal (!!\\w+)(?: `(.*)`)? into (.+)$")
	reDuplicate   = regexp.MustCompile(`^mapping key "(.*)" already defined at line (\d+)$`)
	reUnknownKey  = regexp.MustCompile(`^field (.+) not found in type (.+)$`)
	reSyntaxPrefx = regexp.MustCompile(`^yaml: `)
)

// syntax reports a YAML syntax error: "yaml: line 3: mapping values are not
// allowed in this context".
func (d *decodeState) syntax(err error) {
	msg := err.Error()
	if m := reLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		d.add("", "YAML syntax: "+m[2], line)
		return
	}
	d.add("", "YAML syntax: "+reSyntaxPrefx.ReplaceAllString(msg, ""), 0)
}

// yamlError turns yaml's decode errors into problems with paths.
func (d *decodeState) yamlError(err error) {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		d.syntax(err)
		return
	}
	for _, e := range te.Errors {
		m := reLine.FindStringSubmatch(e)
		if m == nil {
			d.add("", e, 0)
			continue
		}
		line, _ := strconv.Atoi(m[1])
		msg := m[2]
		switch {
		case reCannot.MatchString(msg):
			c := reCannot.FindStringSubmatch(msg)
			if v := d.findValue(line, c[1], c[2], c[3]); v != nil {
				d.add(v.path, fmt.Sprintf("want %s, got %s", describe(v.typ), got(v.node)), line)
				continue
			}
			d.add("", msg, line)
		case reDuplicate.MatchString(msg):
			c := reDuplicate.FindStringSubmatch(msg)
			first, _ := strconv.Atoi(c[2])
			path := d.findKey(first, c[1])
			d.add(path, fmt.Sprintf("given twice (first at line %d)", first), line)
			// yaml leaves the whole mapping undecoded: whatever validation
			// would say about it is an echo.
			parent := ""
			if i := strings.LastIndexAny(path, ".["); i >= 0 {
				parent = path[:i]
			}
			d.bad = append(d.bad, parent)
		case reUnknownKey.MatchString(msg):
			c := reUnknownKey.FindStringSubmatch(msg)
			d.add(d.findKey(line, c[1]), "unknown key", line)
		default:
			d.add("", msg, line)
		}
	}
}

// findValue finds the node yaml complained about: on line, with yaml's short
// tag, (for scalars) its value, which yaml cuts to 7 characters and "...",
// and the Go type it was decoded into. A block mapping starts on the line of
// its first key, so several nodes can share a line and a tag: the type tells
// them apart.
func (d *decodeState) findValue(line int, tag, shown, into string) *valueNode {
	var candidate *valueNode
	for i := range d.values {
		v := &d.values[i]
		if v.node.Line != line || v.node.ShortTag() != tag {
			continue
		}
		val := v.node.Value
		if len(val) > 10 {
			val = val[:7] + "..."
		}
		if v.node.Kind == yaml.ScalarNode && val != shown {
			continue
		}
		if v.typ.String() == into {
			return v
		}
		if candidate == nil {
			candidate = v
		}
	}
	return candidate
}

// findKey finds the path of key on line; "" if there is none.
func (d *decodeState) findKey(line int, key string) string {
	for path, l := range d.lines {
		if l == line && (path == key || strings.HasSuffix(path, "."+key)) {
			return path
		}
	}
	return ""
}

// describe says in words what a value of type t looks like.
func describe(t reflect.Type) string {
	if t == durationType {
		return "a duration such as 90s, 10m or 1h"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a single value"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping of keys to values"
	}
	return t.String()
}

func got(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return strconv.Quote(n.Value)
}
