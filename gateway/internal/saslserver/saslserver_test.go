package saslserver

import (
	"errors"
	"testing"
)

func run(t *testing.T, mech string, ir []byte, responses ...string) (*Credentials, error) {
	t.Helper()
	c, srv := New(mech)
	if srv == nil {
		t.Fatalf("mechanism %s not offered", mech)
	}
	resp := ir
	for i := 0; ; i++ {
		ch, done, err := srv.Next(resp)
		if err != nil {
			return c, err
		}
		if done {
			return c, nil
		}
		if i >= len(responses) {
			t.Fatalf("unexpected challenge %q", ch)
		}
		resp = []byte(responses[i])
	}
}

func TestPlain(t *testing.T) {
	c, err := run(t, "plain", []byte("\x00alice\x00s3cret"))
	if err != nil || c.User != "alice" || c.Pass != "s3cret" {
		t.Fatalf("PLAIN with initial response: %+v %v", c, err)
	}
	c, err = run(t, "PLAIN", nil, "alice\x00alice\x00pw")
	if err != nil || c.User != "alice" || c.Pass != "pw" {
		t.Fatalf("PLAIN after empty challenge: %+v %v", c, err)
	}
	if _, err := run(t, "PLAIN", []byte("bob\x00alice\x00pw")); !errors.Is(err, ErrAuthzid) {
		t.Fatalf("PLAIN as another user: %v, want ErrAuthzid", err)
	}
	if _, err := run(t, "PLAIN", []byte("no-nuls")); err == nil {
		t.Fatal("malformed PLAIN response accepted")
	}
}

func TestLogin(t *testing.T) {
	c, err := run(t, "LOGIN", nil, "alice", "pw with spaces")
	if err != nil || c.User != "alice" || c.Pass != "pw with spaces" {
		t.Fatalf("LOGIN: %+v %v", c, err)
	}
	c, err = run(t, "login", []byte("bob"), "pw")
	if err != nil || c.User != "bob" || c.Pass != "pw" {
		t.Fatalf("LOGIN with initial response: %+v %v", c, err)
	}
	_, srv := New("LOGIN")
	srv.Next(nil)
	srv.Next([]byte("u"))
	srv.Next([]byte("p"))
	if _, _, err := srv.Next([]byte("more")); err == nil {
		t.Fatal("a response after the end accepted")
	}
}

func TestUnknownMechanism(t *testing.T) {
	if c, srv := New("CRAM-MD5"); c != nil || srv != nil {
		t.Fatal("an unoffered mechanism got a server")
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		in      string
		initial bool
		want    string
		ok      bool
	}{
		{"=", true, "", true},
		{"=", false, "", false},
		{"", false, "", true},
		{"YWxpY2U=", false, "alice", true},
		{"not base64!", false, "", false},
	} {
		b, err := Decode(tc.in, tc.initial)
		if (err == nil) != tc.ok || (err == nil && (b == nil || string(b) != tc.want)) {
			t.Errorf("Decode(%q, %v) = %q, %v", tc.in, tc.initial, b, err)
		}
	}
}
