package pop3client

import "bytes"

// TopOf is RFC 1939 §7's TOP of a message, as a reference for tests: the
// lines up to and including the first blank one (the header and the blank
// line that ends it), then the first k lines of the body; the whole message
// if it has fewer. A line ends after its LF; a last line without one counts
// as a line. Given what Retr returned, it is what Top must return.
func TopOf(m []byte, k int) []byte {
	inBody := false
	for i := 0; i < len(m); {
		j := bytes.IndexByte(m[i:], '\n')
		if j < 0 {
			return m
		}
		line := m[i : i+j+1]
		i += j + 1
		if !inBody {
			inBody = string(line) == "\n" || string(line) == "\r\n"
		} else {
			k--
		}
		if inBody && k <= 0 {
			return m[:i]
		}
	}
	return m
}
