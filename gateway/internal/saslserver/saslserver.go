// Package saslserver holds the server side of the SASL mechanisms both
// protocol fronts offer, so POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE
// (RFC 9051 §6.2.2) run the same code:
//
//	creds, srv := saslserver.New("PLAIN")
//	challenge, done, err := srv.Next(initialResponse) // ... until done
//	user, pass := creds.User, creds.Pass
//
// PLAIN is go-sasl's server; LOGIN is written here because go-sasl has only
// its client. mailgate logs in to the backend with the client's own
// credentials, so the mechanisms only collect them: the backend checks them.
package saslserver

import (
	"encoding/base64"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// Mechanisms are the names offered, in order of preference.
var Mechanisms = []string{sasl.Plain, sasl.Login}

// ErrAuthzid refuses to act as another user: the backend would need a master
// login, which mailgate does not have.
var ErrAuthzid = errors.New("authorization identity differs from authentication identity")

// Credentials are what the client presented, filled when the exchange is
// done.
type Credentials struct {
	User, Pass string
}

// New returns a server for the mechanism (case-insensitive) and the
// credentials it fills, or a nil server when the mechanism is not offered.
func New(mech string) (*Credentials, sasl.Server) {
	c := &Credentials{}
	switch strings.ToUpper(mech) {
	case sasl.Plain: // RFC 4616
		return c, sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return ErrAuthzid
			}
			c.User, c.Pass = user, pass
			return nil
		})
	case sasl.Login:
		return c, &loginServer{creds: c}
	}
	return nil, nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): challenges "Username:" and "Password:". An
// initial response, when sent, is the user name.
type loginServer struct {
	creds *Credentials
	step  int
}

func (s *loginServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step = 1
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		s.creds.User = string(resp)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.creds.Pass = string(resp)
		s.step = 3
		return nil, true, nil
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// Decode decodes a base64 client response. In an initial response "=" stands
// for an empty one (RFC 4959 §3, RFC 5034 §4). The result is never nil,
// which go-sasl would read as "no response".
func Decode(s string, initial bool) ([]byte, error) {
	if initial && s == "=" {
		return []byte{}, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Some clients leave out the padding.
		if b, err = base64.RawStdEncoding.DecodeString(s); err != nil {
			return nil, errors.New("invalid base64 in SASL response")
		}
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

// Encode encodes a server challenge for the wire.
func Encode(challenge []byte) string { return base64.StdEncoding.EncodeToString(challenge) }
