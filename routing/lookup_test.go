package routing

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// authService is an auth_http service in the test: answer sets the answer's
// headers (and may write a status or body) for each request, which is
// recorded.
type authService struct {
	*httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	last     http.Header
}

func newAuthService(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) *authService {
	t.Helper()
	s := &authService{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		s.last = r.Header.Clone()
		s.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *authService) lastRequest() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// answerWith returns a handler setting the given headers ("Name", "value"
// pairs).
// A ":status" pair sets the status code (default 200).
func answerWith(kv ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		status := http.StatusOK
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == ":status" {
				fmt.Sscan(kv[i+1], &status)
				continue
			}
			w.Header().Add(kv[i], kv[i+1])
		}
		w.WriteHeader(status)
	}
}

// newLookupRouter builds a Router whose every user goes to the lookup at
// url, with backend "store" for its answers.
func newLookupRouter(t *testing.T, lc LookupConfig) *Router {
	t.Helper()
	if lc.Backend == "" {
		lc.Backend = "store"
	}
	r, err := New(Config{Lookup: &lc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

var alice = Login{
	User:     "alice@example.org",
	Password: "s3cret pass%word",
	Protocol: "pop3",
	ClientIP: netip.MustParseAddr("192.0.2.42"),
	Attempt:  1,
}

func TestLookupOK(t *testing.T) {
	tests := []struct {
		name   string
		send   bool
		answer []string
		want   Decision
	}{
		{"server and port", false,
			[]string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143"},
			Decision{Backend: "store", Address: "198.51.100.1:143", User: "alice@example.org", Source: SourceLookup}},
		{"IPv6 server", false,
			[]string{"Auth-Status", "OK", "Auth-Server", "2001:db8::7", "Auth-Port", "993"},
			Decision{Backend: "store", Address: "[2001:db8::7]:993", User: "alice@example.org", Source: SourceLookup}},
		{"user rewrite", false,
			[]string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143", "Auth-User", "alice"},
			Decision{Backend: "store", Address: "198.51.100.1:143", User: "alice", Source: SourceLookup}},
		{"user and password rewrite", true,
			[]string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143",
				"Auth-User", "alice*master", "Auth-Pass", "master-secret"},
			Decision{Backend: "store", Address: "198.51.100.1:143", User: "alice*master", Password: "master-secret", Source: SourceLookup}},
		{"no server: the backend's own servers", false,
			[]string{"Auth-Status", "OK", "Auth-User", "alice"},
			Decision{Backend: "store", User: "alice", Source: SourceLookup}},
		{"status code ignored, as nginx does", false,
			[]string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "110", ":status", "204"},
			Decision{Backend: "store", Address: "198.51.100.1:110", User: "alice@example.org", Source: SourceLookup}},
		{"redirect not followed, as nginx does", false,
			[]string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143", "Location", "/elsewhere", ":status", "302"},
			Decision{Backend: "store", Address: "198.51.100.1:143", User: "alice@example.org", Source: SourceLookup}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := newAuthService(t, answerWith(tt.answer...))
			r := newLookupRouter(t, LookupConfig{URL: svc.URL + "/auth", SendPassword: tt.send})
			d, err := r.Route(context.Background(), alice)
			if err != nil {
				t.Fatalf("Route: %v", err)
			}
			if d != tt.want {
				t.Errorf("Route = %+v\nwant    %+v", d, tt.want)
			}
			if n := svc.requests.Load(); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

func TestLookupRejects(t *testing.T) {
	svc := newAuthService(t, answerWith(
		"Auth-Status", "Invalid login or password",
		"Auth-Wait", "3",
		"Auth-Error-Code", "535 5.7.8"))
	r := newLookupRouter(t, LookupConfig{URL: svc.URL, SendPassword: true})
	start := time.Now()
	_, err := r.Route(context.Background(), alice)
	if !errors.Is(err, ErrRejected) || errors.Is(err, ErrLookupUnavailable) {
		t.Fatalf("Route error = %v, want ErrRejected", err)
	}
	var rej *RejectError
	if !errors.As(err, &rej) {
		t.Fatalf("error %T is not a *RejectError", err)
	}
	want := RejectError{Text: "Invalid login or password", Wait: 3 * time.Second, Code: "535 5.7.8"}
	if *rej != want {
		t.Errorf("RejectError = %+v, want %+v", *rej, want)
	}
	if time.Since(start) > time.Second {
		t.Error("Route waited Auth-Wait itself; the front answers after it")
	}
	if strings.Contains(err.Error(), alice.Password) {
		t.Errorf("error text %q contains the password", err)
	}
	// Rejections are not cached: a second try asks again.
	r2 := newLookupRouter(t, LookupConfig{URL: svc.URL, Cache: time.Minute})
	r2.Route(context.Background(), alice)
	r2.Route(context.Background(), alice)
	if n := svc.requests.Load(); n != 3 {
		t.Errorf("%d requests, want 3: a rejection was cached", n)
	}
}

func TestLookupRejectText(t *testing.T) {
	tests := []struct {
		status, wait string
		wantText     string
		wantWait     time.Duration
	}{
		{"Bad\x7fpass wörd", "", "Bad?pass w??rd", 0},
		{strings.Repeat("x", 300), "1", strings.Repeat("x", maxRejectText), time.Second},
		{"Try later", "999999", "Try later", MaxAuthWait},
		{"Nope", "3s", "Nope", 0}, // not a number of seconds: ignored, as nginx does
		{"Nope", "-1", "Nope", 0}, // ditto
		{"ok", "", "ok", 0},       // only "OK" is OK, case and all
		{"[AUTH] x", "", "[AUTH] x", 0},
	}
	for _, tt := range tests {
		h := http.Header{}
		h.Set("Auth-Status", tt.status)
		if tt.wait != "" {
			h.Set("Auth-Wait", tt.wait)
		}
		_, err := parseAnswer(h, false)
		var rej *RejectError
		if !errors.As(err, &rej) {
			t.Errorf("Auth-Status %q: error %v, want a rejection", tt.status, err)
			continue
		}
		if rej.Text != tt.wantText || rej.Wait != tt.wantWait {
			t.Errorf("Auth-Status %q, Auth-Wait %q: got %q, %v; want %q, %v", tt.status, tt.wait, rej.Text, rej.Wait, tt.wantText, tt.wantWait)
		}
	}
}

func TestLookupMalformedAnswers(t *testing.T) {
	tests := []struct {
		name   string
		send   bool
		answer []string
		want   string
	}{
		{"no Auth-Status (a proxy's error page)", false, []string{":status", "502"}, "no Auth-Status"},
		{"server without port", false, []string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1"}, "without Auth-Port"},
		{"port without server", false, []string{"Auth-Status", "OK", "Auth-Port", "143"}, "without Auth-Server"},
		{"host name, not an IP", false, []string{"Auth-Status", "OK", "Auth-Server", "imap.example.org", "Auth-Port", "143"}, "not an IP address"},
		{"port 0", false, []string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "0"}, "not a port"},
		{"port too large", false, []string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "65536"}, "not a port"},
		{"password rewrite without send_password", false,
			[]string{"Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143", "Auth-Pass", "master"}, "nobody would check"},
		{"WAIT forever", false, []string{"Auth-Status", "WAIT"}, "answered WAIT 4 times"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := newAuthService(t, answerWith(tt.answer...))
			r := newLookupRouter(t, LookupConfig{URL: svc.URL, SendPassword: tt.send})
			_, err := r.Route(context.Background(), alice)
			if !errors.Is(err, ErrLookupUnavailable) || errors.Is(err, ErrRejected) {
				t.Fatalf("Route error = %v, want ErrLookupUnavailable", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), alice.Password) || strings.Contains(err.Error(), "master") {
				t.Errorf("error %q contains a password", err)
			}
		})
	}
}

// TestLookupWait: "Auth-Status: WAIT" asks to be asked again after Auth-Wait.
func TestLookupWait(t *testing.T) {
	var n atomic.Int64
	svc := newAuthService(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 3 {
			w.Header().Set("Auth-Status", "WAIT")
			w.Header().Set("Auth-Wait", "0")
			return
		}
		answerWith("Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143")(w, r)
	})
	r := newLookupRouter(t, LookupConfig{URL: svc.URL})
	d, err := r.Route(context.Background(), alice)
	if err != nil || d.Address != "198.51.100.1:143" {
		t.Fatalf("Route = %+v, %v", d, err)
	}
	if got := svc.requests.Load(); got != 3 {
		t.Errorf("%d requests, want 3", got)
	}
	// A WAIT that lasts beyond the login's deadline ends with the deadline.
	svc2 := newAuthService(t, answerWith("Auth-Status", "WAIT", "Auth-Wait", "30"))
	r2 := newLookupRouter(t, LookupConfig{URL: svc2.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := r2.Route(ctx, alice); !errors.Is(err, ErrLookupUnavailable) {
		t.Errorf("Route error = %v, want ErrLookupUnavailable", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Route took %v despite a 100ms deadline", el)
	}
}

func TestLookupServiceDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now: connection refused
	r := newLookupRouter(t, LookupConfig{URL: "http://svc:urlsecret@" + addr + "/auth", SendPassword: true})
	start := time.Now()
	_, err = r.Route(context.Background(), alice)
	if !errors.Is(err, ErrLookupUnavailable) {
		t.Fatalf("Route error = %v, want ErrLookupUnavailable", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("a refused connection took %v to report", el)
	}
	for _, secret := range []string{alice.Password, "urlsecret"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q contains the secret %q", err, secret)
		}
	}
}

func TestLookupTimeout(t *testing.T) {
	release := make(chan struct{})
	svc := newAuthService(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	r := newLookupRouter(t, LookupConfig{URL: svc.URL, Timeout: 150 * time.Millisecond, SendPassword: true})
	start := time.Now()
	_, err := r.Route(context.Background(), alice)
	el := time.Since(start)
	if !errors.Is(err, ErrLookupUnavailable) {
		t.Fatalf("Route error = %v, want ErrLookupUnavailable", err)
	}
	if el < 150*time.Millisecond || el > 3*time.Second {
		t.Errorf("Route gave up after %v, want about 150ms", el)
	}
	if !strings.Contains(err.Error(), "no answer within 150ms") {
		t.Errorf("error %q does not say it timed out", err)
	}
	if strings.Contains(err.Error(), alice.Password) {
		t.Errorf("error %q contains the password", err)
	}
}

func TestLookupBoundedAnswer(t *testing.T) {
	// A huge header is refused; a huge body is not read.
	svc := newAuthService(t, answerWith("Auth-Status", "OK", "X-Junk", strings.Repeat("j", 64<<10)))
	r := newLookupRouter(t, LookupConfig{URL: svc.URL})
	if _, err := r.Route(context.Background(), alice); !errors.Is(err, ErrLookupUnavailable) {
		t.Errorf("64 KiB header: Route error = %v, want ErrLookupUnavailable", err)
	}
	big := newAuthService(t, func(w http.ResponseWriter, r *http.Request) {
		answerWith("Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143")(w, r)
		w.Write([]byte(strings.Repeat("body ", 1<<20)))
	})
	r = newLookupRouter(t, LookupConfig{URL: big.URL})
	if d, err := r.Route(context.Background(), alice); err != nil || d.Address != "198.51.100.1:143" {
		t.Errorf("5 MB body: Route = %+v, %v", d, err)
	}
}

func TestLookupCache(t *testing.T) {
	for _, send := range []bool{false, true} {
		t.Run(fmt.Sprintf("send_password=%v", send), func(t *testing.T) {
			svc := newAuthService(t, answerWith("Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143", "Auth-User", "alice"))
			r := newLookupRouter(t, LookupConfig{URL: svc.URL, Cache: time.Minute, SendPassword: send})
			clk := newFakeClock()
			r.lookup.now = clk.now
			ctx := context.Background()
			route := func(l Login, wantRequests int64) {
				t.Helper()
				d, err := r.Route(ctx, l)
				if err != nil || d.User != "alice" || d.Address != "198.51.100.1:143" {
					t.Fatalf("Route(%s) = %+v, %v", l.User, d, err)
				}
				if got := svc.requests.Load(); got != wantRequests {
					t.Fatalf("after Route(%s/%s): %d requests, want %d", l.User, l.Protocol, got, wantRequests)
				}
				r.Confirm(d) // the backend accepted each of these logins
			}
			route(alice, 1)
			again := alice
			again.Attempt, again.ClientIP = 2, netip.MustParseAddr("192.0.2.99")
			route(again, 1) // a hit: attempt and address are not part of the key
			imap := alice
			imap.Protocol = "imap"
			route(imap, 2) // another protocol: another key
			other := alice
			other.Password = "another password"
			if send {
				route(other, 3) // the password is part of the key when it is sent
			} else {
				route(other, 2) // the answer cannot depend on a password it never saw
			}
			n := svc.requests.Load()
			clk.advance(time.Minute)
			route(alice, n+1) // expired
			route(alice, n+1)
			// Only a keyed hash of the password is kept.
			for _, k := range r.lookup.cache.Keys() {
				if strings.Contains(fmt.Sprintf("%v", k), alice.Password) {
					t.Errorf("cache key %v holds the password", k)
				}
				if !send && k.pass != ([32]byte{}) {
					t.Errorf("cache key %v has a password hash without send_password", k)
				}
			}
		})
	}
}

// Only answers whose login the backend accepted are cached, so failed logins
// (guessed passwords, names the backend does not know) cannot fill the
// cache; expired answers are purged without waiting for the same login.
func TestLookupCachesOnlyConfirmedAndPurges(t *testing.T) {
	svc := newAuthService(t, answerWith("Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143"))
	r := newLookupRouter(t, LookupConfig{URL: svc.URL, Cache: time.Minute})
	clk := newFakeClock()
	r.lookup.now = clk.now
	ctx := context.Background()
	for i := range 3 {
		if _, err := r.Route(ctx, Login{User: fmt.Sprintf("guess%d@example.org", i), Protocol: "pop3"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.lookup.cache.Len(); n != 0 {
		t.Fatalf("%d answers cached for logins nobody confirmed", n)
	}
	d, err := r.Route(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	r.Confirm(d)
	r.Confirm(d) // twice is harmless
	if n := r.lookup.cache.Len(); n != 1 {
		t.Fatalf("%d answers cached after one confirmed login, want 1", n)
	}
	hit, err := r.Route(ctx, alice)
	if err != nil || svc.requests.Load() != 4 {
		t.Fatalf("confirmed answer not served from the cache: %v, %d requests", err, svc.requests.Load())
	}
	r.Confirm(hit) // a cached decision: nothing to do
	r.lookup.purgeMu.Lock()
	scheduled := r.lookup.purgeTimer != nil
	r.lookup.purgeMu.Unlock()
	if !scheduled {
		t.Fatal("no purge scheduled with an answer in the cache")
	}
	clk.advance(time.Minute)
	r.lookup.purge() // what the timer runs
	if n := r.lookup.cache.Len(); n != 0 {
		t.Fatalf("%d expired answers still held after the purge", n)
	}
	r.Close() // stops the timer
}

func TestLookupPasswordOnlyWhenConfigured(t *testing.T) {
	svc := newAuthService(t, answerWith("Auth-Status", "OK", "Auth-Server", "198.51.100.1", "Auth-Port", "143"))
	r := newLookupRouter(t, LookupConfig{URL: svc.URL})
	if _, err := r.Route(context.Background(), alice); err != nil {
		t.Fatal(err)
	}
	h := svc.lastRequest()
	if v, ok := h["Auth-Pass"]; ok {
		t.Errorf("Auth-Pass sent without send_password: %q", v)
	}
	if got := h.Get("Auth-User"); got != "alice@example.org" {
		t.Errorf("Auth-User = %q", got)
	}
	r = newLookupRouter(t, LookupConfig{URL: svc.URL, SendPassword: true})
	if _, err := r.Route(context.Background(), alice); err != nil {
		t.Fatal(err)
	}
	if got := svc.lastRequest().Get("Auth-Pass"); got != "s3cret%20pass%25word" {
		t.Errorf("Auth-Pass = %q, want the password escaped as nginx does", got)
	}
}

// TestLookupRequestAsNginx reads the request off the wire: the header lines
// nginx sends, with its exact spelling, and nothing else but Host.
func TestLookupRequestAsNginx(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		var lines []string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			line = strings.TrimRight(line, "\r\n")
			if line == "" {
				break
			}
			lines = append(lines, line)
		}
		got <- lines
		// An HTTP/1.0 answer, as nginx's examples show.
		c.Write([]byte("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n"))
	}()
	r := newLookupRouter(t, LookupConfig{
		URL:          "http://" + ln.Addr().String() + "/auth?x=1",
		SendPassword: true,
		Headers:      map[string]string{"X-Auth-Key": "shared secret"},
	})
	login := Login{
		User:     "joe user%\t@example.org",
		Password: "p w\x7f%\r\n",
		Protocol: "imap",
		ClientIP: netip.MustParseAddr("::ffff:192.0.2.42"), // an IPv4 client on a dual-stack socket
		Attempt:  0,
	}
	d, err := r.Route(context.Background(), login)
	if err != nil || d.Address != "127.0.0.1:143" {
		t.Fatalf("Route = %+v, %v", d, err)
	}
	lines := <-got
	want := []string{
		"GET /auth?x=1 HTTP/1.1",
		"Host: " + ln.Addr().String(),
		"Auth-Method: plain",
		"Auth-User: joe%20user%25%09@example.org",
		"Auth-Pass: p%20w%7F%25%0D%0A",
		"Auth-Protocol: imap",
		"Auth-Login-Attempt: 1",
		"Client-IP: 192.0.2.42",
		"X-Auth-Key: shared secret",
	}
	if lines[0] != want[0] || lines[1] != want[1] {
		t.Errorf("request starts %q, want %q", lines[:2], want[:2])
	}
	slices.Sort(lines[2:])
	slices.Sort(want[2:])
	if !slices.Equal(lines, want) {
		t.Errorf("request header lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

func TestEscapeAuth(t *testing.T) {
	tests := map[string]string{
		"":                     "",
		"alice@example.org":    "alice@example.org",
		"a b":                  "a%20b",
		"100%":                 "100%25",
		"\x00\x1f\x7f":         "%00%1F%7F",
		"üser+tag@example.org": "üser+tag@example.org", // 8-bit and URL specials other than % pass, as in nginx
	}
	for in, want := range tests {
		if got := escapeAuth(in); got != want {
			t.Errorf("escapeAuth(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRouteRulesBeforeLookup: user and domain rules decide without asking the
// service; everyone else is asked, and the default is not used for routing.
func TestRouteRulesBeforeLookup(t *testing.T) {
	svc := newAuthService(t, answerWith("Auth-Status", "OK", "Auth-Server", "198.51.100.9", "Auth-Port", "993"))
	r, err := New(Config{
		Default: "legacy",
		Rules: []Rule{
			{Domain: "example.org", Backend: "store", RewriteUser: "{local}"},
			{User: "boss@example.com", Backend: "vip"},
		},
		Lookup: &LookupConfig{URL: svc.URL},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tests := []struct {
		user string
		want Decision
	}{
		{"alice@example.org", Decision{Backend: "store", User: "alice", Source: SourceDomain}},
		{"boss@example.com", Decision{Backend: "vip", User: "boss@example.com", Source: SourceUser}},
		{"carol@example.com", Decision{Backend: "legacy", Address: "198.51.100.9:993", User: "carol@example.com", Source: SourceLookup}},
	}
	for _, tt := range tests {
		d, err := r.Route(context.Background(), Login{User: tt.user, Password: "pw", Protocol: "imap"})
		if err != nil || d != tt.want {
			t.Errorf("Route(%s) = %+v, %v; want %+v", tt.user, d, err, tt.want)
		}
	}
	if n := svc.requests.Load(); n != 1 {
		t.Errorf("%d lookups, want 1 (only for the user no rule matches)", n)
	}
}

// TestRouterCloseIsHarmless: Close while in use, and Route afterwards.
func TestRouterCloseIsHarmless(t *testing.T) {
	svc := newAuthService(t, answerWith("Auth-Status", "OK"))
	r := newLookupRouter(t, LookupConfig{URL: svc.URL})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				if _, err := r.Route(context.Background(), alice); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	r.Close()
	wg.Wait()
	r.Close()
	if d, err := r.Route(context.Background(), alice); err != nil || d.Backend != "store" {
		t.Errorf("Route after Close = %+v, %v", d, err)
	}
	static, err := New(Config{Default: "store"})
	if err != nil {
		t.Fatal(err)
	}
	static.Close() // no lookup: nothing to close
}
