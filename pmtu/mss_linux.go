package pmtu

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// AddMSSClamp appends to the chain ch (in c's pending batch; nothing is
// sent before c.Flush) the rule that clamps the MSS of TCP SYNs that also
// match match (for instance, the interface names of the devices that carry
// peers' packets; none: every SYN that reaches ch) to the MTU of the route
// they take:
//
//	tcp flags & (syn|rst) == syn <match> tcp option maxseg size set rt mtu
//
// hostnet's forward filter calls it in the chains it dispatches to by the
// input interface (bridge → peer device, peer device → bridge) rather than
// from a chain of its own: every forwarded packet pays a hook call per base
// chain, and a SYN that the filter drops needs no clamp.
//
// `rt mtu` is the smaller of the route towards the destination and the
// route back to the source, less 40, and the kernel only ever lowers an
// MSS. Peers behind smaller paths have smaller routes (tunnel/mtu.go), so
// a container's connection to them starts with segments that fit, without
// waiting for ICMP; clamping the SYNs that arrive from peers too covers a
// peer that did not clamp its own side.
func AddMSSClamp(c *nftables.Conn, ch *nftables.Chain, match ...expr.Any) {
	c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: mssClampExprs(match)})
}

func mssClampExprs(match []expr.Any) []expr.Any {
	// The cheap tests first: every forwarded packet runs this rule, and
	// all but SYNs stop at the protocol or the flags, before match (an
	// interface name is a 16-byte string copy per load) is looked at.
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// tcp flags & (syn|rst) == syn
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0x00}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	}
	e = append(e, match...)
	// tcp option maxseg size set rt mtu
	return append(e,
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	)
}
