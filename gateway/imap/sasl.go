package imap

import (
	"encoding/base64"

	"github.com/emersion/go-sasl"
)

// saslServer is one side of a SASL exchange (go-sasl's sasl.Server).
type saslServer = sasl.Server

// credentials receives what the client presented; the backend checks them.
type credentials struct {
	user, pass string
}

// errAuthzid refuses to act as another user: mailgate logs in with the
// client's own credentials and cannot pass an authorization identity on.
var errAuthzid = &respError{"NO", "AUTHORIZATIONFAILED", "Authorization identity not supported"}

// newSASLServer returns a server for mech that fills creds, or nil when the
// mechanism is not offered.
func newSASLServer(mech string, creds *credentials) saslServer {
	switch mech {
	case sasl.Plain: // RFC 4616
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return errAuthzid
			}
			creds.user, creds.pass = user, pass
			return nil
		})
	case sasl.Login:
		return &loginServer{creds: creds}
	}
	return nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): challenges "Username:" and "Password:". An
// initial response, when sent, is the user name. go-sasl has only the client.
type loginServer struct {
	creds *credentials
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
		s.creds.user = string(resp)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.creds.pass = string(resp)
		s.step = 3
		return nil, true, nil
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// decodeSASL decodes a base64 SASL response. In an initial response (RFC
// 4959 §3) "=" stands for an empty one; the result is never nil, which go-sasl
// reads as "no response".
func decodeSASL(s string, initial bool) ([]byte, error) {
	if initial && s == "=" {
		return []byte{}, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}
