// Package preauth holds what both mail fronts check before a client has
// logged in: the bound on user names and the recognition of an HTTP request
// sent to a mail port.
package preauth

import "bytes"

// MaxUserLen is the longest user name, in octets, that a front accepts. A
// longer one is refused as a wrong password, locally, before routing and the
// limiters see it: hostile names must not cost memory in their tables.
// 255 is generous (an e-mail address is at most 254 octets, RFC 5321 §4.5.3).
const MaxUserLen = 255

// UserTooLong reports whether user is over MaxUserLen.
func UserTooLong(user string) bool { return len(user) > MaxUserLen }

// httpMethods are the request methods of RFC 9110 §9 and PATCH (RFC 5789).
var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// IsHTTPRequest reports whether line (a client's first bytes of a command,
// without its line end) looks like an HTTP request line: a method in upper
// case (methods are case-sensitive, RFC 9110 §9.1) and a space. A browser or
// an ALPACA-style cross-protocol attack sends that to a mail port; the
// connection is ended at once rather than answered command by command.
func IsHTTPRequest(line []byte) bool {
	for _, m := range httpMethods {
		if len(line) > len(m) && line[len(m)] == ' ' && bytes.HasPrefix(line, []byte(m)) {
			return true
		}
	}
	return false
}

// IsHTTPMethod reports whether word, compared without regard to ASCII case,
// is an HTTP method: for a front that has already upper-cased its keyword.
func IsHTTPMethod(word string) bool {
	for _, m := range httpMethods {
		if len(word) == len(m) && bytes.EqualFold([]byte(word), []byte(m)) {
			return true
		}
	}
	return false
}

// LogUser is user as logged: a name over MaxUserLen is cut there (and marked
// so), so that a hostile name cannot fill the logs either.
func LogUser(user string) string {
	if UserTooLong(user) {
		return user[:MaxUserLen] + "...(truncated)"
	}
	return user
}
