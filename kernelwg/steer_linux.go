package kernelwg

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Port sharing. The kernel's WireGuard socket owns --port; STUN, relay
// frames and path probes must still reach the userspace socket, which
// listens on SharedPort, and every peer must keep reaching this host at the
// one address gossip and ICE know. One stateless table does it
// (docs/architecture.md, "Kernel WireGuard: the port question, decided"):
//
//	table inet weavewg_split_<port> {
//		set kernel4 { type ipv4_addr . inet_service; }
//		set kernel6 { type ipv6_addr . inet_service; }
//		chain in {
//			type filter hook input priority 200; policy accept;
//			udp dport <port> ip saddr . udp sport != @kernel4 udp checksum 0 udp dport set <shared> (no checksum update)
//			udp dport <port> ip saddr . udp sport != @kernel4 udp dport set <shared>
//			(the same two for ip6 saddr and @kernel6)
//			udp dport <port> @th,72,24 != 0 udp checksum 0 udp dport set <shared> (no checksum update)
//			udp dport <port> @th,72,24 != 0 udp dport set <shared>
//			udp dport <port> @th,64,8 != 1-4 udp checksum 0 udp dport set <shared> (no checksum update)
//			udp dport <port> @th,64,8 != 1-4 udp dport set <shared>
//		}
//		chain out {
//			type filter hook output priority raw; policy accept;
//			udp sport <shared> udp checksum 0 udp sport set <port> (no checksum update)
//			udp sport <shared> udp sport set <port>
//		}
//	}
//
// The kernel socket gets only WireGuard messages from the endpoints of the
// peers the kernel device carries (the sets, which SetPeers keeps equal to
// the device's peers). Everything else goes to the userspace socket:
// datagrams from any other address, which wireguard-go, holding every
// peer, can read (a peer we relay that sends to us directly, as when its
// side went direct before ours or behind an asymmetric path; a peer that
// just left the kernel device; the kernel would drop them, not knowing the
// peer), and datagrams whose first four payload bytes are not a WireGuard
// message type (byte 0 in 1–4, bytes 1–3 zero: the test the userspace Bind
// makes first, tunnel/classify.go). So the kernel never roams a peer: a
// peer's new address reaches wireguard-go, whose probes make it the path
// owner's, and the next SetPeers gives it to the device. What the
// userspace socket sends leaves from --port. A rewritten datagram no longer matches
// the port, so the first rule that rewrites it is the last.
//
// Where the ports change. The host's firewall and conntrack must see one
// flow, the peer and --port, both ways, whichever socket sends or
// receives, as they do on a userspace host: a firewall that admits the
// port (`ufw allow 6783`) or only replies to what the host sent (ufw's
// `ct state established` with no allow rule) then admits both sockets'
// traffic. So an outgoing datagram's source port is rewritten at raw
// priority, before conntrack (-200) makes or finds its entry, and an
// incoming one's destination port at the input hook, priority 200: after
// conntrack looked it up at prerouting and after the filter chains (ufw's
// and Docker's iptables at 0, firewalld's at 10, security at 50, input
// SNAT at 100) judged it by --port; the socket is looked up after the
// hook. (Rewritten at raw prerouting and untracked, as first built, the
// userspace socket's datagrams reached input as untracked datagrams to
// the shared port, which ufw dropped with or without `ufw allow 6783`:
// TestSteeringBehindHostFirewall.) At input the datagram is whole: the
// kernel reassembles fragments before the hook.
//
// Checksums. A payload write with the inet checksum type adjusts the
// 16-bit field at the offset given, whatever it holds: for a datagram
// that carries a UDP checksum the kernel so keeps it right, but over IPv4
// a zero field means "no checksum" (the path MTU probes, which leave
// through a raw socket, tunnel/mtu_linux.go), and adjusting it makes it a
// wrong one that the receiver drops (UdpInCsumErrors; tcpdump -vv: "bad
// udp cksum 0x0002"). Datagrams without a checksum are rewritten by rules
// of their own that leave it alone. (nftables' pseudo-header flag would
// not do: it adjusts the checksum field again, for the addresses.)

// steerInputPriority is where incoming datagrams move to the shared port:
// after every filter chain a host's firewall puts on the input hook (see
// "Where the ports change").
var steerInputPriority = nftables.ChainPriorityRef(200)

func steeringTable(port uint16) *nftables.Table {
	return &nftables.Table{Name: "weavewg_split_" + strconv.Itoa(int(port)), Family: nftables.TableFamilyINet}
}

// kernelSets are the sets of the kernel device's peers' endpoints (address
// and UDP port), IPv4 and IPv6, in t.
func kernelSets(t *nftables.Table) (v4, v6 *nftables.Set) {
	return &nftables.Set{Table: t, Name: "kernel4", Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)},
		&nftables.Set{Table: t, Name: "kernel6", Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)}
}

// notFromKernelPeer matches datagrams of family proto whose source address
// and port are not in set: the address (at offset, length bytes) into the
// concatenation's first registers, the port into the next (each part of a
// concatenation fills whole 32-bit registers).
func notFromKernelPeer(proto byte, offset, length uint32, set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 8, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: length},
		&expr.Payload{DestRegister: 8 + length/4, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Lookup{SourceRegister: 8, SetName: set.Name, SetID: set.ID, Invert: true},
	}
}

// endpointKey is an endpoint as a set element: the address, the port, two
// bytes of padding.
func endpointKey(ep netip.AddrPort) []byte {
	k := append(ep.Addr().Unmap().AsSlice(), 0, 0, 0, 0)
	binary.BigEndian.PutUint16(k[len(k)-4:], ep.Port())
	return k
}

// udpPort matches UDP datagrams with the port at offset (0 source, 2
// destination).
func udpPort(offset uint32, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// noChecksum matches UDP datagrams without a checksum (the field zero).
var noChecksum = []expr.Any{
	&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 6, Len: 2},
	&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0}},
}

// setPort rewrites the datagram's port at offset, adjusting the UDP
// checksum if csum (see "Checksums" above).
func setPort(offset uint32, port uint16, csum bool) []expr.Any {
	w := &expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseTransportHeader,
		Offset: offset, Len: 2}
	if csum {
		w.CsumType, w.CsumOffset = expr.CsumTypeInet, 6
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		w,
	}
}

func installSteering(ns netns.NsHandle, cfg Config) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("kernel wireguard: port sharing: %w", err)
	}
	t := steeringTable(cfg.Port)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	policy := nftables.ChainPolicyAccept
	in := c.AddChain(&nftables.Chain{Name: "in", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: steerInputPriority, Policy: &policy})
	out := c.AddChain(&nftables.Chain{Name: "out", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw, Policy: &policy})
	set4, set6 := kernelSets(t)
	for _, set := range []*nftables.Set{set4, set6} {
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("kernel wireguard: port sharing: %w", err)
		}
	}
	rule := func(ch *nftables.Chain, parts ...[]expr.Any) {
		var exprs []expr.Any
		for _, p := range parts {
			exprs = append(exprs, p...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}
	notForKernel := [][]expr.Any{
		notFromKernelPeer(unix.NFPROTO_IPV4, 12, 4, set4),
		notFromKernelPeer(unix.NFPROTO_IPV6, 8, 16, set6),
		// bytes 1–3 of the payload not zero
		{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 9, Len: 3},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0}},
		},
		// byte 0 not a message type (1–4)
		{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 1},
			&expr.Range{Op: expr.CmpOpNeq, Register: 1, FromData: []byte{1}, ToData: []byte{4}},
		},
	}
	for _, test := range notForKernel {
		rule(in, udpPort(2, cfg.Port), test, noChecksum, setPort(2, cfg.SharedPort, false))
		rule(in, udpPort(2, cfg.Port), test, setPort(2, cfg.SharedPort, true))
	}
	rule(out, udpPort(0, cfg.SharedPort), noChecksum, setPort(0, cfg.Port, false))
	rule(out, udpPort(0, cfg.SharedPort), setPort(0, cfg.Port, true))
	if err := c.Flush(); err != nil {
		return fmt.Errorf("kernel wireguard: port sharing: %w", err)
	}
	return nil
}

func removeSteering(ns netns.NsHandle, port uint16) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	c.DelTable(steeringTable(port))
	if err := c.Flush(); err != nil && err != unix.ENOENT {
		return fmt.Errorf("kernel wireguard: removing the port-sharing table: %w", err)
	}
	return nil
}

// setKernelEndpoints makes the sets exactly eps: the kernel socket gets
// WireGuard messages from those endpoints only. One transaction, so no
// datagram sees the sets half written.
func setKernelEndpoints(ns netns.NsHandle, port uint16, eps []netip.AddrPort) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("kernel wireguard: port sharing: %w", err)
	}
	set4, set6 := kernelSets(steeringTable(port))
	c.FlushSet(set4)
	c.FlushSet(set6)
	var e4, e6 []nftables.SetElement
	for _, ep := range eps {
		if ep.Addr().Unmap().Is4() {
			e4 = append(e4, nftables.SetElement{Key: endpointKey(ep)})
		} else {
			e6 = append(e6, nftables.SetElement{Key: endpointKey(ep)})
		}
	}
	for _, x := range []struct {
		set *nftables.Set
		els []nftables.SetElement
	}{{set4, e4}, {set6, e6}} {
		if len(x.els) == 0 {
			continue
		}
		if err := c.SetAddElements(x.set, x.els); err != nil {
			return fmt.Errorf("kernel wireguard: port sharing: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("kernel wireguard: setting the kernel peers' endpoints: %w", err)
	}
	return nil
}
