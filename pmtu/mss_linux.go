package pmtu

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// AddMSSClamp appends to the forward chain ch (in c's pending batch;
// nothing is sent before c.Flush) the rules that clamp the MSS of TCP SYNs
// crossing the device tun (the TUN, or another device that carries peers'
// packets, such as kernel WireGuard's), either way, to the MTU of the
// route they take:
//
//	tcp flags & (syn|rst) == syn oifname "<tun>" tcp option maxseg size set rt mtu
//	tcp flags & (syn|rst) == syn iifname "<tun>" tcp option maxseg size set rt mtu
//
// They sit at the end of the host's forward filter chain rather than in a
// chain of their own: every forwarded packet pays a hook call per base
// chain, and a SYN that the filter drops needs no clamp.
//
// `rt mtu` is the smaller of the route towards the destination and the
// route back to the source, less 40, and the kernel only ever lowers an
// MSS. Peers behind smaller paths have smaller routes (tunnel/mtu.go), so
// a container's connection to them starts with segments that fit, without
// waiting for ICMP; the second rule covers a SYN from a peer that did not
// clamp its own side.
func AddMSSClamp(c *nftables.Conn, ch *nftables.Chain, tun string) {
	for _, key := range []expr.MetaKey{expr.MetaKeyOIFNAME, expr.MetaKeyIIFNAME} {
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: mssClampExprs(key, tun)})
	}
}

func mssClampExprs(dir expr.MetaKey, tun string) []expr.Any {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, tun)
	// The cheap tests first: every forwarded packet runs this chain, and
	// all but SYNs stop at the protocol or the flags, before the
	// interface name (a 16-byte string copy per load) is looked at.
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// tcp flags & (syn|rst) == syn
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0x00}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Meta{Key: dir, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		// tcp option maxseg size set rt mtu
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}
