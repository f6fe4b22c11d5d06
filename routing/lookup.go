package routing

// The external lookup: a client of nginx's mail auth_http protocol
// (https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html), so that a
// routing/authentication service written for nginx's mail proxy works
// unchanged. What it sends and how it reads the answer follows nginx's
// ngx_mail_auth_http_module.c, not only its documentation:
//
//	GET /auth HTTP/1.1
//	Host: 127.0.0.1:9000
//	Auth-Method: plain                 always: USER/PASS, AUTH PLAIN and AUTH LOGIN are all "plain" in nginx
//	Auth-User: alice@example.org       escaped as nginx does: space, % and bytes 0x00-0x1F (and 0x7F) as %XX
//	Auth-Pass: secret                  only with send_password: true (nginx always sends it), escaped likewise
//	Auth-Protocol: pop3                pop3 or imap
//	Auth-Login-Attempt: 1              1 for the first attempt of a connection, then 2, 3...
//	Client-IP: 192.0.2.42              the client's address after PROXY protocol; left out when unknown
//
// Client-Host is left out, as nginx does for POP3 and IMAP (it resolves the
// client's name for SMTP only). Extra headers of lookup.headers (nginx's
// auth_http_header) are added. There is no User-Agent, as from nginx.
//
// The answer is read from its headers only; its status code and body are
// ignored (nginx's own examples answer 200 or 204):
//
//	Auth-Status: OK                    or an error text for the client, or WAIT
//	Auth-Server: 198.51.100.1          an IP address, as nginx requires (no host names)
//	Auth-Port: 143
//	Auth-User: alice                   optional: the name to log in to the backend with (taken as is)
//	Auth-Pass: master-secret           optional: the password to log in with instead of the client's
//	Auth-Wait: 3                       with an error: seconds before the client may try again
//	Auth-Error-Code: 535 5.7.8         with an error: SMTP's code in nginx; passed on in RejectError.Code
//
// Differences from nginx, each on the safe side:
//   - An OK without Auth-Server and Auth-Port is accepted (nginx fails it):
//     the user goes to lookup.backend's own address or pool, with the
//     answer's Auth-User and Auth-Pass. One of the two without the other is
//     an error, as in nginx.
//   - An answer without Auth-Status is an error (nginx would take it as OK).
//   - An Auth-Pass in the answer when the service was not sent the password
//     (send_password off) is refused: nobody would have checked the client's
//     password, and any client naming the user would get in.
//   - "WAIT" (ask again after Auth-Wait seconds) is honoured at most three
//     times, within the login's deadline; nginx asks forever.
//   - Auth-Wait is capped at MaxAuthWait.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultLookupTimeout bounds a request to the lookup service when
// lookup.timeout is not set.
const DefaultLookupTimeout = 5 * time.Second

// MaxAuthWait caps the service's Auth-Wait, so that a wrong answer cannot
// hold a connection for hours.
const MaxAuthWait = time.Minute

const (
	maxAnswerHeaderBytes = 16 << 10 // the answer's headers; a real one is < 1 KiB
	maxDrainBytes        = 4 << 10  // a body this small is read to keep the connection
	maxCacheEntries      = 100_000  // OK answers kept at most
	maxWaitAnswers       = 3        // "Auth-Status: WAIT" answers honoured per login
	maxRejectText        = 200      // bytes of the service's error text passed on
)

// ErrRejected matches the *RejectError returned when the lookup service
// refuses a login (its Auth-Status is an error text).
var ErrRejected = errors.New("login rejected by the lookup service")

// ErrLookupUnavailable is returned when the lookup service cannot be asked or
// its answer cannot be used: refused connection, timeout, an answer without
// Auth-Status or with a bad Auth-Server or Auth-Port. The fronts answer it
// as a temporary failure (-ERR [SYS/TEMP], NO [UNAVAILABLE]); the wrapped
// text says why, for the log, and never contains the password.
var ErrLookupUnavailable = errors.New("lookup service unavailable")

// RejectError is the lookup service's refusal of a login. It matches
// ErrRejected. nginx shows Text to the client ("-ERR <text>", "<tag> NO
// <text>") and then, with a Wait, lets the client try again after Wait; with
// no Wait it closes the connection.
type RejectError struct {
	// Text is Auth-Status: printable ASCII only (anything else becomes ?),
	// at most 200 bytes, possibly empty (then show a generic text).
	Text string
	// Wait is Auth-Wait, at most MaxAuthWait; zero when the service sent
	// none. Answer the failure only after it.
	Wait time.Duration
	// Code is Auth-Error-Code as sent (same cleaning as Text), e.g.
	// "535 5.7.8". nginx uses it only for SMTP; a POP3 or IMAP front keeps
	// its own [AUTH] / AUTHENTICATIONFAILED code.
	Code string
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("%v: %q", ErrRejected, e.Text)
}

// Unwrap makes errors.Is(err, ErrRejected) true.
func (e *RejectError) Unwrap() error { return ErrRejected }

// PublicText is the service's refusal text, cleaned, for the client (nginx
// shows it too); empty when the service gave none.
func (e *RejectError) PublicText() string { return e.Text }

// lookup asks the auth_http service and caches its OK answers that led to a
// successful backend login (Router.Confirm); expired answers are purged on a
// timer. Its
// configuration is fixed at creation; the cache is internally synchronized.
type lookup struct {
	url      string // may hold credentials: never in messages
	redacted string // url for messages
	backend  string
	timeout  time.Duration
	sendPass bool
	headers  map[string]string
	client   *http.Client
	tr       *http.Transport

	cacheFor time.Duration
	cache    *lru.Cache[cacheKey, cachedDecision] // nil without caching
	salt     []byte                               // HMAC key for the password in cache keys

	now func() time.Time // the clock; tests replace it

	purgeMu    sync.Mutex
	purgeTimer *time.Timer // pending purge of expired answers; nil: none scheduled
	closed     bool        // no more purges are scheduled
}

// pendingAnswer is a fresh answer waiting for Router.Confirm.
type pendingAnswer struct {
	l   *lookup
	key cacheKey
}

type cacheKey struct {
	user, protocol string
	pass           [sha256.Size]byte // HMAC of the password with send_password; zero otherwise
}

type cachedDecision struct {
	d       Decision
	expires time.Time
}

// newLookup builds the client for a LookupConfig that Validate accepted.
// backend is the backend its decisions name.
func newLookup(cfg LookupConfig, backend string) *lookup {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultLookupTimeout
	}
	tr := &http.Transport{
		Proxy:                  nil, // never through $HTTP_PROXY: requests may carry passwords
		DialContext:            (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: maxAnswerHeaderBytes,
		MaxIdleConnsPerHost:    32, // logins come in bursts; reuse connections
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true, // the body is ignored anyway
	}
	l := &lookup{
		url:      cfg.URL,
		redacted: redactURL(cfg.URL),
		backend:  backend,
		timeout:  timeout,
		sendPass: cfg.SendPassword,
		headers:  cfg.Headers,
		tr:       tr,
		client: &http.Client{
			Transport: tr,
			// nginx does not follow redirects: it reads the headers of
			// whatever it gets. Do the same.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		cacheFor: cfg.Cache,
		now:      time.Now,
	}
	if cfg.Cache > 0 {
		l.cache, _ = lru.New[cacheKey, cachedDecision](maxCacheEntries) // errors only for size <= 0
		l.salt = make([]byte, 32)
		rand.Read(l.salt)
	}
	return l
}

func (l *lookup) close() {
	l.tr.CloseIdleConnections()
	l.purgeMu.Lock()
	defer l.purgeMu.Unlock()
	l.closed = true
	if l.purgeTimer != nil {
		l.purgeTimer.Stop()
		l.purgeTimer = nil
	}
}

// store caches d under key until lookup.cache from now, and makes sure a
// purge of expired answers is scheduled.
func (l *lookup) store(key cacheKey, d Decision) {
	d.confirm = nil
	l.cache.Add(key, cachedDecision{d: d, expires: l.now().Add(l.cacheFor)})
	l.schedulePurge()
}

// schedulePurge arms the purge timer unless one is pending. A timer, not a
// goroutine: nothing runs while the cache is empty.
func (l *lookup) schedulePurge() {
	l.purgeMu.Lock()
	defer l.purgeMu.Unlock()
	if l.closed || l.purgeTimer != nil {
		return
	}
	l.purgeTimer = time.AfterFunc(l.cacheFor, l.purge)
}

// purge removes the expired answers, so that they do not hold memory until
// the same login comes again, and re-arms while answers remain.
func (l *lookup) purge() {
	now := l.now()
	for _, k := range l.cache.Keys() {
		if c, ok := l.cache.Peek(k); ok && !now.Before(c.expires) {
			l.cache.Remove(k)
		}
	}
	l.purgeMu.Lock()
	l.purgeTimer = nil
	l.purgeMu.Unlock()
	if l.cache.Len() > 0 {
		l.schedulePurge()
	}
}

// route asks the service (or its cache) where login goes.
func (l *lookup) route(ctx context.Context, login Login) (Decision, error) {
	var key cacheKey
	if l.cache != nil {
		key = cacheKey{user: login.User, protocol: login.Protocol}
		if l.sendPass {
			// The answer may depend on the password: a cached OK must only
			// serve the same password again. Only a keyed hash is kept.
			m := hmac.New(sha256.New, l.salt)
			m.Write([]byte(login.Password))
			m.Sum(key.pass[:0])
		}
		if c, ok := l.cache.Get(key); ok {
			if l.now().Before(c.expires) {
				return c.d, nil
			}
			l.cache.Remove(key)
		}
	}
	for waits := 0; ; waits++ {
		a, err := l.ask(ctx, login)
		if err != nil {
			return Decision{}, err
		}
		if a.retry {
			// Auth-Status: WAIT: the service asks to be asked again later.
			if waits == maxWaitAnswers {
				return Decision{}, fmt.Errorf("%w: %s answered WAIT %d times", ErrLookupUnavailable, l.redacted, waits+1)
			}
			if err := sleep(ctx, a.wait); err != nil {
				return Decision{}, fmt.Errorf("%w: waiting to ask %s again: %v", ErrLookupUnavailable, l.redacted, err)
			}
			continue
		}
		d := a.d
		d.Backend, d.Source = l.backend, SourceLookup
		if d.User == "" {
			d.User = login.User
		}
		if l.cache != nil {
			// Cached only when the backend accepts the login (Confirm).
			d.confirm = &pendingAnswer{l: l, key: key}
		}
		return d, nil
	}
}

// answer is a parsed reply of the service.
type answer struct {
	retry bool          // Auth-Status: WAIT
	wait  time.Duration // with retry: Auth-Wait
	d     Decision      // with OK: Address, User, Password
}

// ask sends one request. The error is a *RejectError or wraps
// ErrLookupUnavailable.
func (l *lookup) ask(ctx context.Context, login Login) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.url, nil)
	if err != nil {
		return answer{}, fmt.Errorf("%w: %s: %v", ErrLookupUnavailable, l.redacted, err)
	}
	h := req.Header
	for name, value := range l.headers {
		h[name] = []string{value}
	}
	// Header names exactly as nginx writes them ("Client-IP", not Go's
	// canonical "Client-Ip"): some services compare them case-sensitively.
	h["User-Agent"] = []string{""} // none, as from nginx
	h["Auth-Method"] = []string{"plain"}
	h["Auth-User"] = []string{escapeAuth(login.User)}
	if l.sendPass {
		h["Auth-Pass"] = []string{escapeAuth(login.Password)}
	}
	h["Auth-Protocol"] = []string{login.Protocol}
	h["Auth-Login-Attempt"] = []string{strconv.Itoa(max(login.Attempt, 1))}
	if login.ClientIP.IsValid() {
		h["Client-IP"] = []string{login.ClientIP.Unmap().WithZone("").String()}
	}

	resp, err := l.client.Do(req)
	if err != nil {
		// *url.Error repeats the method and URL; keep the cause only. No
		// header, hence no password, is ever part of it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %v", l.timeout)
		}
		return answer{}, fmt.Errorf("%w: %s: %v", ErrLookupUnavailable, l.redacted, err)
	}
	if resp.ContentLength >= 0 && resp.ContentLength <= maxDrainBytes {
		// Read a small body so that the connection can be reused.
		io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	a, err := parseAnswer(resp.Header, l.sendPass)
	if err != nil && !errors.Is(err, ErrRejected) {
		return answer{}, fmt.Errorf("%w: %s (HTTP %d): %v", ErrLookupUnavailable, l.redacted, resp.StatusCode, err)
	}
	return a, err
}

// parseAnswer reads the service's answer headers. sentPassword says whether
// the request carried Auth-Pass. A refusal is a *RejectError; any other
// error means the answer is unusable.
func parseAnswer(h http.Header, sentPassword bool) (answer, error) {
	status := h.Values("Auth-Status")
	if len(status) == 0 {
		return answer{}, errors.New("the answer has no Auth-Status header")
	}
	switch status[0] {
	case "OK": // exactly, as nginx compares it
	case "WAIT":
		return answer{retry: true, wait: authWait(h)}, nil
	default:
		return answer{}, &RejectError{
			Text: cleanText(status[0]),
			Wait: authWait(h),
			Code: cleanText(h.Get("Auth-Error-Code")),
		}
	}
	var a answer
	server, port := h.Get("Auth-Server"), h.Get("Auth-Port")
	switch {
	case server == "" && port == "":
		// The backend's own servers (see the file comment).
	case server == "":
		return answer{}, errors.New("Auth-Port without Auth-Server")
	case port == "":
		return answer{}, errors.New("Auth-Server without Auth-Port")
	default:
		ip, err := netip.ParseAddr(server)
		if err != nil {
			return answer{}, fmt.Errorf("Auth-Server %q is not an IP address", cleanText(server))
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return answer{}, fmt.Errorf("Auth-Port %q is not a port number", cleanText(port))
		}
		a.d.Address = netip.AddrPortFrom(ip, uint16(p)).String()
	}
	if u := h.Get("Auth-User"); u != "" {
		if hasControl(u) {
			return answer{}, errors.New("Auth-User contains a control character")
		}
		a.d.User = u
	}
	if p := h.Get("Auth-Pass"); p != "" {
		if !sentPassword {
			return answer{}, errors.New("Auth-Pass in the answer, but the service was not sent the password " +
				"(routing.lookup.send_password is off): nobody would check the client's password")
		}
		if hasControl(p) {
			return answer{}, errors.New("Auth-Pass contains a control character")
		}
		a.d.Password = p
	}
	return a, nil
}

// authWait parses Auth-Wait, whole seconds as nginx reads them; anything
// else counts as absent.
func authWait(h http.Header) time.Duration {
	n, err := strconv.ParseUint(h.Get("Auth-Wait"), 10, 32)
	if err != nil {
		return 0
	}
	return min(time.Duration(n)*time.Second, MaxAuthWait)
}

// escapeAuth escapes a login name or password for a request header as nginx
// does (ngx_escape_uri with NGX_ESCAPE_MAIL_AUTH): space, % and the control
// bytes 0x00-0x1F as %XX; services unescape them as URL encoding. DEL (0x7F)
// is escaped too, which nginx does not do, because an HTTP header may not
// carry it. Other bytes, UTF-8 included, pass unchanged.
func escapeAuth(s string) string {
	const hex = "0123456789ABCDEF"
	escape := func(c byte) bool { return c == ' ' || c == '%' || c < 0x20 || c == 0x7f }
	n := 0
	for i := 0; i < len(s); i++ {
		if escape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		if c := s[i]; escape(c) {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// cleanText makes a header value safe to show in a POP3 or IMAP response
// line: printable ASCII only, bounded.
func cleanText(s string) string {
	b := []byte(strings.TrimSpace(s))
	if len(b) > maxRejectText {
		b = b[:maxRejectText]
	}
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
