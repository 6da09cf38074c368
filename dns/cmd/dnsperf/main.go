// Command dnsperf measures queries per second against a DNS server with
// dnstest.Load, or (-serve) runs a weavewg DNS server with generated names
// so the two can be measured in separate processes.
//
//	dnsperf -serve 127.0.0.1:5300 -names 100 &
//	dnsperf -addr 127.0.0.1:5300 -names 100 -duration 5s -inflight 32
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"time"

	"github.com/weavewg/weavewg/dns"
	"github.com/weavewg/weavewg/dns/dnstest"
)

func main() {
	var (
		addr     = flag.String("addr", "127.0.0.1:5300", "server to load (loopback, private or documentation addresses only)")
		serve    = flag.String("serve", "", "instead: run a server on this address with the generated names until interrupted")
		names    = flag.Int("names", 100, "names name0..nameN-1 under -domain, 2 addresses each")
		domain   = flag.String("domain", dns.DefaultDomain, "DNS domain")
		n        = flag.Int("n", 0, "total queries (0: until -duration)")
		duration = flag.Duration("duration", 5*time.Second, "how long to run")
		inflight = flag.Int("inflight", 32, "queries in flight at once")
	)
	flag.Parse()
	if *serve != "" {
		if err := runServer(*serve, *names, *domain); err != nil {
			fmt.Fprintln(os.Stderr, "dnsperf:", err)
			os.Exit(1)
		}
		return
	}
	var qnames []string
	for i := range *names {
		qnames = append(qnames, fmt.Sprintf("name%d.%s", i, *domain))
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	r, err := dnstest.Load(ctx, dnstest.LoadConfig{
		Addr: *addr, Names: qnames, Queries: *n, Duration: *duration, InFlight: *inflight,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsperf:", err)
		os.Exit(1)
	}
	fmt.Println(r)
}

func runServer(addr string, names int, domain string) error {
	s, err := dns.New(dns.Config{ListenAddr: addr, Domain: domain, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1})
	if err != nil {
		return err
	}
	for i := range names {
		for j := range 2 {
			a := netip.AddrFrom4([4]byte{10, 32, byte(i >> 8), byte(i)})
			if j == 1 {
				a = netip.AddrFrom4([4]byte{10, 33, byte(i >> 8), byte(i)})
			}
			if err := s.AddEntry(fmt.Sprintf("name%d", i), a, ""); err != nil {
				return err
			}
		}
	}
	if err := s.Start(); err != nil {
		return err
	}
	fmt.Println("serving on", s.Addr())
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	<-ctx.Done()
	c := s.Counters()
	fmt.Printf("dns_queries %d dns_answered_local %d\n", c["dns_queries"], c["dns_answered_local"])
	return s.Close()
}
