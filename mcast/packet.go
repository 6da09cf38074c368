package mcast

import (
	"encoding/binary"
	"net"
	"net/netip"
)

const (
	ipv4MinHdr = 20
	protoIGMP  = 2
)

// ipv4 is what replication reads of an IPv4 header.
type ipv4 struct {
	src, dst netip.Addr
	ttl      uint8
	proto    uint8
	hdrLen   int
	totalLen int
}

// parseIPv4 reads pkt's IPv4 header; ok is false for anything that is not
// a whole IPv4 packet.
func parseIPv4(pkt []byte) (ipv4, bool) {
	if len(pkt) < ipv4MinHdr || pkt[0]>>4 != 4 {
		return ipv4{}, false
	}
	h := ipv4{
		hdrLen:   int(pkt[0]&0x0f) * 4,
		totalLen: int(binary.BigEndian.Uint16(pkt[2:4])),
		ttl:      pkt[8],
		proto:    pkt[9],
		src:      netip.AddrFrom4([4]byte(pkt[12:16])),
		dst:      netip.AddrFrom4([4]byte(pkt[16:20])),
	}
	if h.hdrLen < ipv4MinHdr || h.totalLen < h.hdrLen || h.totalLen > len(pkt) {
		return ipv4{}, false
	}
	return h, true
}

// decrementTTL lowers the TTL of the IPv4 packet by one and updates the
// header checksum incrementally (RFC 1624: the TTL is the high byte of a
// 16-bit word, so the sum loses 0x0100).
func decrementTTL(pkt []byte) {
	pkt[8]--
	sum := uint32(binary.BigEndian.Uint16(pkt[10:12])) + 0x0100
	sum = (sum & 0xffff) + (sum >> 16)
	binary.BigEndian.PutUint16(pkt[10:12], uint16(sum))
}

// ipv4Checksum is the header checksum of hdr (with its checksum field as
// it is); zero for a correct header.
func ipv4Checksum(hdr []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(hdr); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return ^uint16(sum)
}

// broadcastMAC is where broadcasts are delivered on the bridge.
var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// groupMAC is the Ethernet address of IPv4 group g (RFC 1112 6.4: 01:00:5e
// and the group's low 23 bits).
func groupMAC(g netip.Addr) net.HardwareAddr {
	a := g.As4()
	return net.HardwareAddr{0x01, 0x00, 0x5e, a[1] & 0x7f, a[2], a[3]}
}

// broadcastOf is the broadcast address of p.
func broadcastOf(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

const protoUDP = 17

// completeUDPChecksum recomputes the UDP checksum of an unfragmented IPv4
// UDP packet. A packet read off the bridge may carry only the partial sum
// a sender's checksum offload left for the "hardware" (a veth never fills
// it in; the kernel accepts it locally because it knows), which every
// other host would drop. A zero checksum (none, RFC 768) is left alone.
func completeUDPChecksum(pkt []byte, h ipv4) {
	if h.proto != protoUDP || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
		return // not UDP, or a fragment: its checksum was completed before fragmenting
	}
	udp := pkt[h.hdrLen:h.totalLen]
	if len(udp) < 8 || binary.BigEndian.Uint16(udp[6:8]) == 0 {
		return
	}
	udp[6], udp[7] = 0, 0
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(pkt[12:20]) // source and destination addresses
	sum += protoUDP + uint32(len(udp))
	add(udp)
	for sum > 0xffff {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:8], c)
}
