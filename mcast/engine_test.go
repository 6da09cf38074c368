package mcast

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

type testPeer struct {
	key       key.Public
	host, src netip.Addr
}

var (
	selfKey = key.Public{1}
	peerB   = testPeer{key: key.Public{2}, host: netip.MustParseAddr("10.32.0.2"), src: netip.MustParseAddr("10.34.0.9")}
	peerC   = testPeer{key: key.Public{3}, host: netip.MustParseAddr("10.32.0.3"), src: netip.MustParseAddr("10.36.0.9")}
	local   = netip.MustParseAddr("10.33.0.5") // a container here
	overlay = netip.MustParsePrefix("10.32.0.0/12")
)

// membership encodes one subnet's groups.
func membership(seq uint64, subnet netip.Prefix, groups ...string) []byte {
	m := Membership{Seq: seq, Subnets: []SubnetGroups{{Subnet: subnet}}}
	for _, g := range groups {
		m.Subnets[0].Groups = append(m.Subnets[0].Groups, netip.MustParseAddr(g))
	}
	b, err := AppendMembership(nil, m)
	if err != nil {
		panic(err)
	}
	return b
}

// testEngine is host A (10.32.0.0/15, one subnet: the whole overlay) with
// a member of 239.1.1.1; B (containers, a member of 239.1.1.1) and C (a
// member of 239.2.2.2 on another subnet, 10.36.0.0/15) are reachable.
func testEngine(opts ...func(*Config)) (*Engine, testPeer) {
	cfg := Config{Self: selfKey, Subnets: []netip.Prefix{overlay}}
	for _, o := range opts {
		o(&cfg)
	}
	e := New(cfg)
	e.SetSelf([]netip.Prefix{netip.MustParsePrefix("10.32.0.1/32"), netip.MustParsePrefix("10.32.0.0/15")})
	e.SetPeers([]Peer{
		{Key: peerB.key, HostIP: peerB.host, Sources: []netip.Prefix{netip.PrefixFrom(peerB.host, 32), netip.MustParsePrefix("10.34.0.0/15")}},
		{Key: peerC.key, HostIP: peerC.host, Sources: []netip.Prefix{netip.PrefixFrom(peerC.host, 32), netip.MustParsePrefix("10.36.0.0/15")}},
	})
	e.SetLocalGroups([]Member{{overlay, netip.MustParseAddr("239.1.1.1")}})
	e.HandleMessage(peerB.key, membership(5, overlay, "239.1.1.1"))
	e.HandleMessage(peerC.key, membership(5, overlay, "239.2.2.2"))
	return e, peerB
}

// udpPacket is an IPv4 UDP datagram with a correct header checksum and a
// UDP checksum field holding junk (as a sender's offload leaves it).
func udpPacket(src, dst netip.Addr, ttl uint8) []byte {
	p := make([]byte, 20+8+5)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = ttl, protoUDP
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], ipv4Checksum(p[:20]))
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], 5000)
	binary.BigEndian.PutUint16(p[24:], 8+5)
	binary.BigEndian.PutUint16(p[26:], 0x1234)
	copy(p[28:], "hello")
	return p
}

// udpChecksumOK verifies a UDP checksum over the pseudo-header.
func udpChecksumOK(p []byte) bool {
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += protoUDP + uint32(len(p)-20)
	u := append(slices.Clone(p[20:]), 0)
	for i := 0; i+1 < len(u); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(u[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func TestOutbound(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name      string
		linkLocal bool
		pkt       []byte
		want      []netip.Addr
		counter   string
	}{
		{name: "group with a member host", pkt: udpPacket(local, a("239.1.1.1"), 8), want: []netip.Addr{peerB.host}, counter: "mcast_tx_datagrams"},
		{name: "group of another host", pkt: udpPacket(local, a("239.2.2.2"), 8), want: []netip.Addr{peerC.host}},
		{name: "group without members elsewhere", pkt: udpPacket(local, a("239.3.3.3"), 8), counter: "mcast_tx_no_members"},
		{name: "TTL 1 stays on its link", pkt: udpPacket(local, a("239.1.1.1"), 1), counter: "mcast_tx_dropped_ttl"},
		{name: "link-local stays", pkt: udpPacket(local, a("224.0.0.251"), 255), counter: "mcast_tx_link_local"},
		{name: "link-local with the flag goes to hosts with containers", linkLocal: true, pkt: udpPacket(local, a("224.0.0.251"), 255), want: []netip.Addr{peerB.host, peerC.host}},
		{name: "subnet broadcast to hosts with containers", pkt: udpPacket(local, a("10.47.255.255"), 64), want: []netip.Addr{peerB.host, peerC.host}},
		{name: "limited broadcast", pkt: udpPacket(local, a("255.255.255.255"), 64), want: []netip.Addr{peerB.host, peerC.host}},
		{name: "from the overlay: never again", pkt: udpPacket(peerB.src, a("239.1.1.1"), 8), counter: "mcast_tx_dropped_not_local"},
		{name: "unicast", pkt: udpPacket(local, peerB.src, 8), counter: "mcast_tx_dropped_not_multicast"},
		{name: "truncated", pkt: udpPacket(local, a("239.1.1.1"), 8)[:19], counter: "mcast_tx_dropped_malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := testEngine(func(c *Config) { c.LinkLocal = tc.linkLocal })
			ttl := tc.pkt[8]
			got := e.Outbound(tc.pkt)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("targets %v, want %v", got, tc.want)
			}
			if tc.counter != "" && e.Counters()[tc.counter] != 1 {
				t.Errorf("%s = %d, want 1", tc.counter, e.Counters()[tc.counter])
			}
			if len(got) == 0 {
				return
			}
			if tc.pkt[8] != ttl-1 || ipv4Checksum(tc.pkt[:20]) != 0 {
				t.Errorf("TTL %d (was %d), header checksum %#x", tc.pkt[8], ttl, ipv4Checksum(tc.pkt[:20]))
			}
			if !udpChecksumOK(tc.pkt) {
				t.Errorf("UDP checksum not completed: %x", tc.pkt)
			}
		})
	}
}

func TestInbound(t *testing.T) {
	a := netip.MustParseAddr
	badSum := udpPacket(peerB.src, a("239.1.1.1"), 7)
	badSum[10]++
	for _, tc := range []struct {
		name    string
		from    netip.Addr
		pkt     []byte
		mac     net.HardwareAddr
		counter string
	}{
		{name: "group with members here", from: peerB.host, pkt: udpPacket(peerB.src, a("239.1.1.1"), 7), mac: net.HardwareAddr{1, 0, 0x5e, 1, 1, 1}},
		{name: "subnet broadcast", from: peerB.host, pkt: udpPacket(peerB.src, a("10.47.255.255"), 63), mac: broadcastMAC},
		{name: "limited broadcast", from: peerB.host, pkt: udpPacket(peerB.src, a("255.255.255.255"), 63), mac: broadcastMAC},
		{name: "not a reachable peer", from: a("10.32.0.9"), pkt: udpPacket(peerB.src, a("239.1.1.1"), 7), counter: "mcast_rx_dropped_unknown_peer"},
		{name: "source of another peer", from: peerB.host, pkt: udpPacket(peerC.src, a("239.1.1.1"), 7), counter: "mcast_rx_dropped_source"},
		{name: "source of this host", from: peerB.host, pkt: udpPacket(local, a("239.1.1.1"), 7), counter: "mcast_rx_dropped_source"},
		{name: "group without members here", from: peerB.host, pkt: udpPacket(peerB.src, a("239.2.2.2"), 7), counter: "mcast_rx_dropped_no_members"},
		{name: "link-local", from: peerB.host, pkt: udpPacket(peerB.src, a("224.0.0.251"), 7), counter: "mcast_rx_dropped_link_local"},
		{name: "unicast never reaches the bridge", from: peerB.host, pkt: udpPacket(peerB.src, local, 7), counter: "mcast_rx_dropped_not_multicast"},
		{name: "bad header checksum", from: peerB.host, pkt: badSum, counter: "mcast_rx_dropped_malformed"},
		{name: "TTL 0", from: peerB.host, pkt: udpPacket(peerB.src, a("239.1.1.1"), 0), counter: "mcast_rx_dropped_malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := testEngine()
			pkt, mac, ok := e.Inbound(tc.from, AppendData(nil, tc.pkt))
			if ok != (tc.mac != nil) || mac.String() != tc.mac.String() {
				t.Fatalf("ok %v mac %v, want %v", ok, mac, tc.mac)
			}
			if ok && string(pkt) != string(tc.pkt) {
				t.Errorf("packet %x, want %x", pkt, tc.pkt)
			}
			if tc.counter != "" && e.Counters()[tc.counter] != 1 {
				t.Errorf("%s = %d, want 1", tc.counter, e.Counters()[tc.counter])
			}
		})
	}
}

func TestMembershipState(t *testing.T) {
	e, _ := testEngine()
	g := netip.MustParseAddr("239.1.1.1")
	pkt := func() []byte { return udpPacket(local, g, 8) }
	// A stale (replayed) message changes nothing.
	e.HandleMessage(peerB.key, membership(4, overlay))
	if got := e.Outbound(pkt()); !slices.Equal(got, []netip.Addr{peerB.host}) {
		t.Fatalf("after a stale message: %v", got)
	}
	if e.Counters()["mcast_membership_stale"] != 1 {
		t.Error("stale message not counted")
	}
	// B leaves: nothing goes to it.
	e.HandleMessage(peerB.key, membership(6, overlay))
	if got := e.Outbound(pkt()); got != nil {
		t.Fatalf("after B left: %v", got)
	}
	// C joins, becomes unreachable (not used), comes back (used again,
	// and told this host's groups).
	e.HandleMessage(peerC.key, membership(6, overlay, g.String()))
	if got := e.Outbound(pkt()); !slices.Equal(got, []netip.Addr{peerC.host}) {
		t.Fatalf("after C joined: %v", got)
	}
	e.SetPeers([]Peer{{Key: peerB.key, HostIP: peerB.host}})
	if got := e.Outbound(pkt()); got != nil {
		t.Fatalf("C unreachable: %v", got)
	}
	added := e.SetPeers([]Peer{{Key: peerB.key, HostIP: peerB.host}, {Key: peerC.key, HostIP: peerC.host}})
	if !slices.Equal(added, []key.Public{peerC.key}) {
		t.Errorf("added %v", added)
	}
	if got := e.Outbound(pkt()); !slices.Equal(got, []netip.Addr{peerC.host}) {
		t.Fatalf("C back: %v", got)
	}
	// Local groups: a change bumps seq, the same set does not.
	m1, _ := ParseMembership(e.Message())
	other := netip.MustParsePrefix("10.40.1.0/24")
	if e.SetLocalGroups([]Member{{overlay, g}, {overlay, netip.MustParseAddr("224.0.0.251")}, {other, g}}) {
		t.Error("the same groups (and a link-local one, never announced, and one on a subnet not this host's) counted as a change")
	}
	if !e.SetLocalGroups([]Member{{overlay, netip.MustParseAddr("239.9.9.9")}, {overlay, g}, {other, g}}) {
		t.Error("a new group was not a change")
	}
	m2, _ := ParseMembership(e.Message())
	if m2.Seq <= m1.Seq || len(m2.Subnets) != 1 || len(m2.Subnets[0].Groups) != 2 {
		t.Errorf("membership %+v after %+v", m2, m1)
	}
	// A new subnet of this host is announced, with its member.
	if !e.SetSubnets([]netip.Prefix{overlay, other}) {
		t.Error("a new subnet was not a change")
	}
	m3, _ := ParseMembership(e.Message())
	if m3.Seq <= m2.Seq || len(m3.Subnets) != 2 || m3.Subnets[1].Subnet != other || !slices.Equal(m3.Subnets[1].Groups, []netip.Addr{g}) {
		t.Errorf("membership %+v after %+v", m3, m2)
	}
	if e.SetSubnets([]netip.Prefix{other, overlay, other}) {
		t.Error("the same subnets counted as a change")
	}
}

// isolatedEngine is host A with containers on the default subnet
// 10.32.0.0/16 and the isolated 10.40.1.0/24, a member of 239.1.1.1 on
// each; B has containers on 10.40.1.0/24, a member of 239.1.1.1 there; C
// has containers on 10.40.2.0/24 and the default subnet, a member of
// 239.1.1.1 on 10.40.2.0/24 only.
func isolatedEngine() *Engine {
	p, g := netip.MustParsePrefix, netip.MustParseAddr("239.1.1.1")
	def, sa, sb := p("10.32.0.0/16"), p("10.40.1.0/24"), p("10.40.2.0/24")
	e := New(Config{Self: selfKey, Subnets: []netip.Prefix{def, sa}})
	e.SetSelf([]netip.Prefix{p("10.32.0.0/18"), p("10.40.1.0/25")})
	e.SetPeers([]Peer{
		{Key: peerB.key, HostIP: peerB.host, Sources: []netip.Prefix{p("10.32.64.0/18"), p("10.40.1.128/25")}},
		{Key: peerC.key, HostIP: peerC.host, Sources: []netip.Prefix{p("10.32.128.0/18"), p("10.40.2.0/24")}},
	})
	e.SetLocalGroups([]Member{{def, g}, {sa, g}})
	e.HandleMessage(peerB.key, membership(1, sa, "239.1.1.1"))
	mc, _ := AppendMembership(nil, Membership{Seq: 1, Subnets: []SubnetGroups{{Subnet: def}, {Subnet: sb, Groups: []netip.Addr{g}}}})
	e.HandleMessage(peerC.key, mc)
	return e
}

// Multicast and broadcast go to the hosts with members (or containers) on
// the sender's subnet only, the most specific one when an isolated subnet
// lies inside another.
func TestOutboundBySubnet(t *testing.T) {
	a := netip.MustParseAddr
	e := isolatedEngine()
	for _, tc := range []struct {
		src, dst string
		want     []netip.Addr
	}{
		{"10.40.1.5", "239.1.1.1", []netip.Addr{peerB.host}},
		{"10.32.0.5", "239.1.1.1", nil}, // C's member is on 10.40.2.0/24
		{"10.40.1.5", "10.40.1.255", []netip.Addr{peerB.host}},
		{"10.40.1.5", "255.255.255.255", []netip.Addr{peerB.host}},
		{"10.32.0.5", "10.32.255.255", []netip.Addr{peerC.host}},
		{"10.32.0.5", "255.255.255.255", []netip.Addr{peerC.host}},
		{"10.32.0.5", "10.40.1.255", nil},   // another subnet's broadcast address
		{"10.40.1.5", "10.47.255.255", nil}, // the range's: not a subnet here
		{"10.32.63.5", "10.40.2.255", nil},  // a subnet of others only
	} {
		if got := e.Outbound(udpPacket(a(tc.src), a(tc.dst), 64)); !slices.Equal(got, tc.want) {
			t.Errorf("%s → %s: %v, want %v", tc.src, tc.dst, got, tc.want)
		}
	}
	// A source on none of this host's subnets (an address of its range
	// handed to no subnet it has): counted, not replicated.
	e.SetSelf([]netip.Prefix{p4("10.41.0.0/16")})
	if got := e.Outbound(udpPacket(a("10.41.0.5"), a("239.1.1.1"), 64)); got != nil || e.Counters()["mcast_tx_dropped_no_subnet"] != 1 {
		t.Errorf("source on no subnet: %v, counter %d", got, e.Counters()["mcast_tx_dropped_no_subnet"])
	}
}

func p4(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// A datagram from another host is delivered only when a container here is
// on the sender's subnet (a member of the group, for multicast).
func TestInboundBySubnet(t *testing.T) {
	a := netip.MustParseAddr
	e := isolatedEngine()
	for _, tc := range []struct {
		from     netip.Addr
		src, dst string
		ok       bool
		counter  string
	}{
		{peerB.host, "10.40.1.200", "239.1.1.1", true, ""},
		{peerB.host, "10.40.1.200", "10.40.1.255", true, ""},
		{peerB.host, "10.40.1.200", "255.255.255.255", true, ""},
		{peerB.host, "10.32.64.9", "239.1.1.1", true, ""},
		{peerB.host, "10.32.64.9", "10.40.1.255", false, "mcast_rx_dropped_not_multicast"},
		{peerC.host, "10.40.2.9", "239.1.1.1", false, "mcast_rx_dropped_subnet"},
		{peerC.host, "10.40.2.9", "255.255.255.255", false, "mcast_rx_dropped_subnet"},
		{peerC.host, "10.32.128.9", "239.2.2.2", false, "mcast_rx_dropped_no_members"},
	} {
		before := e.Counters()[tc.counter]
		_, _, ok := e.Inbound(tc.from, AppendData(nil, udpPacket(a(tc.src), a(tc.dst), 8)))
		if ok != tc.ok {
			t.Errorf("%s → %s from %s: delivered %v, want %v", tc.src, tc.dst, tc.from, ok, tc.ok)
		}
		if tc.counter != "" && e.Counters()[tc.counter] != before+1 {
			t.Errorf("%s → %s: %s not counted", tc.src, tc.dst, tc.counter)
		}
	}
}
