package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/ipam"
)

// Isolated subnets (Weave Net's net:CIDR). Containers get their addresses
// in a subnet of the range, with the subnet's prefix length, so they see
// only their subnet as on-link; the forward filter (hostnet) drops what
// crosses from one subnet to another, so a route added by hand inside a
// container does not get around it. The default subnet
// (--ipalloc-default-subnet, the whole range without it) is where
// addresses come from when none is asked for, and where the host's own
// address lies.

// defaultSubnet is --ipalloc-default-subnet, or the range.
func (d *Daemon) defaultSubnet() netip.Prefix {
	if d.cfg.DefaultSubnet.IsValid() {
		return d.cfg.DefaultSubnet
	}
	return d.cfg.Range
}

// isolating says whether subnets other than the default may be used: the
// default subnet must leave room for them.
func (d *Daemon) isolating() bool { return d.defaultSubnet() != d.cfg.Range }

// checkSubnet refuses a subnet outside the range, one that overlaps the
// default subnet without being it, or any other subnet when the default
// subnet is the whole range.
func (d *Daemon) checkSubnet(p netip.Prefix) error {
	if p == d.defaultSubnet() {
		return nil
	}
	switch {
	case !d.cfg.Range.Contains(p.Addr()) || p.Bits() < d.cfg.Range.Bits():
		return badRequest("subnet %s is not inside the overlay range %s", p, d.cfg.Range)
	case p.Bits() > 30:
		return badRequest("subnet %s is too small: a subnet needs at least /30 (its first and last addresses are not handed out)", p)
	case !d.isolating():
		return badRequest("subnet %s: isolated subnets need a default subnet that leaves room for them; launch with --ipalloc-default-subnet (e.g. %s)", p, exampleDefaultSubnet(d.cfg.Range))
	case p.Overlaps(d.defaultSubnet()):
		return badRequest("subnet %s overlaps the default subnet %s; choose a subnet outside it", p, d.defaultSubnet())
	}
	return nil
}

// exampleDefaultSubnet suggests a default subnet: the first quarter of r.
func exampleDefaultSubnet(r netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(r.Addr(), min(r.Bits()+2, 30))
}

// allocateIn allocates id's address in subnet s.
func (d *Daemon) allocateIn(id string, s netip.Prefix) (netip.Addr, error) {
	if s == d.cfg.Range {
		return d.ipam.Allocate(id)
	}
	return d.ipam.AllocateIn(id, s)
}

// subnetAllocError words an allocation failure in subnet s.
func (d *Daemon) subnetAllocError(s netip.Prefix, err error) error {
	if errors.Is(err, ipam.ErrWaitingForSpace) {
		return badRequest("no free address in subnet %s here yet: this peer asked the peers that own it for space; retry in a few seconds (%s)", s, d.noSpaceReason())
	}
	return fmt.Errorf("subnet %s: %w", s, err)
}

// validateDefaultSubnet checks --ipalloc-default-subnet against the range.
func validateDefaultSubnet(sub, r netip.Prefix) error {
	if !sub.IsValid() {
		return nil
	}
	if !sub.Addr().Is4() || sub != sub.Masked() || !r.Contains(sub.Addr()) || sub.Bits() < r.Bits() || sub.Bits() > 30 {
		return fmt.Errorf("--ipalloc-default-subnet %s must be a subnet of /30 or larger inside the overlay range %s, e.g. %s", sub, r, exampleDefaultSubnet(r))
	}
	return nil
}

// attachSpec is what hostnet needs to attach a namespace at p: a
// container outside the default subnet gets an on-link route to the host
// address (its DNS server), and an egress one a default route via it.
func (d *Daemon) attachSpec(netns string, p netip.Prefix, ifName string, egress bool) hostnet.AttachSpec {
	spec := hostnet.AttachSpec{Netns: netns, IP: p, IfName: ifName}
	hp := d.hostPrefix()
	if hp.IsValid() && !p.Masked().Contains(hp.Addr()) {
		spec.Routes = []netip.Prefix{netip.PrefixFrom(hp.Addr(), 32)}
	}
	if egress && hp.IsValid() {
		spec.Gateway = hp.Addr()
	}
	return spec
}

// subnetFilter is what hostnet needs of the forward filter for subnets
// and egress (hostnet.Host; an interface so the daemon's fakes need not
// have it).
type subnetFilter interface {
	SetSubnets(subnets []netip.Prefix) error
	SetPortSubnets(ports map[string]netip.Prefix) error
	SetEgress(sources []netip.Addr) error
}

// attachmentSubnet is the subnet a container at p is on: its own when
// isolating, else the whole range.
func (d *Daemon) attachmentSubnet(p netip.Prefix) netip.Prefix {
	if !d.isolating() {
		return d.cfg.Range
	}
	return p.Masked()
}

// applyFilters hands hostnet the subnets this host's containers use (for
// isolation, when the default subnet leaves room for others) and the
// addresses that may leave through the host (egress). It runs at attach,
// and in every reconcile (releases, restarts).
func (d *Daemon) applyFilters() {
	fs := d.filterState()
	if d.mcast != nil {
		// Multicast and broadcast are scoped by subnet, isolating or not
		// (one subnet, the range, when not); a host is sent a subnet's
		// broadcasts only if it has containers on it.
		d.mcast.setSubnets(fs.used, fs.allPorts)
	}
	f, ok := d.host.(subnetFilter)
	if !ok {
		return
	}
	err := errors.Join(f.SetSubnets(fs.subnets), f.SetPortSubnets(fs.ports), f.SetEgress(fs.egress))
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	if msg := fmt.Sprint(err); err != nil && msg != d.filterErr {
		d.log.Error("subnet isolation and egress rules; retried at each reconcile", "err", err)
		d.filterErr = msg
	} else if err == nil && d.filterErr != "" {
		d.log.Info("subnet isolation and egress rules in place again")
		d.filterErr = ""
	}
}

// filterState is what the attachments make of the host's filter: the
// subnets its containers use (used, and the bridge ports on them,
// allPorts), the isolation rules' subnets and ports (none unless
// isolating) and the egress addresses. hostnet.New gets it too, so a
// relaunch builds the filter whole.
type filterState struct {
	used            []netip.Prefix
	allPorts, ports map[string]netip.Prefix
	subnets         []netip.Prefix
	egress          []netip.Addr
}

func (d *Daemon) filterState() filterState {
	// The subnets this host's containers are on, and the default one
	// (where the host address lies) for the filter.
	var used []netip.Prefix
	ports := map[string]netip.Prefix{}
	var egress []netip.Addr
	d.mu.Lock()
	for _, r := range d.attachments {
		p, ok := r.Prefix()
		if !ok {
			continue
		}
		s := d.attachmentSubnet(p)
		if !slices.Contains(used, s) {
			used = append(used, s)
		}
		if r.HostVeth != "" {
			ports[r.HostVeth] = s
		}
		if r.Egress {
			egress = append(egress, p.Addr())
		}
	}
	d.mu.Unlock()
	subnets := []netip.Prefix{d.defaultSubnet()}
	for _, s := range used {
		if !slices.Contains(subnets, s) {
			subnets = append(subnets, s)
		}
	}
	allPorts := ports
	if !d.isolating() {
		subnets, ports = nil, nil
	}
	// A record from before isolation was turned on has the range's prefix
	// length: no isolation rule of its own (its port is still scoped).
	subnets = slices.DeleteFunc(subnets, func(s netip.Prefix) bool { return s == d.cfg.Range })
	return filterState{used: used, allPorts: allPorts, ports: ports, subnets: subnets, egress: egress}
}
