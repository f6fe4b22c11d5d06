package transcript

import "strings"

// The bounds of an RFC 2971 ID command (§3.3): at most 30 field-value pairs,
// fields of at most 30 octets, values of at most 1024.
const (
	IDMaxPairs    = 30
	IDMaxKeyLen   = 30
	IDMaxValueLen = 1024
)

// MaximalIDKey is the i-th of IDMaxPairs distinct fields of IDMaxKeyLen
// octets, each a '"' or a '\\', so that every octet is escaped when quoted:
// the largest ID a server must accept.
func MaximalIDKey(i int) string {
	var b strings.Builder
	for j := 0; j < IDMaxKeyLen; j++ {
		if i>>j&1 == 1 {
			b.WriteByte('\\')
		} else {
			b.WriteByte('"')
		}
	}
	return b.String()
}

// MaximalIDValue is a value of IDMaxValueLen octets, every one escaped when
// quoted.
func MaximalIDValue() string { return strings.Repeat(`\`, IDMaxValueLen) }

// QuoteIMAP returns s as an IMAP quoted string (RFC 9051 §4.3).
func QuoteIMAP(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
