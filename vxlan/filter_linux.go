package vxlan

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The filter. VXLAN carries no authentication, so the trust stays where
// the operator put it. One nftables table, owned by weavewg and named after
// the device:
//
//	table ip weavewg_<dev> {
//		chain input {
//			type filter hook input priority filter; policy accept;
//			udp dport <port> ip saddr <trusted subnet> accept   (one per subnet)
//			udp dport <port> counter drop
//		}
//	}
//
// input drops VXLAN datagrams from outside the trusted subnets before the
// kernel decapsulates them. That decapsulated packets reach only the
// containers' bridge is the host's forward filter's job (hostnet, which
// is given the device as one of its OtherDevices): one forward chain for
// all of weavewg, as every base chain costs each forwarded packet of the
// host a hook call.

func filterTable(dev string) *nftables.Table {
	return &nftables.Table{Name: "weavewg_" + dev, Family: nftables.TableFamilyIPv4}
}

func installFilter(ns netns.NsHandle, cfg Config) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("vxlan filter: %w", err)
	}
	t := filterTable(cfg.Name)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	policy := nftables.ChainPolicyAccept
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	port := binary.BigEndian.AppendUint16(nil, cfg.Port)
	udpPort := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
	for _, pfx := range cfg.Trusted {
		if !pfx.Addr().Is4() {
			continue
		}
		mask := net.CIDRMask(pfx.Bits(), 32)
		netAddr := pfx.Masked().Addr().AsSlice()
		exprs := append(append([]expr.Any{}, udpPort...),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netAddr},
			&expr.Verdict{Kind: expr.VerdictAccept})
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: exprs})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: append(append([]expr.Any{}, udpPort...),
		&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("vxlan filter: %w", err)
	}
	return nil
}

// filterInPlace reports whether the filter table is there with the rules
// installFilter makes (counted, not compared: a reload removes tables
// whole).
func filterInPlace(ns netns.NsHandle, cfg Config) (bool, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return false, fmt.Errorf("vxlan filter: %w", err)
	}
	t := filterTable(cfg.Name)
	if got, err := c.ListTableOfFamily(t.Name, t.Family); err != nil || got == nil {
		return false, nil // ENOENT: gone
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: "input", Table: t})
	if err != nil {
		return false, nil // the chain is gone
	}
	want := 1 // the drop
	for _, pfx := range cfg.Trusted {
		if pfx.Addr().Is4() {
			want++
		}
	}
	return len(rules) == want, nil
}

func removeFilter(ns netns.NsHandle, dev string) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	c.DelTable(filterTable(dev))
	if err := c.Flush(); err != nil && err != unix.ENOENT {
		return fmt.Errorf("vxlan filter: %w", err)
	}
	return nil
}

func ifnameBytes(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
