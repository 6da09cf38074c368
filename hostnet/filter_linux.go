package hostnet

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/pmtu"
)

// The forward filter. The host must forward between the TUN and the bridge
// (ip_forward is on for that), but ip_forward is namespace-wide: without a
// filter, any member could send packets into the TUN addressed to the
// host's other networks and have the host route them there. One nftables
// table, owned by weavewg and named after the TUN, drops what arrives on
// the TUN for any interface but the bridge:
//
//	table inet weavewg_<tun> {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "<tun>" oifname != "<bridge>" counter drop
//		}
//	}
//
// Traffic to the host itself (its overlay address, DNS on it) is input,
// not forward, and is untouched; so is the containers' traffic to the
// overlay and anything other tables decide.

// filterTable names the table for tun.
func filterTable(tun string) *nftables.Table {
	return &nftables.Table{Name: "weavewg_" + tun, Family: nftables.TableFamilyINet}
}

// installForwardFilter (re)creates the table in ns.
func installForwardFilter(ns netns.NsHandle, tun, bridge string) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("forward filter: %w", err)
	}
	t := filterTable(tun)
	// Replace a table left by a crashed run: add (a no-op if present),
	// delete, add again, in one transaction.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     "forward",
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	c.AddRule(&nftables.Rule{
		Table: t,
		Chain: ch,
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(tun)},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(bridge)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		},
	})
	pmtu.AddMSSClamp(c, t, tun) // MSS clamping to peer route MTUs (tunnel/mtu.go)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("forward filter: %w", err)
	}
	return nil
}

// removeForwardFilter deletes the table; a missing table is not an error.
func removeForwardFilter(ns netns.NsHandle, tun string) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	c.DelTable(filterTable(tun))
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forward filter: %w", err)
	}
	return nil
}

// ifnameBytes is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifnameBytes(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
