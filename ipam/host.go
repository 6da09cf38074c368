package ipam

import (
	"net/netip"
	"slices"
)

// HostID is the allocation id of a host's own overlay address. A network
// whose only allocations are its hosts' addresses is still unused: it may
// give way to another network when its peers connect to one (hosts
// launched alone, then connected, must not split the mesh; giveway.go),
// and each host address, in space its peer no longer owns, is dropped
// quietly for the daemon to allocate another.
const HostID = "weavewg:host"

// AddressesOf returns the addresses allocated to id (also claims held
// while the ring is unknown).
func (a *Allocator) AddressesOf(id string) []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.byID[id])
}

// usesLocked counts the allocations that make a network used: all but
// the host address.
func (a *Allocator) usesLocked() int {
	return len(a.allocs) - len(a.byID[HostID])
}

// dropHostLocked forgets the host address before our unused network
// gives way to another.
func (a *Allocator) dropHostLocked() {
	l := slices.Clone(a.byID[HostID])
	if len(l) == 0 {
		return
	}
	if err := a.st.delAllocs(l); err != nil {
		a.log.Error("forgetting the host address of an abandoned network", "err", err)
	}
	for _, addr := range l {
		a.forgetLocked(addr)
	}
	a.count("ipam_host_address_dropped")
}
