package testbed

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// NAT routers. A NAT is a namespace on the underlay (its WAN, eth0 at
// 192.0.2.OCTET) holding a LAN bridge lan0 with the router's LAN address;
// hosts behind it hang off lan0 with addresses from 198.51.100.0/24 (each
// NAT gets its own /27, so no two LANs overlap and host candidates never
// collide) and a default route through it:
//
//	PREFIX-natK   router: eth0 192.0.2.OCTET (underlay), lan0 198.51.100.(32K+1)/27
//	PREFIX-hN     host behind it: eth0 198.51.100.(32K+j)/27, default via the router
//
// nftables in the router masquerades what leaves eth0 and lets in from
// eth0 only replies (conntrack state established or related), so the
// filtering is address- and port-dependent, as in most home routers:
//
//   - NATEasy: endpoint-independent mapping: each LAN host's port 6783
//     is snat'ed to one fixed WAN port whatever the destination (plain
//     masquerade decides per flow and is not reliably endpoint-independent;
//     see AddHostBehind); everything else is masqueraded.
//   - NATHard: `masquerade fully-random` (iptables: --random-fully): every new flow (destination) gets
//     a random port, endpoint-dependent mapping as in cloud NAT gateways and
//     CGNAT.
//
// The UDP conntrack timeouts of the router are short (NATUDPTimeout), so a
// mapping that no keepalive refreshes is forgotten quickly.
type NATKind string

const (
	NATEasy NATKind = "easy"
	NATHard NATKind = "hard"
)

// NATUDPTimeout is the routers' UDP conntrack timeout, seconds, for both
// unreplied and assured ("stream") flows.
const NATUDPTimeout = 20

// NAT is one router.
type NAT struct {
	bed   *Bed
	Kind  NATKind
	Netns string
	WANIP string // 192.0.2.OCTET
	LANIP string // router's LAN address
	index int
	hosts int
}

const natLANBase = "198.51.100."

// AddNAT makes a NAT router of kind at underlay address 192.0.2.octet.
// Index numbers the LAN (0–7).
func (b *Bed) AddNAT(kind NATKind, octet, index int) *NAT {
	b.tb.Helper()
	if index < 0 || index > 7 {
		b.tb.Fatalf("testbed: NAT LAN index %d out of 0-7", index)
	}
	name := fmt.Sprintf("%snat%d", b.Prefix, index)
	b.addUnderlayNode(name, octet)
	n := &NAT{bed: b, Kind: kind, Netns: name, WANIP: fmt.Sprintf("%s%d", UnderlayNet, octet), index: index,
		LANIP: fmt.Sprintf("%s%d", natLANBase, 32*index+1)}
	b.MustIP(name, "link", "add", "lan0", "type", "bridge", "mcast_snooping", "0")
	b.MustIP(name, "addr", "add", n.LANIP+"/27", "dev", "lan0")
	b.MustIP(name, "link", "set", "lan0", "up")
	masq := "masquerade"
	if kind == NATHard {
		masq = "masquerade fully-random"
	}
	script := fmt.Sprintf(`table ip wwgnat {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" %s
	}
	chain filter_forward {
		type filter hook forward priority filter; policy accept;
		iifname "eth0" ct state established,related counter accept
		iifname "eth0" counter drop
	}
	# Unsolicited datagrams to the router's own WAN address are dropped
	# here, before conntrack confirms them: a confirmed entry for such a
	# datagram (a hole-punching check that arrived before ours left)
	# would take the tuple our own outgoing flow needs, and the NAT would
	# give that flow another port. Home routers drop these too.
	chain filter_input {
		type filter hook input priority filter; policy accept;
		iifname "eth0" ct state established,related accept
		iifname "eth0" counter drop
	}
}
`, masq)
	if err := nsNft(name, script); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	if _, err := run("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
		fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout=%d", NATUDPTimeout),
		fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout_stream=%d", NATUDPTimeout)); err != nil {
		b.tb.Fatalf("testbed: NAT %s sysctls: %v", name, err)
	}
	b.logf("testbed: NAT %s (%s) WAN %s LAN %s/27", name, kind, n.WANIP, n.LANIP)
	return n
}

func nsNft(ns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft in %s: %v: %s\nscript:\n%s", ns, err, strings.TrimSpace(string(out)), script)
	}
	return nil
}

// AddHostBehind makes a host (as AddHost) whose only link is to n's LAN, and
// launches it unless opts.NoLaunch. opts.Peers should name public hosts:
// nothing behind another NAT can be dialled. The host's UnderlayIP becomes
// its LAN address.
func (b *Bed) AddHostBehind(n *NAT, opts HostOptions) *Host {
	b.tb.Helper()
	launch := !opts.NoLaunch
	opts.NoLaunch = true
	h := b.AddHost(opts)
	n.hosts++
	lan := fmt.Sprintf("%s%d", natLANBase, 32*n.index+1+n.hosts)
	// Replace the underlay link by one to the LAN.
	b.MustIP(h.Netns, "link", "del", "eth0")
	port := fmt.Sprintf("l%d", h.Index)
	b.MustIP(n.Netns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.Netns)
	b.MustIP(n.Netns, "link", "set", port, "master", "lan0", "up")
	b.MustIP(h.Netns, "addr", "add", lan+"/27", "dev", "eth0")
	b.MustIP(h.Netns, "link", "set", "eth0", "up")
	b.MustIP(h.Netns, "route", "add", "default", "via", n.LANIP)
	h.UnderlayIP = lan
	if n.Kind == NATEasy {
		// Linux masquerade keeps a flow's source port only when that
		// flow's tuple is free, deciding per flow: measured here, a host's
		// port 6783 came out as one port towards two servers and as
		// another towards a third, which is not endpoint-independent.
		// A fixed port per LAN host makes the mapping truly
		// endpoint-independent; conntrack still lets in replies only.
		rule := fmt.Sprintf("insert rule ip wwgnat nat_postrouting ip saddr %s udp sport 6783 oifname \"eth0\" snat to %s:%d\n",
			lan, n.WANIP, 20000+32*n.index+n.hosts)
		if err := nsNft(n.Netns, rule); err != nil {
			b.tb.Fatalf("testbed: %v", err)
		}
	}
	b.logf("testbed: %s behind %s NAT %s at %s", h, n.Kind, n.Netns, lan)
	if launch {
		h.Launch()
	}
	return h
}

// FlushMappings forgets every NAT mapping of the router (its whole
// conntrack table), as a router reboot or a mapping timeout would.
func (n *NAT) FlushMappings() error {
	return InNetns(n.Netns, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		return h.ConntrackTableFlush(netlink.ConntrackTable)
	})
}

// Counters returns the router's nft counters as text (for logs).
func (n *NAT) Counters() string {
	out, _ := run("ip", "netns", "exec", n.Netns, "nft", "list", "table", "ip", "wwgnat")
	return out
}
