package docker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// The IPAM driver: one pool, the overlay range; each address handed out is
// an attachment of the daemon's attachment service until it is released.

func (p *Plugin) requestPool(r requestPoolRequest) (any, error) {
	if r.V6 {
		return nil, errors.New("weavewg's IPAM is IPv4 only")
	}
	if r.AddressSpace != "" && r.AddressSpace != AddressSpace {
		return nil, fmt.Errorf("unknown address space %q (weavewg's is %q)", r.AddressSpace, AddressSpace)
	}
	rng := p.host.Range().String()
	pool := r.Pool
	switch pool {
	case "":
		pool = anyPool
	case rng:
	default:
		return nil, fmt.Errorf("subnet %s: weavewg allocates from its overlay range %s; omit --subnet or give that", r.Pool, rng)
	}
	if r.SubPool != "" && r.SubPool != rng {
		return nil, fmt.Errorf("ip-range %s: weavewg allocates from the whole overlay range %s; omit --ip-range", r.SubPool, rng)
	}
	return requestPoolResponse{PoolID: p.poolID, Pool: pool, Data: map[string]string{}}, nil
}

func (p *Plugin) releasePool(r releasePoolRequest) (any, error) {
	if r.PoolID != p.poolID {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	return struct{}{}, nil
}

func (p *Plugin) requestAddress(r requestAddressRequest) (any, error) {
	if r.PoolID != p.poolID {
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
	addr, err := p.host.Reserve(ctx, id, want)
	if err != nil {
		return nil, err
	}
	p.log.Info("Docker address allocated", "ip", addr.String())
	return requestAddressResponse{Address: addr.String(), Data: map[string]string{}}, nil
}

func (p *Plugin) releaseAddress(r releaseAddressRequest) (any, error) {
	if r.PoolID != p.poolID {
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
