package docker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// The IPAM driver: the pool of the overlay range (addresses in the default
// subnet), and one pool per isolated subnet (docker network create
// --subnet 10.33.1.0/24, Weave Net's net:CIDR); each address handed out is
// an attachment of the daemon's attachment service until it is released.

// subnetPoolPrefix begins the ID of an isolated subnet's pool.
const subnetPoolPrefix = "weavewg-subnet-"

// poolSubnet is the isolated subnet of pool ID id: invalid for the
// range's pool; false for an ID that is not weavewg's.
func (p *Plugin) poolSubnet(id string) (netip.Prefix, bool) {
	if id == p.poolID {
		return netip.Prefix{}, true
	}
	s, ok := strings.CutPrefix(id, subnetPoolPrefix)
	if !ok {
		return netip.Prefix{}, false
	}
	sub, err := netip.ParsePrefix(s)
	if err != nil || p.host.CheckSubnet(sub) != nil {
		return netip.Prefix{}, false
	}
	return sub, true
}

func (p *Plugin) requestPool(r requestPoolRequest) (any, error) {
	if r.V6 {
		return nil, errors.New("weavewg's IPAM is IPv4 only")
	}
	if r.AddressSpace != "" && r.AddressSpace != AddressSpace {
		return nil, fmt.Errorf("unknown address space %q (weavewg's is %q)", r.AddressSpace, AddressSpace)
	}
	rng := p.host.Range().String()
	pool, id := r.Pool, p.poolID
	switch pool {
	case "":
		pool = anyPool
	case rng:
	default:
		sub, err := netip.ParsePrefix(pool)
		if err != nil {
			return nil, fmt.Errorf("subnet %q is not a CIDR", pool)
		}
		if err := p.host.CheckSubnet(sub); err != nil {
			return nil, fmt.Errorf("%v (omit --subnet for the default subnet of %s)", err, rng)
		}
		// Docker checks pools against each other only for its own IPAM.
		// The network that has sub itself is refused at CreateNetwork,
		// since a restarted dockerd asks again for its networks' pools.
		p.mu.Lock()
		err = p.subnetOverlapLocked(sub, "", false)
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
		id = subnetPoolPrefix + sub.String()
	}
	if r.SubPool != "" && r.SubPool != r.Pool && r.SubPool != rng {
		return nil, fmt.Errorf("ip-range %s: weavewg allocates from the whole subnet; omit --ip-range", r.SubPool)
	}
	return requestPoolResponse{PoolID: id, Pool: pool, Data: map[string]string{}}, nil
}

// isolated reports whether a network's pool is an isolated subnet rather
// than the range (a network without --subnet).
func (p *Plugin) isolated(pool netip.Prefix) bool {
	return pool.String() != anyPool && pool != p.host.Range()
}

// subnetOverlapLocked refuses an isolated subnet that overlaps the subnet
// of a network other than networkID on this host; one with sub itself only
// if same. Networks without --subnet (the default subnet) overlap none.
func (p *Plugin) subnetOverlapLocked(sub netip.Prefix, networkID string, same bool) error {
	ids := slices.Sorted(maps.Keys(p.st.Networks))
	for _, id := range ids {
		other, err := netip.ParsePrefix(p.st.Networks[id].Pool)
		if id == networkID || err != nil || !p.isolated(other) || !other.Overlaps(sub) {
			continue
		}
		switch {
		case other != sub:
			return fmt.Errorf("subnet %s overlaps %s, the subnet of Docker network %s on this host: isolated subnets must not overlap", sub, other, short(id))
		case same:
			return fmt.Errorf("subnet %s overlaps Docker network %s, whose subnet it is on this host: an isolated subnet has one network per host (run its containers on that network)", sub, short(id))
		}
	}
	return nil
}

func (p *Plugin) releasePool(r releasePoolRequest) (any, error) {
	if _, ok := p.poolSubnet(r.PoolID); !ok {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	return struct{}{}, nil
}

func (p *Plugin) requestAddress(r requestAddressRequest) (any, error) {
	subnet, ok := p.poolSubnet(r.PoolID)
	if !ok {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	var want netip.Addr
	if r.Address != "" {
		a, err := netip.ParseAddr(r.Address)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("address %q is not an IPv4 address", r.Address)
		}
		want = a
	}
	hostIP := p.host.HostIP()
	if r.Options[optRequestAddressType] == optGateway {
		// The gateway is the host's own overlay address on the bridge,
		// which a joining host gets from IPAM once it has space.
		if !hostIP.IsValid() {
			return nil, fmt.Errorf("this host has no overlay address yet: it is waiting for address space from its peers (weavewg status ipam); retry shortly")
		}
		if want.IsValid() && want != hostIP.Addr() {
			return nil, fmt.Errorf("gateway %s: a weavewg network's gateway is this host's overlay address %s; omit --gateway", want, hostIP.Addr())
		}
		return requestAddressResponse{Address: hostIP.String(), Data: map[string]string{}}, nil
	}
	if want == hostIP.Addr() {
		return nil, fmt.Errorf("address %s is this host's overlay address", want)
	}
	id := "docker:" + randomID()
	if want.IsValid() {
		p.mu.Lock()
		_, taken := p.addressLocked(want)
		p.mu.Unlock()
		if taken {
			return nil, fmt.Errorf("address %s is in use", want)
		}
		// A concurrent request for the same address has the same id, which
		// the attachment service refuses twice.
		id = "docker:" + want.String()
	}
	// Waiting for address space from another peer happens unlocked; the
	// attachment service records the id before it allocates, so a crash
	// while waiting leaks nothing.
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.AddressWait)
	defer cancel()
	addr, err := p.host.Reserve(ctx, id, want, subnet)
	if err != nil {
		return nil, err
	}
	p.log.Info("Docker address allocated", "ip", addr.String())
	return requestAddressResponse{Address: addr.String(), Data: map[string]string{}}, nil
}

func (p *Plugin) releaseAddress(r releaseAddressRequest) (any, error) {
	if _, ok := p.poolSubnet(r.PoolID); !ok {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	a, err := netip.ParseAddr(r.Address)
	if err != nil {
		return nil, fmt.Errorf("address %q is not an IP address", r.Address)
	}
	if a == p.host.HostIP().Addr() {
		return struct{}{}, nil // the gateway: never allocated
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rec, ok := p.addressLocked(a)
	if !ok {
		return nil, fmt.Errorf("address %s was not allocated by weavewg's Docker IPAM", a)
	}
	if rec.Endpoint != "" {
		return nil, fmt.Errorf("address %s is still used by endpoint %s", a, short(rec.Endpoint))
	}
	if err := p.host.Release(rec.ID); err != nil {
		return nil, err
	}
	p.log.Info("Docker address released", "ip", a)
	return struct{}{}, nil
}
