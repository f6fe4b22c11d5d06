package imap

// errAuthzid refuses to act as another user (saslserver.ErrAuthzid): mailgate
// logs in with the client's own credentials and cannot pass an authorization
// identity on.
var errAuthzid = &respError{"NO", "AUTHORIZATIONFAILED", "Authorization identity not supported"}
