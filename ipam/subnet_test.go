package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// A subnet spans peers: b, granted the upper half of the range (outside
// the subnet), asks a for space inside 10.32.0.0/26 and gets part of it;
// both then allocate there, never the subnet's network or broadcast
// address, and everything stays consistent.
func TestAllocateInSubnetAcrossPeers(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, b := openTest(t, n, pk(1), ""), openTest(t, n, pk(2), "")
	a.Seed()
	for _, x := range []*Allocator{a, b} {
		x.SetPeers([]key.Public{pk(1), pk(2)})
	}
	b.WantSpace()
	a.Gossip()
	n.run(t)
	if got := fmtPrefixes(b.Prefixes(pk(2))); got != "[10.32.0.128/25]" {
		t.Fatalf("b owns %s, want the upper half", got)
	}
	sub := netip.MustParsePrefix("10.32.0.0/26")
	if _, err := b.AllocateIn("c", sub); !errors.Is(err, ErrWaitingForSpace) {
		t.Fatalf("b.AllocateIn with no space in the subnet = %v, want ErrWaitingForSpace", err)
	}
	n.run(t)
	bAddr, err := b.AllocateIn("c", sub)
	if err != nil || !sub.Contains(bAddr) {
		t.Fatalf("b.AllocateIn after the grant = %v, %v; want an address in %v", bAddr, err, sub)
	}
	if got := fmtPrefixes(b.Prefixes(pk(2))); got != "[10.32.0.32/27 10.32.0.128/25]" {
		t.Fatalf("b owns %s after asking for space in %v", got, sub)
	}
	if again, _ := b.AllocateIn("c", sub); again != bAddr {
		t.Fatalf("AllocateIn not idempotent: %v then %v", bAddr, again)
	}
	aAddr, err := a.AllocateIn("d", sub)
	if err != nil || aAddr != netip.MustParseAddr("10.32.0.2") {
		// .0 is the subnet's network address, .1 is reserved in openTest.
		t.Fatalf("a.AllocateIn = %v, %v; want 10.32.0.2", aAddr, err)
	}
	// b's last address in the subnet is the subnet's broadcast address.
	for i := range 40 {
		addr, err := b.AllocateIn("x"+string(rune('a'+i)), sub)
		if err != nil {
			break
		}
		if addr == netip.MustParseAddr("10.32.0.63") {
			t.Fatalf("handed out the broadcast address of %v", sub)
		}
	}
	if _, err := a.AllocateIn("e", netip.MustParsePrefix("10.33.0.0/24")); !errors.Is(err, ErrNotInRange) {
		t.Fatalf("subnet outside the range: %v", err)
	}
	if err := Check([]PeerView{a.View(), b.View()}); err != nil {
		t.Fatal(err)
	}
}

func TestRequestInWire(t *testing.T) {
	seed := Seed{Peer: pk(7), ID: 42}
	sub := netip.MustParsePrefix("10.32.4.0/24")
	b := AppendRequestInMessage(nil, seed, sub)
	if len(b) != hdrLen+requestInLen {
		t.Fatalf("length %d", len(b))
	}
	m, err := ParseMessage(b)
	if err != nil || m.RequestIn == nil || m.RequestIn.Seed != seed || m.RequestIn.Subnet != sub {
		t.Fatalf("round trip: %+v, %v", m, err)
	}
	bad := append([]byte{}, b...)
	bad[len(bad)-1] = 33
	if _, err := ParseMessage(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("/33 accepted: %v", err)
	}
	bad[len(bad)-1] = 16 // 10.32.4.0/16 has host bits
	if _, err := ParseMessage(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("host bits accepted: %v", err)
	}
	if _, err := ParseMessage(b[:len(b)-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short message accepted: %v", err)
	}
}

// Two hosts launched alone each allocate their host address in their own
// network; that does not make the network used: the larger seed still
// gives way, and its host address (in space it no longer owns) is gone,
// for the daemon to allocate another.
func TestHostAddressKeepsNetworkUntouched(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	small, large := openTest(t, n, pk(0), ""), openTest(t, n, pk(1), "")
	small.Seed()
	large.Seed()
	for _, x := range []*Allocator{small, large} {
		if _, err := x.Allocate(HostID); err != nil {
			t.Fatal(err)
		}
	}
	if err := large.HandleMessage(pk(0), small.RingMessage()); err != nil {
		t.Fatalf("untouched larger seed (only its host address allocated) refused: %v", err)
	}
	if st := large.Status(); st.Seed != small.Status().Seed || st.Counters["ipam_seed_abandoned"] != 1 {
		t.Fatalf("after giving way: %+v", st)
	}
	if got := large.AddressesOf(HostID); len(got) != 0 {
		t.Fatalf("the abandoned network's host address is still held: %v", got)
	}
	if got := small.AddressesOf(HostID); len(got) != 1 {
		t.Fatalf("the kept network lost its host address: %v", got)
	}
	// A container's allocation does make the network used.
	used, fresh := openTest(t, n, pk(2), ""), openTest(t, n, pk(3), "")
	used.Seed()
	fresh.Seed()
	used.Allocate(HostID)
	used.Allocate("c1")
	if err := used.HandleMessage(pk(3), fresh.RingMessage()); err != nil || used.Status().Seed.Peer != pk(2) {
		t.Fatalf("a used network gave way: %v", err)
	}
	if err := fresh.HandleMessage(pk(2), used.RingMessage()); err != nil || fresh.Status().Seed.Peer != pk(2) {
		t.Fatalf("a fresh network did not give way to a used one: %v", err)
	}
}
