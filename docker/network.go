package docker

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/attachment"
)

// The network driver: networks (kept in the plugin's state file) and
// endpoints (attachments of the daemon's attachment service).

func (p *Plugin) createNetwork(r createNetworkRequest) (any, error) {
	if r.NetworkID == "" {
		return nil, errors.New("NetworkID is missing")
	}
	if len(r.IPv6Data) > 0 {
		return nil, errors.New("weavewg networks are IPv4 only (drop --ipv6)")
	}
	if len(r.IPv4Data) == 0 {
		return nil, fmt.Errorf("no IPv4 pool: create the network with --ipam-driver weavewg")
	}
	for _, d := range r.IPv4Data {
		if d.Pool == anyPool || d.Pool == p.host.Range().String() {
			continue
		}
		if sub, err := netip.ParsePrefix(d.Pool); err != nil || p.host.CheckSubnet(sub) != nil {
			return nil, fmt.Errorf("pool %s is not weavewg's: create the network with --ipam-driver weavewg (addresses come from the overlay range %s, or an isolated subnet of it)", d.Pool, p.host.Range())
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.st.Networks[r.NetworkID]; ok {
		return struct{}{}, nil
	}
	for _, d := range r.IPv4Data {
		if sub, err := netip.ParsePrefix(d.Pool); err == nil && p.isolated(sub) {
			if err := p.subnetOverlapLocked(sub, r.NetworkID, true); err != nil {
				return nil, err
			}
		}
	}
	p.st.Networks[r.NetworkID] = network{Pool: r.IPv4Data[0].Pool, Gateway: r.IPv4Data[0].Gateway}
	if err := p.saveLocked(); err != nil {
		delete(p.st.Networks, r.NetworkID)
		return nil, err
	}
	p.log.Info("Docker network created", "network", short(r.NetworkID))
	return struct{}{}, nil
}

func (p *Plugin) deleteNetwork(r networkRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	old := p.st.Networks[r.NetworkID]
	delete(p.st.Networks, r.NetworkID)
	if err := p.saveLocked(); err != nil {
		p.st.Networks[r.NetworkID] = old
		return nil, err
	}
	p.log.Info("Docker network deleted", "network", short(r.NetworkID))
	return struct{}{}, nil
}

func (p *Plugin) knownNetworkLocked(id string) error {
	if id == "" {
		return errors.New("NetworkID is missing")
	}
	if _, ok := p.st.Networks[id]; !ok {
		return fmt.Errorf("network %s is not a weavewg network here", short(id))
	}
	return nil
}

// vethNames are the names of an endpoint's veth pair: "vethwl" (host end)
// and "vethwg" (the end Docker moves into the container) and up to 9
// characters of the endpoint ID, 15 at most.
func vethNames(endpointID string) (host, peer string, err error) {
	if endpointID == "" {
		return "", "", errors.New("EndpointID is missing")
	}
	for _, c := range endpointID {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return "", "", fmt.Errorf("EndpointID %q has characters other than letters and digits", endpointID)
		}
	}
	id := endpointID
	if len(id) > 9 {
		id = id[:9]
	}
	return "vethwl" + id, "vethwg" + id, nil
}

func (p *Plugin) createEndpoint(r createEndpointRequest) (any, error) {
	hostVeth, peerVeth, err := vethNames(r.EndpointID)
	if err != nil {
		return nil, err
	}
	if r.Interface == nil || r.Interface.Address == "" {
		return nil, errors.New("Interface.Address is missing: create the network with --ipam-driver weavewg")
	}
	if r.Interface.AddressIPv6 != "" {
		return nil, errors.New("weavewg networks are IPv4 only")
	}
	addr, err := netip.ParsePrefix(r.Interface.Address)
	if err != nil {
		return nil, fmt.Errorf("Interface.Address %q: %v", r.Interface.Address, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	rec, ok := p.addressLocked(addr.Addr())
	if !ok {
		return nil, fmt.Errorf("address %s was not allocated by weavewg: create the network with --ipam-driver weavewg", addr.Addr())
	}
	if rec.Endpoint != "" {
		return nil, fmt.Errorf("address %s is used by endpoint %s already", addr.Addr(), short(rec.Endpoint))
	}
	for _, other := range p.host.Attachments() {
		if other.Endpoint == r.EndpointID {
			return nil, fmt.Errorf("endpoint %s exists already", short(r.EndpointID))
		}
		if other.HostVeth == hostVeth {
			return nil, fmt.Errorf("endpoint %s's veth name %s is taken by endpoint %s", short(r.EndpointID), hostVeth, short(other.Endpoint))
		}
	}
	// A veth of that name that no endpoint records is left over from a
	// crash between creating it and saving the state.
	p.host.DeleteVeth(hostVeth)
	mac, err := p.host.CreateVeth(hostVeth, peerVeth)
	if err != nil {
		return nil, err
	}
	err = p.host.Update(rec.ID, func(a *attachment.Record) {
		a.Endpoint, a.Network, a.HostVeth, a.PeerVeth, a.IfName = r.EndpointID, r.NetworkID, hostVeth, peerVeth, ContainerIfPrefix+"0"
	})
	if err != nil {
		p.host.DeleteVeth(hostVeth)
		return nil, err
	}
	p.log.Info("Docker endpoint created", "endpoint", short(r.EndpointID), "ip", addr.String(), "host_veth", hostVeth)
	res := createEndpointResponse{}
	if r.Interface.MacAddress == "" && mac != nil {
		// Docker sets what it supplied itself; echoing it is an error.
		res.Interface = &endpointInterface{MacAddress: mac.String()}
	}
	return res, nil
}

func (p *Plugin) deleteEndpoint(r endpointRequest) (any, error) {
	if _, _, err := vethNames(r.EndpointID); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.endpointLocked(r.EndpointID)
	if !ok {
		return struct{}{}, nil // gone already: deleting is idempotent
	}
	if ep.Network != r.NetworkID {
		return nil, fmt.Errorf("endpoint %s is on network %s, not %s", short(r.EndpointID), short(ep.Network), short(r.NetworkID))
	}
	p.stopLookupLocked(r.EndpointID)
	if err := p.host.DeleteVeth(ep.HostVeth); err != nil {
		p.log.Warn("removing endpoint veth", "host_veth", ep.HostVeth, "err", err)
	}
	// The address stays the container's until Docker releases it.
	err := p.host.Update(ep.ID, func(a *attachment.Record) {
		*a = attachment.Record{ID: a.ID, Origin: a.Origin, IP: a.IP}
	})
	if err != nil {
		return nil, err
	}
	p.log.Info("Docker endpoint deleted", "endpoint", short(r.EndpointID), "ip", ep.IP)
	return struct{}{}, nil
}

func (p *Plugin) endpointInfo(r endpointRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.endpointLocked(r.EndpointID)
	if !ok {
		return nil, fmt.Errorf("endpoint %q is not known here", r.EndpointID)
	}
	return endpointInfoResponse{Value: map[string]any{"host_veth": ep.HostVeth, "address": ep.IP, "name": ep.Name}}, nil
}

func (p *Plugin) join(r joinRequest) (any, error) {
	if r.SandboxKey == "" {
		return nil, errors.New("SandboxKey is missing")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.endpointLocked(r.EndpointID)
	if !ok || ep.Network != r.NetworkID {
		return nil, fmt.Errorf("endpoint %q is not known on network %s", r.EndpointID, short(r.NetworkID))
	}
	if !ep.Joined || ep.Netns != r.SandboxKey {
		// The sandbox is named by its namespace, as every attachment is.
		dev, ino, _ := attachment.NetnsIdentity(r.SandboxKey)
		err := p.host.Update(ep.ID, func(a *attachment.Record) {
			a.Joined, a.Netns, a.NetnsDev, a.NetnsIno = true, r.SandboxKey, dev, ino
		})
		if err != nil {
			return nil, err
		}
		ep.Joined = true
	}
	p.startLookupLocked(r.EndpointID, ep)
	// No gateway: the overlay is reached through ethwe0's own prefix, and
	// Docker gives the container its usual way out (docker_gwbridge), as
	// with Weave Net. Multicast and the limited broadcast go out of
	// ethwe0 (RouteType 1: connected), not the default route, so they
	// reach the bridge that replicates them to other hosts (package mcast).
	// A container of an isolated subnet reaches its host's DNS (on the
	// host address, outside its subnet) by a route of its own.
	routes := containerLinkRoutes
	if a, ok := ep.Prefix(); ok {
		if h := p.host.HostIP(); h.IsValid() && !a.Masked().Contains(h.Addr()) {
			routes = append(slices.Clone(routes), staticRoute{Destination: netip.PrefixFrom(h.Addr(), 32).String(), RouteType: 1})
		}
	}
	return joinResponse{
		InterfaceName: interfaceName{SrcName: ep.PeerVeth, DstPrefix: ContainerIfPrefix},
		StaticRoutes:  routes,
	}, nil
}

func (p *Plugin) leave(r endpointRequest) (any, error) {
	if _, _, err := vethNames(r.EndpointID); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.endpointLocked(r.EndpointID)
	if !ok {
		return struct{}{}, nil
	}
	p.stopLookupLocked(r.EndpointID)
	if ep.Joined || ep.Name != "" || ep.Netns != "" {
		// Withdrawing the name withdraws it from DNS.
		err := p.host.Update(ep.ID, func(a *attachment.Record) {
			a.Joined, a.Name, a.ContainerID, a.Netns, a.NetnsDev, a.NetnsIno = false, "", "", "", 0, 0
		})
		if err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}

func (p *Plugin) externalConnectivity(r endpointRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// containerLinkRoutes are hostnet.ContainerLinkRoutes as Docker's join
// answer carries them.
var containerLinkRoutes = []staticRoute{
	{Destination: "224.0.0.0/4", RouteType: 1},
	{Destination: "255.255.255.255/32", RouteType: 1},
}
