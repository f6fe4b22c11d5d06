package imap

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// pipeRW feeds readCommand from a string and collects what it writes.
type pipeRW struct {
	in  *strings.Reader
	out bytes.Buffer
}

func (p *pipeRW) Read(b []byte) (int, error)  { return p.in.Read(b) }
func (p *pipeRW) Write(b []byte) (int, error) { return p.out.Write(b) }

func TestReadCommand(t *testing.T) {
	s := func(v string) token { return token{kind: tokString, val: v} }
	a := func(v string) token { return token{kind: tokAtom, val: v} }
	open, closeTok := token{kind: tokOpen}, token{kind: tokClose}
	tests := []struct {
		name     string
		in       string
		tag, cmd string
		args     []token
		wrote    string // continuation requests sent
		synErr   string // expected syntax error text ("" none)
		synTag   string
		fatal    error
	}{
		{name: "atoms", in: "a1 login alice secret\r\n", tag: "a1", cmd: "LOGIN", args: []token{a("alice"), a("secret")}},
		{name: "bare LF", in: "a1 NOOP\n", tag: "a1", cmd: "NOOP"},
		{name: "quoted with escapes", in: `a LOGIN "al ice" "p\"w\\d"` + "\r\n", tag: "a", cmd: "LOGIN", args: []token{s("al ice"), s(`p"w\d`)}},
		{name: "empty quoted", in: `a LOGIN "" ""` + "\r\n", tag: "a", cmd: "LOGIN", args: []token{s(""), s("")}},
		{name: "sync literal", in: "a LOGIN {5}\r\nalice {6}\r\nse\r\nt!\r\n", tag: "a", cmd: "LOGIN",
			args: []token{s("alice"), s("se\r\nt!")}, wrote: "+ Ready for literal data\r\n+ Ready for literal data\r\n"},
		{name: "non-sync literal", in: "a LOGIN {5+}\r\nalice {3+}\r\npw\x00\r\n", tag: "a", cmd: "LOGIN",
			args: []token{s("alice"), s("pw\x00")}},
		{name: "utf8 literal", in: "a LOGIN {6}\r\nbjörn x\r\n", tag: "a", cmd: "LOGIN", args: []token{s("björn"), a("x")}, wrote: "+ Ready for literal data\r\n"},
		{name: "SASL-IR", in: "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", tag: "a", cmd: "AUTHENTICATE", args: []token{a("PLAIN"), a("AGFsaWNlAHNlY3JldA==")}},
		{name: "ID list", in: `a ID ("name" "x" "version" NIL)` + "\r\n", tag: "a", cmd: "ID",
			args: []token{open, s("name"), s("x"), s("version"), a("NIL"), closeTok}},
		{name: "tag with bracket", in: "a] NOOP\r\n", tag: "a]", cmd: "NOOP"},
		{name: "empty line", in: "\r\n", synErr: "empty command"},
		{name: "plus tag", in: "+ NOOP\r\n", synErr: "invalid tag"},
		{name: "star tag", in: "* NOOP\r\n", synErr: "invalid tag"},
		{name: "quoted tag", in: "\"a\" NOOP\r\n", synErr: "invalid tag"},
		{name: "no command", in: "a\r\n", synErr: "missing command", synTag: "a"},
		{name: "unterminated quote", in: "a LOGIN \"x\r\n", synErr: "unterminated quoted string", synTag: "a"},
		{name: "bad escape", in: `a LOGIN "\n" x` + "\r\n", synErr: "invalid escape in quoted string", synTag: "a"},
		{name: "literal not at end", in: "a LOGIN {5} x\r\n", synErr: "literal must end the line", synTag: "a"},
		{name: "literal bad length", in: "a LOGIN {x}\r\n", synErr: "invalid literal length", synTag: "a"},
		{name: "literal huge", in: "a LOGIN {99999999999}\r\n", synErr: "invalid literal length", synTag: "a"},
		{name: "sync literal too large refused before data", in: "a LOGIN {9000}\r\n", synErr: "literal too large", synTag: "a"},
		{name: "non-sync literal too large is fatal", in: "a LOGIN {9000+}\r\n", fatal: errLiteralTooLong},
		{name: "control char", in: "a LOG\x01IN\r\n", synErr: "control character", synTag: "a"},
		{name: "line too long", in: "a LOGIN " + strings.Repeat("x", maxLine+10) + "\r\n", fatal: errLineTooLong},
		{name: "many literals exceed command cap", in: "a ID (" + strings.Repeat("{8000+}\r\n"+strings.Repeat("v", 8000)+" ", maxCommand/8000+1) + ")\r\n", fatal: errLiteralTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rw := &pipeRW{in: strings.NewReader(tt.in)}
			w := newWire(rw)
			cmd, err := w.readCommand()
			if got := rw.out.String(); got != tt.wrote {
				t.Errorf("wrote %q, want %q", got, tt.wrote)
			}
			var se *syntaxError
			switch {
			case tt.fatal != nil:
				if !errors.Is(err, tt.fatal) {
					t.Fatalf("err = %v, want %v", err, tt.fatal)
				}
			case tt.synErr != "":
				if !errors.As(err, &se) || se.msg != tt.synErr || se.tag != tt.synTag {
					t.Fatalf("err = %#v, want syntax error %q tag %q", err, tt.synErr, tt.synTag)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if cmd.tag != tt.tag || cmd.name != tt.cmd || !reflect.DeepEqual(cmd.args, tt.args) && len(cmd.args)+len(tt.args) > 0 {
					t.Fatalf("got %+v, want tag %q cmd %q args %+v", cmd, tt.tag, tt.cmd, tt.args)
				}
			}
		})
	}
}

// Pipelined commands are read one at a time, in order, and what follows
// stays buffered (STARTTLS checks it).
func TestReadCommandPipelined(t *testing.T) {
	rw := &pipeRW{in: strings.NewReader("a STARTTLS\r\nb LOGIN x y\r\n")}
	w := newWire(rw)
	cmd, err := w.readCommand()
	if err != nil || cmd.name != "STARTTLS" {
		t.Fatalf("%v %v", cmd, err)
	}
	if w.buffered() != len("b LOGIN x y\r\n") {
		t.Fatalf("buffered = %d", w.buffered())
	}
	if got := string(w.takeBuffered()); got != "b LOGIN x y\r\n" {
		t.Fatalf("takeBuffered = %q", got)
	}
	if w.buffered() != 0 {
		t.Fatal("takeBuffered left bytes behind")
	}
}

func TestStatusFormat(t *testing.T) {
	rw := &pipeRW{in: strings.NewReader("")}
	w := newWire(rw)
	w.status("a", "NO", "PRIVACYREQUIRED", "TLS first")
	w.status("", "BAD", "", "Syntax error")
	w.continuation("")
	w.flush()
	want := "a NO [PRIVACYREQUIRED] TLS first\r\n* BAD Syntax error\r\n+ \r\n"
	if got := rw.out.String(); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
