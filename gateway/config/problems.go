package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	// Path is the key in the file, e.g. "listeners[1].tls" or
	// "backends.legacy.address"; empty for the file as a whole.
	Path string
	// Message says what is wrong and, where it can, how to fix it.
	Message string
	// Line is the 1-based line of Path in the file; 0 when the key is not in
	// the file (a missing section) or the configuration was not parsed.
	Line int
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	if p.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", p.Line)
	}
	return b.String()
}

// Problems is every problem found in a configuration, in file order where
// lines are known. It is the error Parse, Load and Validate return, so that
// `mailgate check-config` can print them all at once:
//
//	listeners[1].tls: "tsl" is not one of none, starttls, implicit (line 7)
//	routing.default: "stor" is not a backend (known: legacy, store) (line 12)
type Problems []Problem

// Error prints one problem per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
