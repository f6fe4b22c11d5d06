package upstream

import (
	"fmt"
	"strconv"
	"strings"
)

// FormatUIDL renders a POP3 unique-id from `pop3.uidl_format`, with Dovecot's
// pop3_uidl_format syntax so that users migrating from a Dovecot POP3 server
// keep their UIDLs:
//
//	%u  the message's IMAP UID
//	%v  the mailbox's UIDVALIDITY
//	%%  a literal %
//
// Between % and the letter: an optional 0 and width (zero- or space-padded),
// then X for hexadecimal, decimal otherwise. As in Dovecot, X means "hex"
// and the digits are lower-case: "%08Xu%08Xv" (the default) gives
// 0000002a5f3e1c00, exactly what Dovecot's POP3 server says for the same
// message (x is accepted as a synonym).
//
// RFC 1939 §7: the result must be 1-70 characters in 0x21-0x7E, and unique
// within the maildrop, which needs %u. UIDVALIDITY+UID stay stable for as long
// as the backend keeps UIDVALIDITY (RFC 3501 §2.3.1.1).
func FormatUIDL(format string, uid, uidValidity uint32) (string, error) {
	var b strings.Builder
	hasUID := false
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' {
			if c < 0x21 || c > 0x7e {
				return "", fmt.Errorf("character %q is not allowed in a UIDL (RFC 1939 §7: 0x21-0x7E)", c)
			}
			b.WriteByte(c)
			continue
		}
		i++
		if i < len(format) && format[i] == '%' {
			b.WriteByte('%')
			continue
		}
		zero := false
		if i < len(format) && format[i] == '0' {
			zero = true
			i++
		}
		start := i
		for i < len(format) && format[i] >= '0' && format[i] <= '9' {
			i++
		}
		width := 0
		if i > start {
			width, _ = strconv.Atoi(format[start:i])
			if width > 32 {
				return "", fmt.Errorf("width %d is too large", width)
			}
		}
		base := 10
		if i < len(format) && (format[i] == 'X' || format[i] == 'x') {
			base = 16
			i++
		}
		if i >= len(format) {
			return "", fmt.Errorf("%q ends inside a %% variable", format)
		}
		var v uint32
		switch format[i] {
		case 'u':
			v, hasUID = uid, true
		case 'v':
			v = uidValidity
		default:
			return "", fmt.Errorf("unknown variable %%%c (known: %%u UID, %%v UIDVALIDITY, %%%%)", format[i])
		}
		s := strconv.FormatUint(uint64(v), base)
		pad := " "
		if zero {
			pad = "0"
		}
		for n := len(s); n < width; n++ {
			b.WriteString(pad)
		}
		b.WriteString(s)
	}
	if !hasUID {
		return "", fmt.Errorf("%q has no %%u: UIDLs would not be unique", format)
	}
	out := b.String()
	if len(out) > 70 || strings.ContainsRune(out, ' ') {
		return "", fmt.Errorf("%q gives %q: a UIDL is 1-70 characters without spaces (RFC 1939 §7)", format, out)
	}
	return out, nil
}
