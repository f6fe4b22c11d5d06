package config

import (
	"strings"
	"testing"
)

func TestWarningsListenerWithoutLogin(t *testing.T) {
	const backends = "backends: {store: {address: \"127.0.0.1:1143\", tls: none}}\n"
	for _, tc := range []struct {
		listener string
		want     string
	}{
		{`{name: p, protocol: pop3, address: "127.0.0.1:1110", tls: none}`,
			"listeners[0]: tls: none without allow_plaintext_auth: true accepts no login"},
		{`{name: i, protocol: imap, address: "127.0.0.1:1143", tls: none, allow_plaintext_auth: false}`,
			"listeners[0]: tls: none without allow_plaintext_auth: true accepts no login"},
		{`{name: p, protocol: pop3, address: "127.0.0.1:1110", tls: none, allow_plaintext_auth: true}`, ""},
	} {
		cfg, err := Parse([]byte("listeners:\n  - " + tc.listener + "\n" + backends))
		if err != nil {
			t.Fatalf("%s: %v", tc.listener, err)
		}
		w := cfg.Warnings()
		switch {
		case tc.want == "" && len(w) != 0:
			t.Errorf("%s: unexpected warnings %v", tc.listener, w)
		case tc.want != "" && (len(w) != 1 || !strings.HasPrefix(w[0].String(), tc.want) || w[0].Line != 2):
			t.Errorf("%s: warnings %v, want one starting %q on line 2", tc.listener, w, tc.want)
		}
	}
}
