package hostnet

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/pmtu"
)

// The forward filter. The host must forward between the TUN and the bridge
// (ip_forward is on for that), but ip_forward is namespace-wide: without a
// filter, any member could send packets into the TUN addressed to the
// host's other networks and have the host route them there, and anyone on
// the host's underlay LAN with a route to the overlay via the host could
// reach its containers, its overlay address and its DNS server, or (with a
// spoofed source) other hosts' containers through the tunnel. One nftables
// table, owned by weavewg and named after the TUN, lets the overlay in only
// through the overlay's own interfaces:
//
//	table inet weavewg_<tun> {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			(egress_linux.go's accepts, while a container has egress)
//			iif <bridge> goto from_bridge    (by index)
//			iif <tun> goto from_peer
//			iif <other> goto from_peer       (the other peer devices that exist)
//			iifname vmap @dispatch      (the other peer devices: goto from_peer; by name)
//			oifname @overlay_devs counter drop
//		}
//		chain from_bridge {
//			oifname != @overlay_devs counter drop   (egress_linux.go)
//			(subnet_linux.go's isolation drops)
//			tcp flags & (syn|rst) == syn oifname @peer_devs tcp option maxseg size set rt mtu
//		}
//		chain from_peer {
//			oif != <bridge> counter drop
//			(subnet_linux.go's isolation drops)
//			tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu
//		}
//		chain input {
//			type filter hook input priority filter; policy accept;
//			meta nfproto ipv4 ip daddr <overlay> iifname != "<tun>" iifname != "<bridge>" iifname != "lo" counter drop
//			iifname <bridge> jump overlay_in, iifname <tun> jump overlay_in, iifname <other> jump overlay_in
//		}
//		chain overlay_in { ... }   (expose_linux.go: the host's own services are closed to the overlay but DNS)
//		chain own_out { ... }      (hostflows_linux.go: the host's own flows, for overlay_in's replies)
//	}
//
// So: from the TUN only to the bridge; into the bridge only from the TUN
// (and the bridge); into the TUN only from the bridge; and the host's
// overlay address (its DNS server among others) only from the TUN, the
// bridge and the host itself. The source check on the TUN is WireGuard's:
// wireguard-go drops a decrypted packet whose source is not in the sending
// peer's AllowedIPs, and those are what the peer provably owns (its IPAM
// ranges and an unrefused host address). Locally made traffic (output) is
// untouched, as is what other tables decide. Other devices that carry
// peers' packets (the VXLAN fast path's, kernel WireGuard's) count as the
// TUN does. A rule that matches several devices names a set of the table
// (peer_devs: the TUN and the others, when there are others; overlay_devs:
// those and the bridge; input_devs: those and lo): one rule of each kind
// whatever the number of devices.
//
// Every forwarded packet of the host runs this chain, so it is one base
// chain that looks at the input interface once (a verdict map) and sends
// the packet to the few rules of its kind: the MSS clamp
// (pmtu.AddMSSClamp) is the last rule of each rather than a chain of its
// own at mangle priority, since each base chain costs a hook call per
// packet, and each rule loads the cheapest field first. A host's other
// forwarded traffic runs the map lookup and one set lookup.

// The regular chains the forward chain dispatches to by input interface.
const (
	fromBridgeChain = "from_bridge"
	fromPeerChain   = "from_peer"
)

// filterTable names the table for tun.
func filterTable(tun string) *nftables.Table {
	return &nftables.Table{Name: "weavewg_" + tun, Family: nftables.TableFamilyINet}
}

// filterSpec is what the table filters for: the bridge, the devices that
// carry peers' packets (the TUN first, then others such as the VXLAN fast
// path's) and the overlay range.
type filterSpec struct {
	bridge, tun string
	others      []string
	overlay     netip.Prefix
	// What the overlay may reach of the host itself (expose_linux.go):
	// DNS on hostIP (invalid: none yet), and the exposures.
	hostIP  netip.Addr
	exposed []Exposure
	peerUDP []uint16 // ports of hostIP open to the peer devices
	// subnets are the isolated subnets in use here (subnet_linux.go).
	subnets []netip.Prefix
	// ports are the bridge ports of containers and their subnets, whose
	// group frames are scoped (subnet_linux.go).
	ports map[string]netip.Prefix
	// egress are the containers that may leave through the host
	// (egress_linux.go).
	egress []netip.Addr
}

// installForwardFilter (re)creates the table in ns. It returns the
// indexes it matched the other peer devices by (those that existed).
func installForwardFilter(ns netns.NsHandle, spec filterSpec) (map[string]uint32, error) {
	tun, bridge, overlay := spec.tun, spec.bridge, spec.overlay
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, fmt.Errorf("forward filter: %w", err)
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
	sets := &ifnameSets{c: c, t: t}
	peerDevs := append([]string{tun}, spec.others...)
	// Dispatch on the input interface, once: a packet from the bridge
	// goes to from_bridge, one from a peer device to from_peer (goto: their
	// end is this chain's policy), and each runs only the rules of its
	// kind. Every forwarded packet of the host runs this chain; a chain of
	// rules that each named an interface ran four of them and six
	// interface-name copies per packet (flood ping across the trusted
	// path: ~1.5 µs of the ~8 µs per round trip the filter added).
	fromBridge := c.AddChain(&nftables.Chain{Name: fromBridgeChain, Table: t})
	fromPeer := c.AddChain(&nftables.Chain{Name: fromPeerChain, Table: t})
	drop := func(ch *nftables.Chain, match ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(match, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})})
	}
	addEgress(c, t, ch, fromBridge, spec, peerDevs, sets)
	// The bridge and the TUN exist while the table does: matched by
	// index (a 4-byte load, where a name is a 16-byte copy: about 30% of
	// the filter's nftables work per packet, November 30). The other peer
	// devices (the VXLAN fast path's, kernel WireGuard's) are made after
	// the table and may be made again by their owners: by index too when
	// they exist, and by name as well, after (the map below), so that a
	// device made again under a new index is dispatched by its name
	// until the table is made again for the new index (Host.otherLinks).
	idx := indexes(ns, append([]string{bridge, tun}, spec.others...)...)
	dispatch := map[string]string{bridge: fromBridgeChain}
	for _, d := range peerDevs {
		dispatch[d] = fromPeerChain
	}
	otherIdx := map[string]uint32{}
	// One rule per index, bridge first (a map of indexes would print its
	// elements in the order of the indexes, which a relaunch changes).
	for i, name := range append([]string{bridge}, peerDevs...) {
		if _, ok := idx[name]; ok {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(ifmatch(idx, expr.MetaKeyIIFNAME, expr.CmpOpEq, name),
				&expr.Verdict{Kind: expr.VerdictGoto, Chain: dispatch[name]})})
			if i < 2 {
				delete(dispatch, name) // the bridge, the TUN
			} else {
				otherIdx[name] = idx[name]
			}
		}
	}
	if len(dispatch) > 0 {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: sets.dispatch(expr.MetaKeyIIFNAME, "dispatch", dispatch)})
	}
	// From anywhere else: not into the bridge or a peer device.
	drop(ch, sets.in(expr.MetaKeyOIFNAME, true, "overlay_devs", append(peerDevs, bridge)...)...)
	// From a peer device only to the bridge. (From the bridge: anywhere
	// in the overlay, addEgress's rule.)
	drop(fromPeer, ifmatch(idx, expr.MetaKeyOIFNAME, expr.CmpOpNeq, bridge)...)
	notFrom := func(devs ...string) []expr.Any { return sets.in(expr.MetaKeyIIFNAME, false, "input_devs", devs...) }
	addIsolation(c, t, []*nftables.Chain{fromBridge, fromPeer}, spec)
	// MSS clamping to peer route MTUs (tunnel/mtu.go), on every device
	// that carries peers' packets, both ways: kernel WireGuard's routes
	// carry a smaller path's MTU as the TUN's do.
	pmtu.AddMSSClamp(c, fromBridge, sets.in(expr.MetaKeyOIFNAME, true, "peer_devs", peerDevs...)...)
	pmtu.AddMSSClamp(c, fromPeer)
	if overlay.IsValid() && overlay.Addr().Is4() {
		in := c.AddChain(&nftables.Chain{
			Name:     "input",
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookInput,
			Priority: nftables.ChainPriorityFilter,
			Policy:   &policy,
		})
		mask := net.CIDRMask(overlay.Bits(), 32)
		match := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: overlay.Masked().Addr().AsSlice()},
		}
		drop(in, append(match, notFrom(append(peerDevs, bridge, "lo")...)...)...)
		if err := addOverlayInput(c, t, in, spec, append([]string{bridge}, peerDevs...)); err != nil {
			return nil, fmt.Errorf("forward filter: %w", err)
		}
	}
	if sets.err != nil {
		return nil, fmt.Errorf("forward filter: %w", sets.err)
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("forward filter: %w", err)
	}
	return otherIdx, nil
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
	return removeBridgeTable(ns, tun)
}

// indexes returns the interface indexes of those of names that exist in
// ns (none if ns cannot be read: then every match is by name).
func indexes(ns netns.NsHandle, names ...string) map[string]uint32 {
	out := map[string]uint32{}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return out
	}
	defer nl.Close()
	for _, n := range names {
		if l, err := nl.LinkByName(n); err == nil && l.Attrs().Index > 0 {
			out[n] = uint32(l.Attrs().Index)
		}
	}
	return out
}

// ifmatch matches the input or output interface n: by index when idx has
// it, else by name.
func ifmatch(idx map[string]uint32, k expr.MetaKey, op expr.CmpOp, n string) []expr.Any {
	i, ok := idx[n]
	if !ok {
		return ifname(k, op, n)
	}
	key := expr.MetaKeyIIF
	if k == expr.MetaKeyOIFNAME {
		key = expr.MetaKeyOIF
	}
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(i)}}
}

// ifname matches the input or output interface name against n.
func ifname(k expr.MetaKey, op expr.CmpOp, n string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: k, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: ifnameBytes(n)}}
}

// ifnameSets makes the interface name matches of one transaction.
type ifnameSets struct {
	c    *nftables.Conn
	t    *nftables.Table
	made map[string]*nftables.Set
	err  error // the first set that could not be added
}

// in matches the input or output interface name against names: a member
// of them (member) or none of them. Several names are a named set of the
// table (name; made once per transaction, shared by the rules that use
// it): one 16-byte copy of the interface name and one lookup, where a
// comparison per name copied the name each time (nft_meta's strscpy, the
// largest part of the filter's cost per packet). Named, not anonymous:
// the kernel binds an anonymous set to one rule only, and nft prints an
// anonymous set's interface names as "" (google/nftables marks its keys
// big-endian; nft wants a string's host order).
func (s *ifnameSets) in(k expr.MetaKey, member bool, name string, names ...string) []expr.Any {
	op := expr.CmpOpEq
	if !member {
		op = expr.CmpOpNeq
	}
	if len(names) == 1 {
		return ifname(k, op, names[0])
	}
	set := s.made[name]
	if set == nil {
		set = &nftables.Set{Table: s.t, Name: name, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
		var elems []nftables.SetElement
		for _, n := range names {
			elems = append(elems, nftables.SetElement{Key: ifnameBytes(n)})
		}
		if err := s.c.AddSet(set, elems); err != nil {
			if s.err == nil {
				s.err = fmt.Errorf("interface set %s %v: %w", name, names, err)
			}
			return ifname(k, op, names[0]) // never flushed: the caller fails
		}
		if s.made == nil {
			s.made = map[string]*nftables.Set{}
		}
		s.made[name] = set
	}
	return []expr.Any{&expr.Meta{Key: k, Register: 1}, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: !member}}
}

// dispatch jumps (goto) by the interface name: a named verdict map of the
// table from each name to its chain, one copy of the name and one lookup.
func (s *ifnameSets) dispatch(k expr.MetaKey, name string, to map[string]string) []expr.Any {
	set := &nftables.Set{Table: s.t, Name: name, IsMap: true, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian,
		DataType: nftables.TypeVerdict}
	var elems []nftables.SetElement
	for _, n := range slices.Sorted(maps.Keys(to)) {
		elems = append(elems, nftables.SetElement{Key: ifnameBytes(n), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: to[n]}})
	}
	if err := s.c.AddSet(set, elems); err != nil && s.err == nil {
		s.err = fmt.Errorf("interface map %s: %w", name, err)
	}
	return []expr.Any{&expr.Meta{Key: k, Register: 1}, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, IsDestRegSet: true}}
}

// ifnameBytes is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifnameBytes(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
