package daemon

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/nat"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// natChannel is the gossip channel ICE credentials and candidates travel on.
const natChannel = "nat"

// openNAT makes the NAT traversal manager over the shared UDP socket (the
// STUN datagrams its Bind sorts out, and sending from it) and registers its
// gossip channel; it must run before the control plane starts. Only the
// tests assemble a daemon without a socket (nil), and so without NAT
// traversal.
func (d *Daemon) openNAT(sp sharedSocket, open channelOpener) error {
	if sp == nil {
		return nil
	}
	port := d.cfg.Port
	if port == 0 {
		port = DefaultPort
	}
	var ch gossipChannel
	m, err := nat.New(nat.Config{
		Self:      d.pub,
		Port:      port,
		Send:      sp.SendUDP,
		Signal:    func(to key.Public, msg []byte) error { return ch.Send(to, msg) },
		HostAddrs: d.underlayAddrs,
		OnChange:  d.nudge,
		Logger:    d.log.With("part", "nat"),
	})
	if err != nil {
		return err
	}
	if ch, err = open(natChannel, m.HandleSignal); err != nil {
		m.Close()
		return err
	}
	sp.SetSTUNHandler(m.HandleSTUN)
	// The path owner tells NAT traversal which peers it relays, as they
	// change: those are the ones ICE works on.
	var kernelSeen kernelPaths
	d.tun.SetPathObserver(func(paths map[key.Public]reach.Path) {
		relayed := make(map[key.Public]bool, len(paths))
		idle := make(map[key.Public]bool)
		held := make(map[key.Public]bool)
		for k, p := range paths {
			relayed[k] = p.Relayed
			if p.Idle {
				idle[k] = true
			}
			if p.Hold {
				held[k] = true
			}
		}
		m.SetIdle(idle)
		m.SetHeld(held)
		m.SetRelayed(relayed)
		if d.planes.kernel != nil && kernelSeen.changed(paths) {
			d.nudge()
		}
	})
	m.Start()
	d.nat = m
	return nil
}

// kernelPaths is what the kernel device was last given of the paths: the
// direct peers (both ways: PeerRelays keeps one off the device) and their
// endpoints. A peer moving between direct and
// relayed moves between the kernel device and the TUN (kernel.go), and a
// direct peer whose endpoint moved (its NAT's mapping changed: the kernel
// does not roam it, the probes found it) must be given to the device
// there; either way reconcile runs at once, not at the next tick.
type kernelPaths map[key.Public]netip.AddrPort

// changed records paths and says whether the kernel device's share of
// them differs from the last.
func (k *kernelPaths) changed(paths map[key.Public]reach.Path) bool {
	direct := make(kernelPaths, len(paths))
	for p, path := range paths {
		if !path.Relayed && !path.PeerRelays {
			direct[p] = path.Endpoint
		}
	}
	if maps.Equal(direct, *k) {
		return false
	}
	*k = direct
	return true
}

func (d *Daemon) closeNAT() error {
	if d.nat != nil {
		d.planes.socket.SetSTUNHandler(nil)
		d.tun.SetPathObserver(nil)
		d.nat.Close()
	}
	return nil
}

// underlayAddrs are this host's IPv4 addresses outside the overlay: the
// ICE host candidates. The TUN and the bridge are skipped, as is anything
// in the overlay range.
func (d *Daemon) underlayAddrs() []netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || ifc.Name == d.cfg.Iface || ifc.Name == d.cfg.Bridge {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if !ip.Is4() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || d.cfg.Range.Contains(ip) {
				continue
			}
			out = append(out, ip)
		}
	}
	return out
}

// natPeers tells the manager the reachable peers (called by reconcile).
func (d *Daemon) natPeers(peers []discovery.Peer) {
	if d.nat == nil {
		return
	}
	infos := make([]nat.PeerInfo, 0, len(peers))
	for _, p := range peers {
		if p.Self || !p.Reachable {
			continue
		}
		infos = append(infos, nat.PeerInfo{Key: p.Key, Endpoint: p.Endpoint, Direct: p.Direct})
	}
	d.nat.SetPeers(infos)
}

// natICE is the address ICE selected for peer k; invalid if none.
func (d *Daemon) natICE(k key.Public) netip.AddrPort {
	if d.nat == nil {
		return netip.AddrPort{}
	}
	return d.nat.Endpoints()[k]
}

// natReflexive is where STUN saw peer k, as it told us; invalid if it did
// not.
func (d *Daemon) natReflexive(k key.Public) netip.AddrPort {
	if d.nat == nil {
		return netip.AddrPort{}
	}
	return d.nat.Reflexive()[k]
}

// knownPublic reports whether STUN through other peers showed this host
// to have a public address (no NAT).
func (d *Daemon) knownPublic() bool {
	return d.nat != nil && d.nat.Status().Behaviour.Public
}

// natMappedAddrs are the addresses STUN through other peers showed this host
// at: its NAT's WAN addresses (the tunnel ignores ICMP from those about peers
// behind the same NAT).
func (d *Daemon) natMappedAddrs() []netip.Addr {
	if d.nat == nil {
		return nil
	}
	var out []netip.Addr
	for _, m := range d.nat.Status().Behaviour.Mappings {
		if a := m.Mapped.Addr().Unmap(); a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// addNATStatus adds the ICE state per peer and the observed NAT behaviour
// to st.
func (d *Daemon) addNATStatus(st *api.Status) {
	if d.nat == nil {
		return
	}
	ns := d.nat.Status()
	byName := make(map[string]nat.PeerStatus, len(ns.Peers))
	for _, p := range ns.Peers {
		byName[p.Peer.Name()] = p
	}
	for i := range st.Conns {
		c := &st.Conns[i]
		p, ok := byName[c.Peer]
		if !ok || p.State == "idle" {
			continue
		}
		c.ICE = p.State
		if p.State == "connected" {
			c.Candidate, c.LocalCandidate = p.RemoteType, p.LocalType
			c.ICEMillis = float64(p.TookFor.Microseconds()) / 1000
			c.ICEEndpoint = p.Endpoint.String()
		}
	}
	b := ns.Behaviour
	out := &api.NATStatus{Mapping: "unknown", Mappings: []api.NATMapping{}}
	for _, m := range b.Mappings {
		out.Mappings = append(out.Mappings, api.NATMapping{Server: m.Server.String(), Mapped: m.Mapped.String()})
	}
	switch {
	case len(b.Mappings) == 0:
	case b.Public:
		out.Mapping = "none (public address)"
	case b.VariesPerDestination:
		out.Mapping = "varies per destination"
	case len(b.Mappings) >= 2:
		out.Mapping = "same for every destination"
	default:
		out.Mapping = "unknown (one STUN server answered)"
	}
	out.Public = b.Public
	out.VariesPerDestination = b.VariesPerDestination
	if len(b.Mappings) > 0 {
		out.PublicAddress = b.Mappings[0].Mapped.String()
		t := b.At.UTC().Truncate(time.Second)
		out.ObservedAt = &t
	}
	st.NAT = out
}
