package pmtu

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// AddMSSClamp adds to table t (in c's pending batch; nothing is sent before
// c.Flush) a chain that clamps the MSS of TCP SYNs crossing the TUN, either
// way, to the MTU of the route they take, as
//
//	chain mss {
//		type filter hook forward priority mangle; policy accept;
//		oifname "<tun>" tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu
//		iifname "<tun>" tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu
//	}
//
// `rt mtu` is the smaller of the route towards the destination and the
// route back to the source, less 40, and the kernel only ever lowers an
// MSS. Peers behind smaller paths have smaller routes (tunnel/mtu.go), so
// a container's connection to them starts with segments that fit, without
// waiting for ICMP; the second rule covers a SYN from a peer that did not
// clamp its own side.
func AddMSSClamp(c *nftables.Conn, t *nftables.Table, tun string) {
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     "mss",
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityMangle,
		Policy:   &policy,
	})
	for _, key := range []expr.MetaKey{expr.MetaKeyOIFNAME, expr.MetaKeyIIFNAME} {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: mssClampExprs(key, tun)})
	}
}

func mssClampExprs(dir expr.MetaKey, tun string) []expr.Any {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, tun)
	return []expr.Any{
		&expr.Meta{Key: dir, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// tcp flags & (syn|rst) == syn
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0x00}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		// tcp option maxseg size set rt mtu
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}
