package hostnet

import (
	"net"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The host's own flows into the overlay, without conntrack. overlay_in
// (expose_linux.go) must let in the replies to the host's own connections
// and pings and nothing else the host did not ask for. `ct state
// established,related` did that, but one `ct` expression anywhere in a
// namespace turns conntrack on for every packet of it: every container
// packet the host forwards and every WireGuard and VXLAN datagram, some
// 4–6.5 µs of CPU per round trip (docs/architecture.md, "Performance"),
// for the sake of the few flows the host itself opens. A `notrack` chain at
// raw priority for the forwarded packets was measured (November 30) and
// cost as much in nftables as it saved in conntrack. So weavewg keeps the
// state it needs itself, in two sets of its table, only for what the host
// itself sends into the overlay:
//
//	chain own_out {
//		type filter hook output priority filter; policy accept;
//		meta nfproto ipv4 ip daddr <overlay> oif != "lo" goto own_flows
//	}
//	chain own_flows {
//		tcp flags & (syn|ack) == syn update @host_flows { ip daddr . meta l4proto . th dport . th sport timeout 2m } return
//		meta l4proto tcp ip daddr . meta l4proto . th dport . th sport @host_flows tcp flags & (fin|rst) != 0 update @host_flows { … timeout 2m } update @host_closing { … timeout 2m } return
//		meta l4proto tcp ip daddr . meta l4proto . th dport . th sport @host_flows … != @host_closing update @host_flows { … timeout 5d } return
//		meta l4proto tcp ip daddr . meta l4proto . th dport . th sport @host_flows update @host_flows { … timeout 2m } return
//		meta l4proto udp udp sport != 53 update @host_flows { … timeout 3m } return
//		icmp type echo-request update @host_pings { ip daddr . icmp id timeout 30s }
//	}
//
// and first in overlay_in:
//
//	tcp flags & (fin|rst) != 0 tcp flags & syn == 0 ip saddr . meta l4proto . th sport . th dport @host_flows update @host_flows { … timeout 2m } update @host_closing { … timeout 2m } accept
//	ip saddr . meta l4proto . th sport . th dport @host_flows tcp flags & (syn|ack) != syn accept
//	meta l4proto udp ip saddr . meta l4proto . th sport . th dport @host_flows update @host_flows { … timeout 3m } accept
//	icmp type echo-reply ip saddr . icmp id @host_pings accept
//	icmp type { destination-unreachable, time-exceeded, parameter-problem } jump icmp_errors
//
// (icmp_errors: below, addICMPErrors). Fragments: a reply larger than the
// overlay's MTU reaches the host in fragments, and the transport matches
// above fail on every fragment but the first; but IPv4 reassembles what is
// for the host itself before the input hook (ip_local_deliver), conntrack
// or not, so overlay_in sees whole datagrams
// (TestHostFlowsFragmentedReplies). The same matches at prerouting would
// lose such replies without conntrack. The table has no IPv6 flows (the
// overlay is IPv4; overlay_in takes ICMPv6 whatever it is, fragments too).
//
// A TCP flow either end has begun to close (a FIN or RST, the host's or
// the container's) is in host_closing: the host's later segments (the
// last ACK of the close) keep it 2 minutes, as conntrack's closing states
// do, not 5 days. Without it every connection the host closed first (its
// last ACK) stayed 5 days, and a host that opens short connections into
// the overlay (kubelet probing its pods, a scraper) filled host_flows in
// hours, after which no new flow of the host's got its replies
// (TestHostFlowsForgetClosedConnections). A connection reopened on the
// same ports within 2 minutes refreshes for 2 minutes until its closing
// mark expires.
//
// A TCP flow enters the set only with the host's own SYN (so a service of
// the host answering a container adds nothing), and a SYN from the overlay
// never matches (a new connection to a hidden host is dropped even from a
// port the host once talked to); UDP enters with any datagram the host
// sends but DNS answers (weavewg's server answers every container), and
// either side's datagram keeps it; pings with the host's echo requests.
// The timeouts are conntrack's defaults for the same states (TCP
// established 5 days, closing and unanswered 2 minutes, UDP stream
// 3 minutes rounded up, ICMP 30 s), and the sets hold as many flows as
// nf_conntrack_max's default here (262,144). ICMP errors to the host are
// accepted when they quote one of these flows or what the overlay may
// reach of the host (icmp_errors, below), as conntrack's `related` took
// those it knew a flow for. What turns conntrack
// on now is only egress (its masquerade and `ct state` rules, while some
// container has it) or another program's rules (Docker, kube-proxy, ufw,
// firewalld), which track overlay traffic as before.

const (
	ownOutChain   = "own_out"
	ownFlowsChain = "own_flows"
	hostFlowsSet  = "host_flows"
	hostPingsSet  = "host_pings"
	hostClosedSet = "host_closing"
	hostFlowsSize = 262144
)

// Timeouts of the host's flows, as conntrack's defaults.
const (
	tcpOpeningTimeout     = 2 * time.Minute
	tcpEstablishedTimeout = 5 * 24 * time.Hour
	udpTimeout            = 3 * time.Minute
	pingTimeout           = 30 * time.Second
)

// The 32-bit registers a concatenated set key is built in: NFT_REG_2's
// (NFT_REG32_00–03 are NFT_REG_1, where the other matches load).
const (
	reg32a = unix.NFT_REG32_04 + iota
	reg32b
	reg32c
	reg32d
)

// hostFlowSets adds the three sets to t.
func hostFlowSets(c *nftables.Conn, t *nftables.Table) (flows, closing, pings *nftables.Set, err error) {
	flowKey := nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)
	flows = &nftables.Set{Table: t, Name: hostFlowsSet, HasTimeout: true, Dynamic: true, Concatenation: true, Size: hostFlowsSize, KeyType: flowKey}
	if err := c.AddSet(flows, nil); err != nil {
		return nil, nil, nil, err
	}
	closing = &nftables.Set{Table: t, Name: hostClosedSet, HasTimeout: true, Dynamic: true, Concatenation: true, Size: hostFlowsSize, KeyType: flowKey}
	if err := c.AddSet(closing, nil); err != nil {
		return nil, nil, nil, err
	}
	// The echo identifier is typed as a port: two bytes, as nft prints it.
	pings = &nftables.Set{Table: t, Name: hostPingsSet, HasTimeout: true, Dynamic: true, Concatenation: true, Size: hostFlowsSize,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	if err := c.AddSet(pings, nil); err != nil {
		return nil, nil, nil, err
	}
	return flows, closing, pings, nil
}

// flowKey loads addr (12 source, 16 destination) . l4proto . the ports at
// the transport header's offsets p1 and p2 into the key registers.
func flowKey(addr, p1, p2 uint32) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg32a, Base: expr.PayloadBaseNetworkHeader, Offset: addr, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32b},
		&expr.Payload{DestRegister: reg32c, Base: expr.PayloadBaseTransportHeader, Offset: p1, Len: 2},
		&expr.Payload{DestRegister: reg32d, Base: expr.PayloadBaseTransportHeader, Offset: p2, Len: 2},
	}
}

// pingKey loads addr . the echo identifier into the key registers.
func pingKey(addr uint32) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg32a, Base: expr.PayloadBaseNetworkHeader, Offset: addr, Len: 4},
		&expr.Payload{DestRegister: reg32b, Base: expr.PayloadBaseTransportHeader, Offset: 4, Len: 2},
	}
}

func lookupIn(s *nftables.Set) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg32a, SetName: s.Name, SetID: s.ID}
}

func notIn(s *nftables.Set) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg32a, SetName: s.Name, SetID: s.ID, Invert: true}
}

func updateIn(s *nftables.Set, timeout time.Duration) *expr.Dynset {
	return &expr.Dynset{SrcRegKey: reg32a, SetName: s.Name, SetID: s.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: timeout}
}

// tcpFlags matches TCP segments whose flags masked by mask are (eq) or
// are not (!eq) want.
func tcpFlags(mask, want byte, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return append(l4proto(unix.IPPROTO_TCP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{mask}, Xor: []byte{0}},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{want}},
	)
}

// noSYN, after tcpFlags: the SYN flag is not set.
var noSYN = []expr.Any{
	&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
	&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpSYN}, Xor: []byte{0}},
	&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
}

// icmpType matches ICMP messages of type typ.
func icmpType(typ byte) []expr.Any {
	return append(l4proto(unix.IPPROTO_ICMP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
	)
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// addHostFlows adds the output chains that record the host's own flows
// into overlay (an IPv4 prefix) and returns the accepts for overlay_in
// and the sets of flows and pings.
func addHostFlows(c *nftables.Conn, t *nftables.Table, overlay netip.Prefix) (accepts [][]expr.Any, flows, pings *nftables.Set, err error) {
	flows, closing, pings, err := hostFlowSets(c, t)
	if err != nil {
		return nil, nil, nil, err
	}
	policy := nftables.ChainPolicyAccept
	out := c.AddChain(&nftables.Chain{
		Name:     ownOutChain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	own := c.AddChain(&nftables.Chain{Name: ownFlowsChain, Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: append(append(ipv4(), ipField(16, overlay)...),
		&expr.Meta{Key: expr.MetaKeyOIF, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(1)}, // lo
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: ownFlowsChain})})
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	rule := func(e ...expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: own, Exprs: e}) }
	outKey := func() []expr.Any { return flowKey(16, 2, 0) } // daddr . proto . dport . sport
	// TCP: the host's SYN opens; the host's later segments refresh an
	// open flow for 5 days, a closing one (either end's FIN or RST) for
	// 2 minutes.
	rule(append(append(tcpFlags(tcpSYN|tcpACK, tcpSYN, true), outKey()...), updateIn(flows, tcpOpeningTimeout), ret)...)
	rule(append(append(tcpFlags(tcpFIN|tcpRST, 0, false), outKey()...), lookupIn(flows),
		updateIn(flows, tcpOpeningTimeout), updateIn(closing, tcpOpeningTimeout), ret)...)
	rule(append(append(append(l4proto(unix.IPPROTO_TCP), outKey()...), lookupIn(flows), notIn(closing)), updateIn(flows, tcpEstablishedTimeout), ret)...)
	rule(append(append(append(l4proto(unix.IPPROTO_TCP), outKey()...), lookupIn(flows)), updateIn(flows, tcpOpeningTimeout), ret)...)
	// UDP: anything the host sends but its DNS server's answers.
	rule(append(append(append(l4proto(unix.IPPROTO_UDP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 53}}),
		outKey()...), updateIn(flows, udpTimeout), ret)...)
	rule(append(append(icmpType(8), pingKey(16)...), updateIn(pings, pingTimeout))...) // echo request

	inKey := func() []expr.Any { return flowKey(12, 0, 2) } // saddr . proto . sport . dport
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	return [][]expr.Any{
		// The container closes (or resets) a flow of the host's; with a
		// SYN it is no reply (the rule below).
		append(append(append(tcpFlags(tcpFIN|tcpRST, 0, false), noSYN...), inKey()...), lookupIn(flows),
			updateIn(flows, tcpOpeningTimeout), updateIn(closing, tcpOpeningTimeout), accept),
		// Not a SYN alone: a new connection to the host is never a reply.
		append(append(tcpFlags(tcpSYN|tcpACK, tcpSYN, false), inKey()...), lookupIn(flows), accept),
		append(append(append(l4proto(unix.IPPROTO_UDP), inKey()...), lookupIn(flows), updateIn(flows, udpTimeout)), accept),
		append(append(icmpType(0), pingKey(12)...), lookupIn(pings), accept), // echo reply
	}, flows, pings, nil
}

// The ICMP errors to the host (destination unreachable, fragmentation
// needed among them; time exceeded; parameter problem), in a chain of
// their own that overlay_in jumps to:
//
//	chain icmp_errors {
//		@th,64,8 != 0x45 return             (the quoted header has options: unread)
//		@th,192,32 . @th,136,8 . @th,240,16 . @th,224,16 @host_flows accept
//		@th,136,8 1 @th,224,8 8 @th,192,32 . @th,256,16 @host_pings accept
//		@th,160,32 <host ip> @th,136,8 { udp, tcp } @th,224,16 53 accept  (and the peer UDP ports)
//		@th,160,32 <addr> @th,192,32 <subnet> accept  (each exposure)
//	}
//
// An error quotes the IP header and at least 8 bytes of the datagram it is
// about; one the host sent has no IP options, so the quoted addresses,
// protocol and ports (or echo identifier) lie at fixed offsets from the
// ICMP header, and the error is let in when what it quotes is one of the
// host's own flows (the sets, keyed as own_flows keys them: remote
// address . protocol . remote port . local port) or comes from what the
// overlay may reach of the host (its DNS, the multicast port, an
// exposure). What falls through returns to overlay_in, whose exposures
// may still accept it and whose drop ends it. Until December 1 every such
// error got in, whatever it quoted: then a container could send its host
// errors about the host's flows outside the overlay (its tunnels' and
// control connections' underlay ports are no secret on a LAN), and the
// kernel, which checks only that a socket matches, lowered the path MTU
// towards a peer's underlay address to the minimum or aborted a
// connection being opened (TestHostICMPErrorsQuoteFlows). Conntrack had
// let in only the errors it found a flow for (`ct state related`).
const icmpErrorsChain = "icmp_errors"

// addICMPErrors adds icmp_errors to t (see above) and returns the jumps
// for overlay_in.
func addICMPErrors(c *nftables.Conn, t *nftables.Table, spec filterSpec, flows, pings *nftables.Set) [][]expr.Any {
	ch := c.AddChain(&nftables.Chain{Name: icmpErrorsChain, Table: t})
	rule := func(e ...expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }
	// The quoted datagram's fields, at offsets from the ICMP header: 8
	// bytes of ICMP, then a 20-byte IP header, then the transport's.
	const (
		inVerIHL = 8
		inProto  = 8 + 9
		inSaddr  = 8 + 12
		inDaddr  = 8 + 16
		inSport  = 8 + 20 // the echo request's type too
		inDport  = 8 + 22
		inEchoID = 8 + 24
	)
	th := func(reg, off, n uint32) *expr.Payload {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: n}
	}
	eq := func(data ...byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	rule(th(1, inVerIHL, 1), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x45}}, &expr.Verdict{Kind: expr.VerdictReturn})
	rule(th(reg32a, inDaddr, 4), th(reg32b, inProto, 1), th(reg32c, inDport, 2), th(reg32d, inSport, 2), lookupIn(flows), accept)
	rule(th(1, inProto, 1), eq(unix.IPPROTO_ICMP), th(1, inSport, 1), eq(8), // echo request
		th(reg32a, inDaddr, 4), th(reg32b, inEchoID, 2), lookupIn(pings), accept)
	if spec.hostIP.Is4() {
		from := func(proto byte, port uint16) {
			rule(th(1, inSaddr, 4), eq(spec.hostIP.AsSlice()...), th(1, inProto, 1), eq(proto),
				th(1, inSport, 2), eq(binaryutil.BigEndian.PutUint16(port)...), accept)
		}
		from(unix.IPPROTO_UDP, 53)
		from(unix.IPPROTO_TCP, 53)
		for _, port := range spec.peerUDP {
			from(unix.IPPROTO_UDP, port)
		}
	}
	for _, e := range spec.exposed {
		if !e.Addr.Is4() || !e.From.Addr().Is4() {
			continue
		}
		inner := append([]expr.Any{th(1, inSaddr, 4), eq(e.Addr.AsSlice()...), th(1, inDaddr, 4)}, ifMasked(e.From)...)
		rule(append(inner, accept)...)
	}
	jump := &expr.Verdict{Kind: expr.VerdictJump, Chain: icmpErrorsChain}
	return [][]expr.Any{
		append(icmpType(3), jump),  // destination unreachable (fragmentation needed among them)
		append(icmpType(11), jump), // time exceeded
		append(icmpType(12), jump), // parameter problem
	}
}

// ifMasked, after a 4-byte load into register 1: it lies in p.
func ifMasked(p netip.Prefix) []expr.Any {
	var out []expr.Any
	if p.Bits() < 32 {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(p.Bits(), 32), Xor: []byte{0, 0, 0, 0}})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}
