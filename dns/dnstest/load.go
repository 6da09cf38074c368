// Package dnstest is a DNS load generator: it sends queries over UDP with a
// bounded number in flight and reports queries per second.
package dnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// LoadConfig describes one run. The run ends after Queries answers (or
// losses) or after Duration, whichever comes first; at least one must be set.
type LoadConfig struct {
	Addr     string   // server "ip:port"; see CheckTarget
	Names    []string // fully qualified names, queried round-robin
	Qtype    uint16   // default A
	Queries  int      // total queries; 0: no limit
	Duration time.Duration
	InFlight int           // queries outstanding at once (default 16)
	Timeout  time.Duration // per query (default 1 s); a timeout counts as lost
}

// Result is what a run measured.
type Result struct {
	Sent, Answered, Lost, BadRcode uint64
	Elapsed                        time.Duration
}

// QPS is answered queries per second.
func (r Result) QPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Answered) / r.Elapsed.Seconds()
}

func (r Result) String() string {
	return fmt.Sprintf("%d queries in %.2fs: %.0f q/s answered, %d lost, %d not NOERROR",
		r.Sent, r.Elapsed.Seconds(), r.QPS(), r.Lost, r.BadRcode)
}

// CheckTarget refuses addresses outside loopback, private ranges (the
// overlay, test-bed namespaces) and the documentation ranges: this tool
// floods its target.
func CheckTarget(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	a := ap.Addr().Unmap()
	doc := []netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
	}
	if a.IsLoopback() || a.IsPrivate() {
		return nil
	}
	for _, p := range doc {
		if p.Contains(a) {
			return nil
		}
	}
	return fmt.Errorf("dnstest: refusing to load %s: only loopback, private and documentation addresses", a)
}

// Load runs one measurement.
func Load(ctx context.Context, cfg LoadConfig) (Result, error) {
	if len(cfg.Names) == 0 {
		return Result{}, errors.New("dnstest: no names")
	}
	if cfg.Queries <= 0 && cfg.Duration <= 0 {
		return Result{}, errors.New("dnstest: neither Queries nor Duration")
	}
	if err := CheckTarget(cfg.Addr); err != nil {
		return Result{}, err
	}
	if cfg.Qtype == 0 {
		cfg.Qtype = mdns.TypeA
	}
	if cfg.InFlight <= 0 {
		cfg.InFlight = 16
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	// Pre-pack one query per name; workers only patch the ID.
	packed := make([][]byte, len(cfg.Names))
	for i, n := range cfg.Names {
		m := new(mdns.Msg)
		m.SetQuestion(mdns.Fqdn(n), cfg.Qtype)
		b, err := m.Pack()
		if err != nil {
			return Result{}, err
		}
		packed[i] = b
	}
	var (
		budget                      atomic.Int64
		sent, answered, lost, rcode atomic.Uint64
		wg                          sync.WaitGroup
		firstErr                    error
		errOnce                     sync.Once
	)
	budget.Store(int64(cfg.Queries))
	limited := cfg.Queries > 0
	start := time.Now()
	for w := range cfg.InFlight {
		conn, err := net.Dial("udp", cfg.Addr)
		if err != nil {
			return Result{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
			defer stop()
			q := make([]byte, 0, 512)
			buf := make([]byte, 65535)
			id := uint16(w << 10)
			for i := w; ctx.Err() == nil; i++ {
				if limited && budget.Add(-1) < 0 {
					return
				}
				q = append(q[:0], packed[i%len(packed)]...)
				id++
				q[0], q[1] = byte(id>>8), byte(id)
				conn.SetDeadline(time.Now().Add(cfg.Timeout))
				if _, err := conn.Write(q); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				sent.Add(1)
				for {
					n, err := conn.Read(buf)
					if err != nil {
						if ctx.Err() == nil {
							lost.Add(1)
						}
						break
					}
					if n < 12 || buf[0] != byte(id>>8) || buf[1] != byte(id) {
						continue // a late answer to an earlier query
					}
					answered.Add(1)
					if buf[3]&0x0f != 0 {
						rcode.Add(1)
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	r := Result{Sent: sent.Load(), Answered: answered.Load(), Lost: lost.Load(), BadRcode: rcode.Load(), Elapsed: time.Since(start)}
	return r, firstErr
}
