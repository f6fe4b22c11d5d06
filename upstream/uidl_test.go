package upstream

import "testing"

func TestFormatUIDL(t *testing.T) {
	for _, tc := range []struct {
		format string
		uid    uint32
		uidv   uint32
		want   string
		ok     bool
	}{
		// Dovecot's default; Dovecot prints hex in lower case (checked
		// against Dovecot 2.3's own POP3 server in test/).
		{"%08Xu%08Xv", 42, 0x5f3e1c00, "0000002a5f3e1c00", true},
		{"%08xu%08xv", 42, 0x5f3e1c00, "0000002a5f3e1c00", true},
		{"%u.%v", 7, 1234, "7.1234", true},
		{"%v-%u%%", 7, 3, "3-7%", true},
		{"%4u", 7, 3, "   7", false}, // spaces are not allowed in a UIDL
		{"%v", 7, 3, "", false},      // no %u: not unique
		{"%q", 7, 3, "", false},
		{"%08X", 7, 3, "", false},
		{"%99u", 7, 3, "", false},
	} {
		got, err := FormatUIDL(tc.format, tc.uid, tc.uidv)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("FormatUIDL(%q, %d, %d) = %q, %v; want %q ok=%v", tc.format, tc.uid, tc.uidv, got, err, tc.want, tc.ok)
		}
	}
}
