package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/dns/dnstest"
)

// discardWriter is a ResponseWriter that drops what it is given.
type discardWriter struct{ n int }

var benchAddr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}

func (w *discardWriter) LocalAddr() net.Addr         { return benchAddr }
func (w *discardWriter) RemoteAddr() net.Addr        { return benchAddr }
func (w *discardWriter) WriteMsg(*mdns.Msg) error    { return nil }
func (w *discardWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }
func (w *discardWriter) Close() error                { return nil }
func (w *discardWriter) TsigStatus() error           { return nil }
func (w *discardWriter) TsigTimersOnly(bool)         {}
func (w *discardWriter) Hijack()                     {}
func (w *discardWriter) Network() string             { return "udp" }

func benchServer(b *testing.B, listen bool) *Server {
	s, err := New(Config{Self: selfKey, GossipInterval: -1, Upstreams: []string{"127.0.0.1:1"}})
	if err != nil {
		b.Fatal(err)
	}
	if listen {
		s.cfg.ListenAddr = "127.0.0.1:0"
	}
	for i := range 100 {
		for j := range 2 {
			a := netip.AddrFrom4([4]byte{10, byte(32 + j), 0, byte(i)})
			if err := s.AddEntry(fmt.Sprintf("name%d", i), a, ""); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkServeDNS is the answer path alone: handler, packing, no sockets.
func BenchmarkServeDNS(b *testing.B) {
	s := benchServer(b, false)
	req := new(mdns.Msg)
	req.SetQuestion("name7.weave.local.", mdns.TypeA)
	w := &discardWriter{}
	b.ReportAllocs()
	for b.Loop() {
		s.ServeDNS(w, req)
	}
}

// BenchmarkUDP is queries per second over loopback UDP, load generator and
// server sharing the machine's cores.
func BenchmarkUDP(b *testing.B) {
	s := benchServer(b, true)
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("name%d.weave.local.", i))
	}
	b.ResetTimer()
	r, err := dnstest.Load(context.Background(), dnstest.LoadConfig{
		Addr: s.Addr().String(), Names: names, Queries: b.N, InFlight: 32, Timeout: 2 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	if r.Lost > 0 || r.BadRcode > 0 {
		b.Errorf("%v", r)
	}
	b.ReportMetric(r.QPS(), "q/s")
}
