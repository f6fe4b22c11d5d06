package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A maildrop opens through the one backend login over every TLS mode, with
// PLAIN or LOGIN, and nothing logged mentions the password.
func TestOpenEveryTLSMode(t *testing.T) {
	certCfg, caPath := testCert(t)
	for _, tc := range []struct {
		name string
		opts *backendOptions
		auth *regexp.Regexp // the login command the backend must have seen
	}{
		{"cleartext AUTHENTICATE PLAIN", &backendOptions{}, regexp.MustCompile(`^\S+ AUTHENTICATE PLAIN`)},
		{"cleartext LOGIN without AUTH=PLAIN", &backendOptions{noPlain: true}, regexp.MustCompile(`^\S+ LOGIN `)},
		{"starttls", &backendOptions{tls: certCfg}, nil},
		{"implicit TLS", &backendOptions{tls: certCfg, implicit: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, tc.opts)
			b.addUser("alice", "s3cret-pass")
			tg := b.target()
			if tc.opts.tls != nil {
				tg.Config.CA = caPath
				if errs := tg.Config.Validate(); len(errs) > 0 {
					t.Fatal(errs)
				}
			}
			core, logs := observer.New(zap.DebugLevel)
			mds := NewMaildrops(testConfig(nil), zap.New(core))
			md, err := mds.Open(context.Background(), tg, fastTimeouts, "alice", "s3cret-pass")
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			md.Close()
			mds.Wait()
			if tc.auth != nil && !b.sawCommand(tc.auth) {
				t.Errorf("backend never saw %v", tc.auth)
			}
			if logs.Len() == 0 {
				t.Error("nothing logged: the check below would be vacuous")
			}
			for _, e := range logs.All() {
				if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), "s3cret") {
					t.Errorf("log entry mentions the password: %v", e)
				}
			}
		})
	}
}

func TestLoginRejectsUnknownCertificate(t *testing.T) {
	certCfg, _ := testCert(t)
	for _, implicit := range []bool{false, true} {
		b := newBackend(t, &backendOptions{tls: certCfg, implicit: implicit})
		_, err := Login(context.Background(), b.target(), fastTimeouts, "alice", "pw")
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("implicit=%v: err = %v, want ErrUnavailable (certificate not trusted)", implicit, err)
		}
	}
}

func TestLoginBadPassword(t *testing.T) {
	for _, noPlain := range []bool{false, true} {
		b := newBackend(t, &backendOptions{noPlain: noPlain})
		b.addUser("alice", "right")
		mds := newMaildrops(t, testConfig(nil))
		_, err := mds.Open(context.Background(), b.target(), fastTimeouts, "alice", "wrong-secret")
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("noPlain=%v: err = %v, want ErrAuthFailed", noPlain, err)
		}
		if strings.Contains(err.Error(), "wrong-secret") {
			t.Errorf("error mentions the password: %v", err)
		}
	}
}

func TestBackendDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := &BackendConfig{Address: addr, TLS: TLSNone}
	cfg.ApplyDefaults()
	cfg.Validate()
	mds := newMaildrops(t, testConfig(nil))
	start := time.Now()
	_, err = mds.Open(context.Background(), Target{Name: "down", Address: addr, Config: cfg}, fastTimeouts, "alice", "pw")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v to notice a refused connection", d)
	}
}

// A backend that never greets, or greets and then never answers, costs the
// dial timeout and no more.
func TestSilentBackend(t *testing.T) {
	to := Timeouts{Dial: 300 * time.Millisecond, Command: 300 * time.Millisecond}
	for _, greet := range []bool{false, true} {
		addr := silentServer(t, greet)
		cfg := &BackendConfig{Address: addr, TLS: TLSNone}
		cfg.ApplyDefaults()
		cfg.Validate()
		mds := newMaildrops(t, testConfig(nil))
		start := time.Now()
		_, err := mds.Open(context.Background(), Target{Name: "silent", Address: addr, Config: cfg}, to, "alice", "pw")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("greet=%v: err = %v, want ErrUnavailable", greet, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("greet=%v: took %v with a 300ms timeout", greet, d)
		}
	}
}

// A backend that stops answering in the middle of the session: RETR fails
// with ErrUnavailable within the command timeout, and so does everything
// after it.
func TestSilentBackendMidSession(t *testing.T) {
	b := newBackend(t, nil)
	b.addUser("alice", "pw", msg(1, 100), msg(2, 100))
	to := Timeouts{Dial: 2 * time.Second, Command: 300 * time.Millisecond}
	mds := newMaildrops(t, testConfig(nil))
	md, err := mds.Open(context.Background(), b.target(), to, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	b.opts.stallBody.Store(true)
	start := time.Now()
	_, err = md.Retr(context.Background(), 1)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Retr: err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Retr took %v with a 300ms command timeout", d)
	}
	if _, err := md.Top(context.Background(), 2, 0); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Top after the connection died: err = %v, want ErrUnavailable", err)
	}
	if err := md.Commit(context.Background(), []int{2}); !errors.Is(err, ErrPartialCommit) {
		t.Errorf("Commit after the connection died: err = %v, want ErrPartialCommit", err)
	}
	start = time.Now()
	md.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v on a dead connection", d)
	}
}

func TestContextCancelsDial(t *testing.T) {
	addr := silentServer(t, false)
	cfg := &BackendConfig{Address: addr, TLS: TLSNone}
	cfg.ApplyDefaults()
	cfg.Validate()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Login(ctx, Target{Address: addr, Config: cfg}, Timeouts{Dial: 10 * time.Second}, "alice", "pw")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancellation took %v", d)
	}
}

func TestWatchdog(t *testing.T) {
	fired := make(chan struct{}, 1)
	w := watch(20*time.Millisecond, func() { fired <- struct{}{} })
	if !w.reset(time.Hour) {
		t.Fatal("reset of a live watchdog reported it fired")
	}
	if w.stop() {
		t.Fatal("stopped watchdog reports it fired")
	}
	select {
	case <-fired:
		t.Fatal("stopped watchdog fired")
	case <-time.After(50 * time.Millisecond):
	}
	w = watch(time.Millisecond, func() { fired <- struct{}{} })
	<-fired
	if !w.stop() {
		t.Fatal("fired watchdog reports it did not fire")
	}
	if w.reset(time.Hour) {
		t.Fatal("a fired watchdog was re-armed")
	}
}
