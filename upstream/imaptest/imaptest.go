// Package imaptest serves an in-memory backend IMAP server on a free
// loopback port, seeded with users and messages: what upstream talks to in
// `mailgate demo` and in tests that need a backend without Dovecot, or one
// that can be stopped at will. It is go-imap's imapserver over its
// imapmemserver store, offering IMAP4rev1 and IMAP4rev2 and accepting LOGIN
// without TLS; the store has no fault hooks, so fault tests wrap the
// listener or the connection.
//
//	srv, err := imaptest.Start(imaptest.User{Name: "alice", Password: "secret",
//		Messages: [][]byte{msg}})
//	defer srv.Close()
//	addr := srv.Addr() // 127.0.0.1:port, cleartext IMAP, LOGIN allowed
//
// Like net/http/httptest it sits beside the code it serves and does not
// import package testing, so the mailgate binary can link it for its demo.
package imaptest

import (
	"bytes"
	"io"
	"log"
	"net"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// User is one account of the server.
type User struct {
	Name, Password string
	Mailboxes      []string // created besides INBOX
	Messages       [][]byte // appended to INBOX, in order (UIDs 1, 2, ...)
}

// Server is a running in-memory IMAP server. It offers IMAP4rev1 and
// IMAP4rev2 (so UIDPLUS, MOVE, SASL-IR...) and accepts LOGIN without TLS.
type Server struct {
	srv   *imapserver.Server
	ln    net.Listener
	done  chan struct{}
	close sync.Once
}

// Start seeds the users and serves them on 127.0.0.1.
func Start(users ...User) (*Server, error) {
	mem := imapmemserver.New()
	for _, u := range users {
		mu := imapmemserver.NewUser(u.Name, u.Password)
		for _, name := range append([]string{"INBOX"}, u.Mailboxes...) {
			if err := mu.Create(name, nil); err != nil {
				return nil, err
			}
		}
		for _, m := range u.Messages {
			// AppendOptions must not be nil: imapmemserver dereferences it.
			if _, err := mu.Append("INBOX", bytes.NewReader(m), &imap.AppendOptions{}); err != nil {
				return nil, err
			}
		}
		mem.AddUser(mu)
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{srv: srv, ln: ln, done: make(chan struct{})}
	go func() { defer close(s.done); srv.Serve(ln) }()
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, its connections included, and waits for it. It
// may be called more than once.
func (s *Server) Close() {
	s.close.Do(func() {
		s.srv.Close()
		<-s.done
	})
}
