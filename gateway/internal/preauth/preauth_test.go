package preauth

import (
	"strings"
	"testing"
)

func TestUserTooLong(t *testing.T) {
	if UserTooLong(strings.Repeat("u", MaxUserLen)) {
		t.Error("a name of MaxUserLen octets is refused")
	}
	if !UserTooLong(strings.Repeat("u", MaxUserLen+1)) {
		t.Error("a name over MaxUserLen octets is accepted")
	}
}

func TestIsHTTPRequest(t *testing.T) {
	for _, l := range []string{"GET / HTTP/1.1", "POST /x HTTP/1.0", "HEAD ", "CONNECT mail:443 HTTP/1.1", "OPTIONS * HTTP/1.1", "PUT /a HTTP/1.1", "DELETE /", "TRACE /", "PATCH /"} {
		if !IsHTTPRequest([]byte(l)) {
			t.Errorf("%q not taken for HTTP", l)
		}
	}
	for _, l := range []string{"", "GET", "a1 LOGIN u p", "USER get", "get / HTTP/1.1", "GETX / HTTP/1.1", "a GET /"} {
		if IsHTTPRequest([]byte(l)) {
			t.Errorf("%q taken for HTTP", l)
		}
	}
	if !IsHTTPMethod("get") || !IsHTTPMethod("CONNECT") || IsHTTPMethod("USER") || IsHTTPMethod("GETS") {
		t.Error("IsHTTPMethod")
	}
}
