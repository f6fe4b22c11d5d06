package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// healthcheckTimeout bounds the whole check (connect, TLS, request, headers)
// by default. It is below the Dockerfile's HEALTHCHECK --timeout=5s, so the
// check reports its own reason instead of being killed by Docker.
const healthcheckTimeout = 3 * time.Second

// healthcheckBodyMax is how much of a failing answer is shown: enough for
// /readyz's one-line reason ("not ready: default backend unreachable: ...").
const healthcheckBodyMax = 512

const healthcheckUsage = `usage: mailgate healthcheck [-timeout 3s] URL

GETs URL once: exit status 0 when it answers 200 OK, 1 otherwise, with the reason.
For container health checks on images without curl, e.g.
  mailgate healthcheck http://127.0.0.1:9110/healthz
`

// healthcheck implements `mailgate healthcheck [-timeout D] URL`: one GET of
// URL, exit status 0 when the answer is 200 OK and 1 otherwise, with the
// reason on stderr (Docker keeps it in `docker inspect`'s health log). It
// exists because the distroless image has no curl or wget: the Dockerfile's
// HEALTHCHECK, and Kubernetes exec probes if wanted, call the binary itself.
//
// Docker reserves exit status 2 for health checks, so every failure, a usage
// error included, exits 1. Redirects are not followed (a health endpoint that
// redirects is misconfigured, not healthy) and proxy variables from the
// environment are ignored: the check is about this host's endpoint.
func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", healthcheckTimeout, "bound on the whole request")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), healthcheckUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 1
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 1
	}
	u, err := url.Parse(fs.Arg(0))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "mailgate healthcheck: %q is not an http:// or https:// URL\n", fs.Arg(0))
		return 1
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "mailgate healthcheck: -timeout %v: must be positive\n", *timeout)
		return 1
	}
	// Redacted hides a password in the URL, should anyone put one there.
	target := u.Redacted()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate healthcheck: %s: %v\n", target, err)
		return 1
	}
	req.Header.Set("User-Agent", "mailgate-healthcheck/"+version)
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(stderr, "mailgate healthcheck: %s: no answer within %v\n", target, *timeout)
			return 1
		}
		fmt.Fprintf(stderr, "mailgate healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The deadline still bounds this read; a body cut short by it only
		// shortens the reason.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, healthcheckBodyMax))
		msg := fmt.Sprintf("mailgate healthcheck: %s: %s", target, resp.Status)
		if reason := printable(body); reason != "" {
			msg += ": " + reason
		}
		fmt.Fprintln(stderr, msg)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", target, resp.Status)
	return 0
}

// printable turns a response body into one line of text: control characters
// (a hostile or binary body could otherwise rewrite the terminal or the log)
// become spaces, runs of space collapse.
func printable(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, string(b))
	return strings.Join(strings.Fields(s), " ")
}
