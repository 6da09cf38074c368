package daemon

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/key"
)

// BenchmarkReconcile is one reconcile of a host in a mesh of n reachable
// peers with nothing changed since the last: what the periodic reconcile
// and every gossip change anywhere in the mesh cost a host (issue 18: an
// idle daemon's cost must not grow with the mesh).
func BenchmarkReconcile(b *testing.B) {
	for _, n := range []int{100, 300, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			r, tn := newFakeRouter(), newFakeTunnel()
			d := newTestDaemon(b, testConfig(b), r, tn)
			peers := []discovery.Peer{{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")}}
			for i := 1; i < n; i++ {
				var k key.Public
				k[0], k[1] = byte(i), byte(i>>8)
				peers = append(peers, discovery.Peer{
					Key: k, Reachable: true, Direct: i%30 == 0,
					Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 6783),
					HostIP:   netip.AddrFrom4([4]byte{10, 40, byte(i >> 8), byte(i)}),
					Attached: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 41, byte(i >> 8), byte(i)}), 32)},
				})
			}
			r.peers = peers
			d.reconcile()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				d.reconcile()
			}
		})
	}
}
