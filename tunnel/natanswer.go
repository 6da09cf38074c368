package tunnel

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// # Which NATs take unsolicited datagrams in
//
// Opening two NATed peers (reach, opening turns) works only if the side
// whose NAT confirms unsolicited datagrams in conntrack sends first: a stock
// Linux masquerade router, with no filter rules, takes a datagram that
// reaches its mapped port before its host sent there as addressed to
// itself, confirms that entry on the way to its input, and answers with
// ICMP port unreachable; the entry holds the tuple the host's own flow
// towards that peer needs, so the flow leaves from a random other port, and
// Linux then gives the host's later new flows that random port too (the
// source's newest mapping), which only far routers see. A router that
// filters its WAN input drops such a datagram before conntrack confirms it,
// and answers nothing.
//
// So the opener of a turn learns, from the ICMP port unreachable its
// direct probe to the holder's mapping brings back, that the holder's NAT
// takes unsolicited datagrams in, and tells the holder (probe flag
// probeFlagNATAnswers). A host told so keeps quiet in that peer's turns
// (reach.Machine.NATTakesIn): sending after the opener's word would not
// open the pair (the opener's datagrams already took the tuple) and would
// only give its later flows a random port; its own turn, with its mapping
// intact, is the one that can open the pair. The word is per pair: a
// peer behind our own router reaches our mapping from the router's LAN
// side, which answers ICMP whatever its WAN side does, and finds us on
// the LAN (ICMP about our own NAT's addresses is ignored).
//
// The Tunnel reads ICMP through a raw socket in its namespace; a datagram
// of ours is recognised by its source port, and counted for the peer whose
// endpoint it was sent to. Without the socket (no CAP_NET_RAW) nothing is
// learned and the turns work as before. The socket takes only destination
// unreachable messages (the kernel's ICMP_FILTER, checked before a raw
// socket is handed a copy): a raw ICMP socket is given a copy of every
// ICMP message the namespace receives, and without the filter every echo
// reply to the host (a ping, a monitoring probe) woke the daemon: a flood
// ping between two hosts' overlay addresses took twice the CPU, and its
// round trip 0.029 ms where raw kernel VXLAN took 0.016 (November 30).

// icmpUnreachable parses an ICMPv4 message (no IP header): for a port
// unreachable about a UDP datagram from port sport, it returns the
// datagram's destination.
func icmpUnreachable(msg []byte, sport uint16) (netip.AddrPort, bool) {
	const icmpHeader = 8
	if len(msg) < icmpHeader+20+8 || msg[0] != 3 || msg[1] != 3 {
		return netip.AddrPort{}, false
	}
	inner := msg[icmpHeader:]
	ihl := int(inner[0]&0x0f) * 4
	if inner[0]>>4 != 4 || ihl < 20 || len(inner) < ihl+8 || inner[9] != 17 {
		return netip.AddrPort{}, false
	}
	udp := inner[ihl:]
	if binary.BigEndian.Uint16(udp[0:2]) != sport {
		return netip.AddrPort{}, false
	}
	dst := netip.AddrFrom4([4]byte(inner[16:20]))
	return netip.AddrPortFrom(dst, binary.BigEndian.Uint16(udp[2:4])), true
}

// noteUnreachable records that our datagram to dst brought back ICMP port
// unreachable: if dst is a peer's endpoint, its NAT takes unsolicited
// datagrams in.
func (b *Bind) noteUnreachable(dst netip.AddrPort) {
	t := b.table.Load()
	if t == nil {
		return
	}
	if own := b.ownMapped.Load(); own != nil && slices.Contains(*own, dst.Addr()) {
		// A peer behind our own NAT, reached at its mapping: the router
		// answered our datagram from its LAN side (no hairpin rule), which
		// says nothing of how it treats datagrams from outside (probeFlags
		// checks again: our NAT's address may be learned later).
		return
	}
	i, ok := t.byAddr[dst]
	if !ok {
		return
	}
	t.peers[i].path.natAnswers.Store(b.nowNano())
	b.ctr.natAnswers.Add(1)
}

// icmpLoop reads ICMP from c until it is closed.
func (t *Tunnel) icmpLoop(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		if dst, ok := icmpUnreachable(buf[:n], t.cfg.Port); ok {
			t.bind.noteUnreachable(dst)
		}
	}
}

// openICMP opens the raw ICMP socket of the Tunnel's namespace (the calling
// thread's); nil when it cannot (no CAP_NET_RAW): nothing is learned.
func (t *Tunnel) openICMP() net.PacketConn {
	c, err := listenICMPUnreachable()
	if err != nil {
		t.log.Warn("not reading ICMP: opening NATed peers cannot tell which NATs take unsolicited datagrams in", "err", err)
		return nil
	}
	return c
}

// icmpDestUnreachable is ICMP's destination unreachable type.
const icmpDestUnreachable = 3

// listenICMPUnreachable opens a raw ICMP socket in the calling thread's
// namespace that is given only destination unreachable messages.
func listenICMPUnreachable() (net.PacketConn, error) {
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, err
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// struct icmp_filter: a bit set per type is a type dropped.
		serr = unix.SetsockoptInt(int(fd), unix.SOL_RAW, unix.ICMP_FILTER, int(^uint32(1<<icmpDestUnreachable)))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ICMP filter: %w", err)
	}
	return c, nil
}

// natAnswersRecent is how long a peer's NAT answering with ICMP port
// unreachable is taken as its kind (NATs do not change kind often; a
// restart of the peer's router may).
const natAnswersRecent = 10 * time.Minute

// SetMappedAddrs tells the Tunnel the addresses STUN through other peers
// showed this host at (its NAT's WAN addresses): ICMP about our datagrams
// to those is our own router's, not a far NAT's.
func (t *Tunnel) SetMappedAddrs(ips []netip.Addr) {
	ips = slices.Clone(ips)
	t.bind.ownMapped.Store(&ips)
}
