package dns

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/types/key"
)

// The gossip's work per change and per round at table sizes of 100 to
// 1,000 owners (issue 18): each should cost the same at every size.
// These use only what the Server had before the table kept an index by
// owner and its digest, so they run on both (dns/ of 8dfa7b9: an arrival's
// answer and a digest read the whole table).

// nopSender takes every message and drops it.
type nopSender struct{ n int }

func (s *nopSender) Broadcast(b []byte)                { s.n += len(b) }
func (s *nopSender) Send(_ key.Public, b []byte) error { s.n += len(b); return nil }

// ownerKey is the i-th of the benchmarks' owners, spread over the buckets.
func ownerKey(i int) key.Public {
	var k key.Public
	binary.BigEndian.PutUint32(k[:], uint32(i)*2654435761+7)
	k[31] = 1
	return k
}

// scaleServer is a Server whose table holds two entries of each of n
// owners, all reachable, and two of its own.
func scaleServer(b *testing.B, n int) (*Server, []key.Public) {
	s, err := New(Config{Self: selfKey, GossipInterval: -1, Upstreams: []string{"127.0.0.1:1"}, Transport: &nopSender{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	owners := make([]key.Public, n)
	for i := range owners {
		owners[i] = ownerKey(i)
		var es []Entry
		for j := range 2 {
			es = append(es, Entry{Owner: owners[i], Name: fmt.Sprintf("c%d-%d", i, j),
				Addr: netip.AddrFrom4([4]byte{10, 32 + byte(j), byte(i >> 8), byte(i)}), Version: uint64(i + 1)})
		}
		if err := s.HandleMessage(owners[i], AppendMessages(MsgState, es)[0]); err != nil {
			b.Fatal(err)
		}
	}
	for j := range 2 {
		if err := s.AddEntry(fmt.Sprintf("self%d", j), netip.AddrFrom4([4]byte{10, 40, 0, byte(j)}), ""); err != nil {
			b.Fatal(err)
		}
	}
	s.SetReachable(owners)
	return s, owners
}

var scaleSizes = []int{100, 300, 1000}

// BenchmarkPullAnswer: a pull (or an arrival) answered with our own entries
// and our copies of the puller's.
func BenchmarkPullAnswer(b *testing.B) {
	pull := []byte{wireVersion, MsgPull, 0, 0}
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("owners=%d", n), func(b *testing.B) {
			s, owners := scaleServer(b, n)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := s.HandleMessage(owners[i%n], pull); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDigestAfterChange: one owner's entry changes (an update arrives)
// and a digest round follows, the pace of a mesh where something changes
// every second.
func BenchmarkDigestAfterChange(b *testing.B) {
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("owners=%d", n), func(b *testing.B) {
			s, owners := scaleServer(b, n)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				o := owners[i%n]
				e := Entry{Owner: o, Name: fmt.Sprintf("c%d-0", i%n), Addr: netip.AddrFrom4([4]byte{10, 32, byte((i % n) >> 8), byte(i % n)}),
					Version: uint64(n + 1 + i)}
				if err := s.HandleMessage(o, AppendMessages(MsgUpdate, []Entry{e})[0]); err != nil {
					b.Fatal(err)
				}
				s.SendDigest(owners[(i+1)%n])
			}
		})
	}
}

// BenchmarkDigestAnswer: a digest that differs in one bucket is answered
// with that bucket's summary.
func BenchmarkDigestAnswer(b *testing.B) {
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("owners=%d", n), func(b *testing.B) {
			s, owners := scaleServer(b, n)
			other := &nopSender{}
			peer, err := New(Config{Self: owners[0], GossipInterval: -1, Upstreams: []string{"127.0.0.1:1"}, Transport: other})
			if err != nil {
				b.Fatal(err)
			}
			defer peer.Close()
			// The peer's digest: the table less one owner's entries.
			var msg []byte
			peer.SetTransport(&captureSender{fn: func(m []byte) { msg = m }})
			for i := 1; i < n; i++ {
				var es []Entry
				for j := range 2 {
					es = append(es, Entry{Owner: owners[i], Name: fmt.Sprintf("c%d-%d", i, j),
						Addr: netip.AddrFrom4([4]byte{10, 32 + byte(j), byte(i >> 8), byte(i)}), Version: uint64(i + 1)})
				}
				peer.HandleMessage(owners[i], AppendMessages(MsgState, es)[0])
			}
			peer.SendDigest(selfKey)
			if msg == nil {
				b.Fatal("no digest")
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := s.HandleMessage(owners[0], msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// captureSender keeps what is sent to one peer.
type captureSender struct{ fn func([]byte) }

func (c *captureSender) Broadcast([]byte) {}
func (c *captureSender) Send(_ key.Public, b []byte) error {
	c.fn(b)
	return nil
}

// BenchmarkTableMemory: the heap a table holds per owner of one entry, as
// every simulated peer's table holds one of every other peer (N² in one
// process: the N=1,000 simulation needs 12 GB).
func BenchmarkTableMemory(b *testing.B) {
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("owners=%d", n), func(b *testing.B) {
			es := make([]Entry, n)
			for i := range es {
				es[i] = Entry{Owner: ownerKey(i), Name: fmt.Sprintf("n%d", i),
					Addr: netip.AddrFrom4([4]byte{10, 32, byte(i >> 8), byte(i)}), Origin: "c", Version: uint64(i + 1)}
			}
			now := time.Now()
			var per float64
			for b.Loop() {
				var m0, m1 runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&m0)
				t := NewTable(selfKey, TableOptions{})
				for i := range es {
					t.Merge(es[i:i+1], now)
				}
				t.Snapshot()
				runtime.GC()
				runtime.ReadMemStats(&m1)
				per = float64(m1.HeapAlloc-m0.HeapAlloc) / float64(n)
				runtime.KeepAlive(t)
			}
			b.ReportMetric(per, "B/owner")
		})
	}
}

// BenchmarkAnswerAfterChange: one owner's entry changes (an update
// arrives) and a query follows (the handler, no socket): the answerable
// view after a change, as a peer whose containers ask a name every
// second pays it for every name that arrives.
func BenchmarkAnswerAfterChange(b *testing.B) {
	req := new(mdns.Msg)
	req.SetQuestion("c0-1.weave.local.", mdns.TypeA)
	w := &discardWriter{}
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("owners=%d", n), func(b *testing.B) {
			s, owners := scaleServer(b, n)
			s.ServeDNS(w, req)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				o := owners[i%n]
				e := Entry{Owner: o, Name: fmt.Sprintf("c%d-0", i%n), Addr: netip.AddrFrom4([4]byte{10, 32, byte((i % n) >> 8), byte(i % n)}),
					Version: uint64(n + 1 + i), Tombstone: i%2 == 0}
				if err := s.HandleMessage(o, AppendMessages(MsgUpdate, []Entry{e})[0]); err != nil {
					b.Fatal(err)
				}
				s.ServeDNS(w, req)
			}
		})
	}
}
