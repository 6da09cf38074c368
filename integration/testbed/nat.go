package testbed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/types/key"
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
// The stock kinds are routers exactly as Linux-based home and office routers
// ship: one nftables rule, conntrack with the kernel's defaults (UDP
// timeouts 30 s unreplied, 120 s assured), no filter rules. NOTHING MAY BE
// ADDED TO A STOCK ROUTER TO HELP WEAVEWG (no fixed snat, no input-chain
// drop, no shorter timeouts): what weavewg needs, it has to get from
// routers as they are. A test that needs a mapping gone waits past the
// timeout or flushes conntrack (FlushMappings); it does not tune the router.
//
//   - NATStock: `oifname "eth0" masquerade`. Linux gives a new flow the
//     WAN port its source already has in another flow (for the source's
//     first flow, its own port) when the flow's tuple is free, and a random
//     other port when it is not (seen in TestNAT: a host's mapping is the
//     same towards every server, and its reflexive address reaches it from
//     a new peer): an unsolicited datagram that reached the router's WAN
//     address first (and was confirmed by conntrack on the way to its
//     input) takes the tuple an outgoing flow needs, so that flow gets
//     another port. Endpoint-independent mapping only while nothing races.
//   - NATStockRandom: `oifname "eth0" masquerade fully-random` (iptables'
//     --random-fully): every new flow gets a random port, an
//     endpoint-dependent mapping as in cloud NAT gateways and CGNAT.
//
// NATIdealEIM is not a stock router but an idealised one, kept to test ICE
// where the NAT is known to allow it: each LAN host's port 6783 is snat'ed
// to one fixed WAN port whatever the destination (truly endpoint-
// independent), unsolicited datagrams to the router itself are dropped
// before conntrack confirms them (so no race spoils a mapping), and only
// replies are let in from eth0. Nobody should mistake it for a real router.
type NATKind string

const (
	NATStock       NATKind = "stock masquerade"
	NATStockRandom NATKind = "stock random-fully"
	NATIdealEIM    NATKind = "ideal EIM"
)

// NATUDPTimeout is the kernel's default UDP conntrack timeout for an
// unreplied flow, seconds (nf_conntrack_udp_timeout); an assured flow
// lasts NATUDPStreamTimeout (nf_conntrack_udp_timeout_stream). The bed does
// not change either.
const (
	NATUDPTimeout       = 30
	NATUDPStreamTimeout = 120
)

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

// natScript is the router's whole nftables configuration per kind.
func natScript(kind NATKind) (string, error) {
	switch kind {
	case NATStock:
		return `table ip wwgnat {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
`, nil
	case NATStockRandom:
		return `table ip wwgnat {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade fully-random
	}
}
`, nil
	case NATIdealEIM:
		return `table ip wwgnat {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
	chain filter_forward {
		type filter hook forward priority filter; policy accept;
		iifname "eth0" ct state established,related counter accept
		iifname "eth0" counter drop
	}
	# Idealised, not stock: unsolicited datagrams to the router's own WAN
	# address are dropped before conntrack confirms them, so that they
	# never take the tuple an outgoing flow needs.
	chain filter_input {
		type filter hook input priority filter; policy accept;
		iifname "eth0" ct state established,related accept
		iifname "eth0" counter drop
	}
}
`, nil
	}
	return "", fmt.Errorf("testbed: unknown NAT kind %q", kind)
}

// AddNAT makes a NAT router of kind at underlay address 192.0.2.octet.
// Index numbers the LAN (0–7).
func (b *Bed) AddNAT(kind NATKind, octet, index int) *NAT {
	b.tb.Helper()
	if index < 0 || index > 7 {
		b.tb.Fatalf("testbed: NAT LAN index %d out of 0-7", index)
	}
	script, err := natScript(kind)
	if err != nil {
		b.tb.Fatalf("%v", err)
	}
	name := fmt.Sprintf("%snat%d", b.Prefix, index)
	b.addUnderlayNode(name, octet)
	n := &NAT{bed: b, Kind: kind, Netns: name, WANIP: fmt.Sprintf("%s%d", UnderlayNet, octet), index: index,
		LANIP: fmt.Sprintf("%s%d", natLANBase, 32*index+1)}
	b.MustIP(name, "link", "add", "lan0", "type", "bridge", "mcast_snooping", "0")
	b.MustIP(name, "addr", "add", n.LANIP+"/27", "dev", "lan0")
	b.MustIP(name, "link", "set", "lan0", "up")
	if err := nsNft(name, script); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	// A router forwards; that is the only setting it gets.
	if _, err := run("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
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
	if n.Kind == NATIdealEIM {
		// Linux masquerade keeps a flow's source port only when that
		// flow's tuple is free, deciding per flow: measured here, a host's
		// port 6783 came out as one port towards two servers and as
		// another towards a third, which is not endpoint-independent.
		// The idealised router fixes one port per LAN host, making the
		// mapping truly endpoint-independent; conntrack still lets in
		// replies only. Stock routers get no such rule.
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

// ExpireUDPMappings forgets the router's UDP mappings and keeps the rest (TCP
// lives for days in conntrack): what more than the UDP timeout (30 s
// unreplied, 120 s assured) of silence does to a mapping, without waiting
// for it or tuning the router.
func (n *NAT) ExpireUDPMappings() error {
	return InNetns(n.Netns, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		f := &netlink.ConntrackFilter{}
		if err := f.AddProtocol(17); err != nil {
			return err
		}
		_, err = h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
		return err
	})
}

// Counters returns the router's nft counters as text (for logs).
func (n *NAT) Counters() string {
	out, _ := run("ip", "netns", "exec", n.Netns, "nft", "list", "table", "ip", "wwgnat")
	return out
}

// SetKey writes priv as h's identity before its first launch, so a test can
// choose the key order of a pair (which side has the smaller key changes who
// sends WireGuard keepalives and who controls ICE).
func (h *Host) SetKey(priv key.Private) error {
	if err := os.MkdirAll(h.StateDir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(h.StateDir, "key"), []byte(priv.String()+"\n"), 0o600)
}

// OrderedKeys makes n private keys sorted by their public keys.
func OrderedKeys(n int) ([]key.Private, error) {
	ks := make([]key.Private, n)
	for i := range ks {
		var err error
		if ks[i], err = key.NewPrivate(); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(ks, func(a, b key.Private) int { return bytes.Compare(pubBytes(a), pubBytes(b)) })
	return ks, nil
}

func pubBytes(k key.Private) []byte { p := k.Public(); return p[:] }

// FirstReply pings addr from c every 200 ms until the first reply or
// timeout, and returns how long the first reply took, from the first echo
// request on the wire: by ping's own clock, the answered request's place
// in the 200 ms schedule plus its round trip (a request WireGuard held
// until its handshake is answered late, so the answered one need not be
// the last sent). Starting ip(8) and ping in the namespace, slow on a
// loaded machine, is not counted. The wall clock around the command is
// the fallback when ping's output cannot be read.
func (c *Container) FirstReply(addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	out, err := c.Exec("ping", "-n", "-c", "1", "-i", "0.2", "-w", strconv.Itoa(int((timeout+time.Second-1)/time.Second)), addr)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("ping %s → %s: no reply in %v: %v: %s", c, addr, timeout, err, strings.TrimSpace(out))
	}
	if d, ok := pingFirstReply(out, 200*time.Millisecond); ok {
		return d, nil
	}
	return took, nil
}

var pingReply = regexp.MustCompile(`icmp_seq=(\d+) .*time=([\d.]+) ms`)

// pingFirstReply reads iputils ping's first reply line, of requests sent
// every interval from icmp_seq 1 on.
func pingFirstReply(out string, interval time.Duration) (time.Duration, bool) {
	m := pingReply.FindStringSubmatch(out)
	if m == nil {
		return 0, false
	}
	seq, err1 := strconv.Atoi(m[1])
	rtt, err2 := strconv.ParseFloat(m[2], 64)
	if err1 != nil || err2 != nil || seq < 1 {
		return 0, false
	}
	return time.Duration(seq-1)*interval + time.Duration(rtt*float64(time.Millisecond)), true
}

// UDPMappings lists the router's UDP conntrack entries, one a line (for
// logs: which tuples a NAT holds, replied or not).
func (n *NAT) UDPMappings() string {
	var sb strings.Builder
	err := InNetns(n.Netns, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_UDP {
				sb.WriteString(f.String())
				sb.WriteByte('\n')
			}
		}
		return nil
	})
	if err != nil {
		return "conntrack: " + err.Error()
	}
	return sb.String()
}
