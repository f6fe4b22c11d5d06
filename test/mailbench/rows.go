package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailgate/test/dovecot"
	"mailgate/test/pop3client"
	"mailgate/upstream"
)

// peer is one POP3 server of a row: mailgate, Dovecot's own POP3 on the
// store (native), Dovecot's POP3 over imapc.
type peer struct {
	name      string
	addr      string // empty: unavailable (why in note)
	note      string
	loginOnly bool // measured in the login rows only (the reuse peer)
}

// cell is one measurement: a throughput (bytes per second) or a latency.
type cell struct {
	skip    bool // not measured in this row
	ok      bool
	err     error
	bps     float64       // download rows
	perSec  float64       // logins/s
	latency time.Duration // p50 rows
	detail  string
}

type row struct {
	name  string
	kind  string // "bps", "rate", "latency"
	cells []cell // in the order of the peers
}

func runThroughput(ctx context.Context, o options, dc *dovecot.Server) error {
	msgs := make([][]byte, o.messages)
	rng := rand.New(rand.NewPCG(1, 2))
	var total int64
	for i := range msgs {
		size := int(o.size)
		if size == 0 {
			size = realisticSize(rng)
		}
		msgs[i] = makeMessage(rng, i, size)
		total += int64(len(msgs[i]))
	}
	if o.cache == 0 {
		need := total * int64(o.sessions) * 11 / 10
		o.cache = max(256<<20, upstream.Size((need>>20+1)<<20)) // whole MiB
	}
	mode := "near (mailgate and imapc straight to Dovecot's IMAP)"
	if o.far > 0 {
		mode = fmt.Sprintf("far: mailgate and imapc reach Dovecot's IMAP through a relay delaying each direction %v (RTT %v); native POP3 read directly", o.far, 2*o.far)
	}
	fmt.Printf("%s\n%d sessions x %d messages, %s per mailbox (mean %s per message); rows with body cache off (pop3.cache.max_bytes 0B); fetch-ahead %s\n",
		mode, o.sessions, o.messages, mb(total), kib(total/int64(o.messages)), (*sizeFlag)(&o.fetchAhead))
	users, err := seedUsers(dc, o.sessions, msgs)
	if err != nil {
		return err
	}

	backend := dc.IMAPAddr
	var rl *relay
	if o.far > 0 {
		if rl, err = startRelay(dc.IMAPAddr, o.far); err != nil {
			return err
		}
		defer rl.Close()
		backend = rl.Addr()
	}

	gw, err := startGateway(ctx, backend, 0, o, 0)
	if err != nil {
		return err
	}
	defer shutdown(gw)

	peers := []peer{
		{name: "native POP3", addr: dc.POP3Addr},
		{name: "dovecot imapc POP3"},
		{name: "mailgate", addr: gw.Addr("pop3").String()},
	}
	// The login rows again with pop3.reuse on: a poller's logins after the
	// first take the parked backend connection.
	order := []int{2, 0, 1}
	if o.reuse > 0 {
		gwr, err := startGateway(ctx, backend, 0, o, o.reuse)
		if err != nil {
			return err
		}
		defer shutdown(gwr)
		peers = append(peers, peer{name: fmt.Sprintf("mailgate, reuse %v", o.reuse), addr: gwr.Addr("pop3").String(), loginOnly: true})
		order = []int{2, 3, 0, 1}
	}
	if o.imapc {
		imapcStart := time.Now()
		px, err := startIMAPC(ctx, backend, users)
		if err != nil {
			peers[1].note = err.Error()
			fmt.Printf("imapc peer unavailable, going on without it: %v\n", err)
		} else {
			defer px.Stop()
			peers[1].addr = px.POP3Addr
			fmt.Printf("imapc peer: Dovecot POP3 over imapc at %s -> %s (ready in %v)\n", px.POP3Addr, backend, time.Since(imapcStart).Round(time.Millisecond))
		}
	} else {
		peers[1].note = "-imapc=false"
	}

	var rows []row
	// Each row measures its peers one after the other (mailgate, native,
	// imapc), so that slow phases of the shared machine hit all of them.
	measure := func(name, kind string, f func(addr string) cell) {
		r := row{name: name, kind: kind, cells: make([]cell, len(peers))}
		for _, i := range order {
			p := peers[i]
			if p.loginOnly && kind == "bps" {
				r.cells[i] = cell{skip: true}
				continue
			}
			if p.addr == "" {
				r.cells[i] = cell{err: errors.New("unavailable")}
				continue
			}
			addr := p.addr
			if i == 0 {
				addr = dc.POP3Addr // native: always direct
			}
			start := time.Now()
			c := f(addr)
			fmt.Printf("  %-44s %-20s %v\n", name, p.name, time.Since(start).Round(time.Millisecond))
			if c.err != nil {
				fmt.Printf("    error: %v\n", c.err)
			}
			r.cells[i] = c
		}
		rows = append(rows, r)
	}
	download := func(us []user) func(string) cell {
		return func(addr string) cell {
			r, err := popPass(ctx, addr, us)
			if err == nil && r.errors > 0 {
				err = fmt.Errorf("%d errors (first: %v)", r.errors, r.firstErr)
			}
			return cell{ok: err == nil, err: err, bps: float64(r.bytes) / r.elapsed.Seconds(),
				detail: fmt.Sprintf("%d msgs, %s in %v", r.messages, mb(r.bytes), r.elapsed.Round(time.Millisecond))}
		}
	}
	var relayBefore [2]int64
	if rl != nil {
		relayBefore = [2]int64{rl.up.Load(), rl.down.Load()}
	}

	if o.far == 0 {
		measure("full download, 1 session, cache off", "bps", download(users[:1]))
		measure(fmt.Sprintf("full download, %d users, cache off", len(users)), "bps", download(users))
		measure(fmt.Sprintf("logins/s (%d at once; USER/PASS, STAT, QUIT)", len(users)), "rate", func(addr string) cell {
			return loginRate(ctx, addr, users, o.loginTime)
		})
	} else {
		measure("far: full download, 1 session, cache off", "bps", download(users[:1]))
		var full []cell
		// One user, whose mailbox the download row has opened: an imapc
		// user's first login syncs its whole index over the far link (many
		// seconds), which is not what a login costs after that.
		measure(fmt.Sprintf("far: login p50 (connect..STAT, %d in turn)", o.logins), "latency", func(addr string) cell {
			login, whole := loginLatency(ctx, addr, users[:1], o.logins)
			full = append(full, whole)
			return login
		})
		// The same logins, through QUIT's answer.
		r := row{name: "far: login p50 through QUIT's +OK", kind: "latency", cells: make([]cell, len(peers))}
		k := 0
		for _, i := range order {
			if peers[i].addr == "" {
				r.cells[i] = cell{err: errors.New("unavailable")}
				continue
			}
			r.cells[i] = full[k]
			k++
		}
		rows = append(rows, r)
	}

	var extra []string
	if o.far == 0 && o.warm {
		// The cached gateway: cold pass fills the cache, warm pass hits.
		gwc, err := startGateway(ctx, backend, o.cache, o, 0)
		if err != nil {
			return err
		}
		defer shutdown(gwc)
		addr := gwc.Addr("pop3").String()
		var res []result
		for _, name := range []string{"mailgate, cache on: cold (fills)", "mailgate, cache on: warm", "dovecot IMAP UID FETCH 1:* (bulk)"} {
			start := time.Now()
			var r result
			if strings.HasPrefix(name, "dovecot IMAP") {
				r, err = imapPass(ctx, dc.IMAPAddr, users)
			} else {
				r, err = popPass(ctx, addr, users)
			}
			if err == nil && r.errors > 0 {
				err = fmt.Errorf("%d errors (first: %v)", r.errors, r.firstErr)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			r.name = name
			res = append(res, r)
			fmt.Printf("  %-44s %-20s %v\n", name, "", time.Since(start).Round(time.Millisecond))
		}
		native := rows[1].cells[0]
		for _, r := range res {
			bps := float64(r.bytes) / r.elapsed.Seconds()
			line := fmt.Sprintf("%-36s %8.1f MB/s (%d users, cache %s)", r.name, bps/1e6, len(users), o.cache)
			if native.ok {
				line += fmt.Sprintf("  %.2f of native POP3", bps/native.bps)
			}
			extra = append(extra, line)
		}
		bulk := float64(res[2].bytes) / res[2].elapsed.Seconds()
		mg := rows[1].cells[2]
		if mg.ok {
			extra = append(extra, fmt.Sprintf("mailgate cache off / IMAP bulk = %.2f; native POP3 / IMAP bulk = %.2f", mg.bps/bulk, native.bps/bulk))
		}
	}

	// The table: every figure, and its ratio to native POP3 of the same run.
	fmt.Printf("\n%-50s", "POP3 workload")
	for _, p := range peers {
		fmt.Printf(" %24s", p.name)
	}
	fmt.Println()
	var failed []string
	for _, r := range rows {
		fmt.Printf("%-50s", r.name)
		native := r.cells[0]
		for i, c := range r.cells {
			var s string
			switch {
			case c.skip:
				s = "-"
			case c.err != nil && peers[i].addr == "":
				s = "n/a"
			case c.err != nil:
				s = "FAILED"
				failed = append(failed, fmt.Sprintf("%s, %s: %v", r.name, peers[i].name, c.err))
			case r.kind == "bps":
				s = fmt.Sprintf("%.1f MB/s", c.bps/1e6)
				if native.ok {
					s = fmt.Sprintf("%.2f (%s)", c.bps/native.bps, s)
				}
			case r.kind == "rate":
				s = fmt.Sprintf("%.0f/s", c.perSec)
				if native.ok {
					s = fmt.Sprintf("%.2f (%s)", c.perSec/native.perSec, s)
				}
			case r.kind == "latency":
				s = fmt.Sprintf("%.1f ms", float64(c.latency)/1e6)
				if native.ok && i != 0 {
					s = fmt.Sprintf("%s (x%.1f)", s, float64(c.latency)/float64(native.latency))
				}
			}
			fmt.Printf(" %24s", s)
		}
		fmt.Println()
	}
	fmt.Println("(throughput: ratio to native POP3 of this run (figure); latency: figure (times native))")
	fmt.Println("\ndetails:")
	for _, r := range rows {
		for i, c := range r.cells {
			if c.detail != "" {
				fmt.Printf("  %-50s %-20s %s\n", r.name, peers[i].name, c.detail)
			}
		}
	}
	for _, p := range peers {
		if p.note != "" {
			fmt.Printf("  %s: %s\n", p.name, p.note)
		}
	}
	for _, l := range extra {
		fmt.Printf("  %s\n", l)
	}
	if rl != nil {
		fmt.Printf("  relay: %d connections; %s to the backend, %s back (both far peers); floor of a login that sends everything after the greeting at once: 2.5 RTT = %v\n",
			rl.conns.Load(), mb(rl.up.Load()-relayBefore[0]), mb(rl.down.Load()-relayBefore[1]), 5*o.far)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d measurements failed: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

// startIMAPC starts Dovecot's POP3 over imapc against backend (Dovecot's
// IMAP, or the relay in front of it) with the same users, and checks one
// login.
func startIMAPC(ctx context.Context, backend string, users []user) (*dovecot.Server, error) {
	px, err := dovecot.Start(dovecot.Options{POP3: true, IMAPC: backend})
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		if err := px.AddUser(u.name, u.pass); err != nil {
			px.Stop()
			return nil, err
		}
	}
	c, err := pop3client.Dial(px.POP3Addr, 30*time.Second)
	if err == nil {
		defer c.Close()
		if err = c.Login(users[0].name, users[0].pass); err == nil {
			var n int
			if n, _, err = c.Stat(); err == nil && n == 0 {
				err = errors.New("STAT says the maildrop is empty")
			}
			if err == nil {
				err = c.Quit()
			}
		}
	}
	if err != nil {
		log := px.Log()
		px.Stop()
		return nil, fmt.Errorf("first login through imapc: %v\n%s", err, tailLines(log, 10))
	}
	return px, nil
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// loginOnce connects, logs in, STATs and QUITs; it returns the time to
// STAT's answer and to QUIT's.
func loginOnce(addr string, u user) (login, whole time.Duration, err error) {
	start := time.Now()
	c, err := pop3client.Dial(addr, 30*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.Login(u.name, u.pass); err != nil {
		return 0, 0, err
	}
	if _, _, err := c.Stat(); err != nil {
		return 0, 0, err
	}
	login = time.Since(start)
	if err := c.Quit(); err != nil {
		return 0, 0, err
	}
	return login, time.Since(start), nil
}

// loginRate runs one login loop per user at once for d and counts the
// completed logins.
func loginRate(ctx context.Context, addr string, users []user, d time.Duration) cell {
	var n atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for _, u := range users {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if _, _, err := loginOnce(addr, u); err != nil {
					once.Do(func() { first = err })
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	if first == nil {
		first = ctx.Err()
	}
	return cell{ok: first == nil, err: first, perSec: float64(n.Load()) / el.Seconds(),
		detail: fmt.Sprintf("%d logins in %v", n.Load(), el.Round(time.Millisecond))}
}

// loginLatency runs n logins one after the other (rotating the users) and
// returns the median to STAT's answer and to QUIT's.
func loginLatency(ctx context.Context, addr string, users []user, n int) (login, whole cell) {
	var ls, ws []time.Duration
	for i := range n {
		if ctx.Err() != nil {
			return cell{err: ctx.Err()}, cell{err: ctx.Err()}
		}
		l, w, err := loginOnce(addr, users[i%len(users)])
		if err != nil {
			return cell{err: err}, cell{err: err}
		}
		ls, ws = append(ls, l), append(ws, w)
	}
	return latencyCell(ls), latencyCell(ws)
}

func latencyCell(ds []time.Duration) cell {
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1)+0.5)] }
	return cell{ok: true, latency: q(0.5), detail: fmt.Sprintf("n=%d min %.1f p50 %.1f p90 %.1f max %.1f ms", len(ds),
		ms(ds[0]), ms(q(0.5)), ms(q(0.9)), ms(ds[len(ds)-1]))}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
