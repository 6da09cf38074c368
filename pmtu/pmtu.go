// Package pmtu decides how large the overlay's packets may be: the overlay
// MTU that fits an underlay MTU, and per peer the largest datagram that
// crosses the path, learnt from padded probes by a pure state machine (no
// clock reads, no I/O: the caller passes the time and sends the probes).
//
// # Overhead
//
// An overlay packet of MTU bytes becomes a WireGuard transport message of
// MTU + 32 bytes (16 of header, 16 of tag; wireguard-go's padding to 16
// never takes it past the TUN's MTU, and a peer's smaller MTU is a multiple
// of 16, see Decide), in a UDP datagram (8) in an IP packet (20 for IPv4, 40 for IPv6).
// When the peer is relayed, a 36-byte relay header comes first (its hop
// counter and MAC prove each hop's sender). We always reserve room for the
// relay header: the overhead is 96 bytes over IPv4 and 116 over IPv6, not
// 60 and 80. Path choice moves a peer between direct and
// relayed within seconds whenever probes say so; if the MTU depended on it,
// every failover would shrink or grow the MTU under established TCP
// connections, and the packets in flight at the larger size would be lost
// until ICMP caught up. The cost is 36 bytes per full-size packet (2.5 %) on
// direct paths: 1404 on a 1500-byte underlay, 16 below wg-quick's 1420.
package pmtu

import "slices"

// Sizes of the headers between the overlay and the underlay.
const (
	IPv4Header      = 20
	IPv6Header      = 40
	UDPHeader       = 8
	WireGuardHeader = 32 // transport message header (16) + Poly1305 tag (16)
	// WireGuardPadding is the multiple wireguard-go pads a packet's
	// plaintext to, never past the TUN's MTU (device/send.go
	// calculatePaddingSize): a packet of the TUN's MTU gets none, a
	// smaller one up to 15 bytes (see Decide).
	WireGuardPadding = 16
	RelayHeader      = 36 // tunnel.RelayHeaderLen; a test there keeps them equal

	// MinMTU is the smallest overlay MTU we set: IPv4's minimum datagram
	// every host must accept (RFC 791).
	MinMTU = 576
	// DefaultMTU is the overlay MTU of a 1500-byte IPv4 underlay.
	DefaultMTU = 1500 - IPv4Header - UDPHeader - WireGuardHeader - RelayHeader
)

// Overhead is what an underlay of the given family costs per packet,
// relay header included (see the package comment).
func Overhead(ipv6 bool) int {
	ip := IPv4Header
	if ipv6 {
		ip = IPv6Header
	}
	return ip + UDPHeader + WireGuardHeader + RelayHeader
}

// FromUnderlay is the overlay MTU that fits an underlay (link or route) MTU,
// never below MinMTU.
func FromUnderlay(underlay int, ipv6 bool) int {
	return max(underlay-Overhead(ipv6), MinMTU)
}

// FromPayload is the overlay MTU that fits when UDP payloads of up to
// payload bytes cross the path (what a probe of that size proves), never
// below MinMTU.
func FromPayload(payload int) int {
	return max(payload-WireGuardHeader-RelayHeader, MinMTU)
}

// PayloadFor is the largest UDP payload of an underlay MTU.
func PayloadFor(underlay int, ipv6 bool) int {
	ip := IPv4Header
	if ipv6 {
		ip = IPv6Header
	}
	return underlay - ip - UDPHeader
}

// Source says where a peer's MTU comes from, as status shows it.
type Source string

const (
	SourceFlag  Source = "flag"  // --mtu: fixed by the operator
	SourceRoute Source = "route" // the underlay route towards the peer (link MTU, or a path MTU the kernel learnt from ICMP)
	SourceProbe Source = "probe" // the largest padded probe the peer answered
	SourceLink  Source = "link"  // the tunnel's own MTU, from the underlay interface, nothing smaller known
)

// Decide is a peer's overlay MTU: the tunnel MTU, lowered to what the route
// towards the peer allows (routeMTU, the underlay MTU; 0 unknown) and to
// what probes proved (probed, a UDP payload size; 0 unknown). An MTU below
// the tunnel's is a multiple of WireGuardPadding: wireguard-go pads each
// packet to that multiple up to the TUN's MTU, not to the peer's route, so
// a 1284-byte packet (a 1380 hop's figure) becomes a 1296-byte plaintext,
// and relayed (where the relay header uses the room kept for it) a
// 1392-byte datagram: 12 bytes more than the hop the figure came from.
func Decide(tunnel, routeMTU int, ipv6 bool, probed int) (int, Source) {
	m, src := tunnel, SourceLink
	if routeMTU > 0 {
		if r := FromUnderlay(routeMTU, ipv6); r < m {
			m, src = r, SourceRoute
		}
	}
	if probed > 0 {
		if p := FromPayload(probed); p < m {
			m, src = p, SourceProbe
		}
	}
	if m < tunnel {
		m = max(m&^(WireGuardPadding-1), MinMTU)
	}
	return m, src
}

// underlayMTUs are the underlay MTUs worth trying, largest first: jumbo
// frames, Ethernet, PPPoE, Google Cloud, common VPN and interconnect
// tunnels, down to IPv6's minimum link MTU.
var underlayMTUs = []int{9000, 1500, 1492, 1480, 1460, 1440, 1420, 1400, 1380, 1360, 1340, 1320, 1300, 1280}

// Ladder returns the UDP payload sizes to probe, largest first: max (the
// largest the local link lets out) and every common underlay's payload
// below it. It has at most MaxLadder sizes.
func Ladder(max int, ipv6 bool) []int {
	out := []int{max}
	for _, m := range underlayMTUs {
		if p := PayloadFor(m, ipv6); p < max && p >= PayloadFor(1280, ipv6) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	slices.Reverse(out)
	out = slices.Compact(out)
	if len(out) > MaxLadder {
		out = out[:MaxLadder]
	}
	return out
}

// MaxLadder bounds the ladder, so per-peer state is a fixed array.
const MaxLadder = 16
