package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHealthcheck runs the subcommand against real HTTP servers on
// 127.0.0.1: only a 200 is healthy, and every failure says why on stderr.
func TestHealthcheck(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if ua := r.Header.Get("User-Agent"); !strings.HasPrefix(ua, "mailgate-healthcheck/") {
			http.Error(w, "unexpected user agent "+ua, http.StatusBadRequest)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready: default backend unreachable:\n\tdial tcp 10.1.2.3:143: refused\x1b[2J", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/healthz", http.StatusFound)
	})
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	// A port nothing listens on: bind one, note it, close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String() + "/healthz"
	ln.Close()

	tests := []struct {
		name       string
		args       []string
		want       int
		wantStdout string // substring
		wantStderr string // substring; empty means stderr must be empty
		multiLine  bool   // stderr may hold more than one line (usage)
	}{
		{name: "200", args: []string{srv.URL + "/healthz"}, want: 0, wantStdout: "200 OK"},
		{name: "503 with reason", args: []string{srv.URL + "/readyz"}, want: 1,
			wantStderr: "503 Service Unavailable: not ready: default backend unreachable: dial tcp 10.1.2.3:143: refused [2J"},
		{name: "404", args: []string{srv.URL + "/nothing"}, want: 1, wantStderr: "404 Not Found"},
		{name: "redirect is not followed", args: []string{srv.URL + "/moved"}, want: 1, wantStderr: "302 Found"},
		{name: "204 is not 200", args: []string{srv.URL + "/created"}, want: 1, wantStderr: "204 No Content"},
		{name: "connection refused", args: []string{closedURL}, want: 1, wantStderr: "connection refused"},
		{name: "password in URL is redacted", args: []string{strings.Replace(srv.URL, "http://", "http://u:hunter2@", 1) + "/nothing"},
			want: 1, wantStderr: "u:xxxxx@"},
		{name: "no URL", args: nil, want: 1, wantStderr: "usage: mailgate healthcheck", multiLine: true},
		{name: "two URLs", args: []string{srv.URL, srv.URL}, want: 1, wantStderr: "usage: mailgate healthcheck", multiLine: true},
		{name: "not http", args: []string{"ftp://127.0.0.1/healthz"}, want: 1, wantStderr: "is not an http:// or https:// URL"},
		{name: "no host", args: []string{"/healthz"}, want: 1, wantStderr: "is not an http:// or https:// URL"},
		{name: "bad flag", args: []string{"-bogus", srv.URL}, want: 1, wantStderr: "flag provided but not defined", multiLine: true},
		{name: "zero timeout", args: []string{"-timeout", "0s", srv.URL}, want: 1, wantStderr: "must be positive"},
		{name: "help shows the 3s default", args: []string{"-h"}, want: 0, wantStderr: "(default 3s)", multiLine: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got := healthcheck(tc.args, &stdout, &stderr)
			if got != tc.want {
				t.Errorf("exit status %d, want %d (stdout %q, stderr %q)", got, tc.want, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.wantStdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tc.wantStdout)
			}
			if tc.wantStderr == "" && stderr.Len() > 0 {
				t.Errorf("stderr %q, want nothing", stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.wantStderr)
			}
			if strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("stderr %q shows the password of the URL", stderr.String())
			}
			if strings.Contains(stderr.String(), "\x1b") || !tc.multiLine && strings.Count(stderr.String(), "\n") > 1 {
				t.Errorf("stderr %q is not one line of printable text", stderr.String())
			}
		})
	}
}

// TestHealthcheckTimeout: a server that accepts and never answers fails the
// check within the timeout, with a reason that says so.
func TestHealthcheckTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close

	var stdout, stderr bytes.Buffer
	start := time.Now()
	got := healthcheck([]string{"-timeout", "200ms", srv.URL + "/healthz"}, &stdout, &stderr)
	elapsed := time.Since(start)
	if got != 1 {
		t.Errorf("exit status %d, want 1", got)
	}
	if elapsed > 2*time.Second {
		t.Errorf("took %v with -timeout 200ms", elapsed)
	}
	if want := "no answer within 200ms"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q does not contain %q", stderr.String(), want)
	}
}
