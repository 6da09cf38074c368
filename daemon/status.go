package daemon

import (
	"maps"
	"net/netip"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/kernelwg"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
	"github.com/weavewg/weavewg/vxlan"
)

// encryption is what status says about the data path's cryptography.
const encryption = "WireGuard (Noise IK, Curve25519, ChaCha20-Poly1305) with the network secret as preshared key"

func (d *Daemon) status() api.Status {
	peers := d.router.Peers()
	conns := d.router.Connections()
	wg := d.tun.PeerStats()
	var fast map[key.Public]vxlan.PeerStats
	if d.planes.fast != nil {
		fast = d.planes.fast.Stats()
	}
	var kernel map[key.Public]kernelwg.PeerStats
	if d.planes.kernel != nil {
		kernel = d.planes.kernel.Stats()
	}
	dp := func(row *api.Connection, k key.Public) {
		if s, ok := kernel[k]; ok && d.onKernelNow()[k] {
			addKernel(row, s)
		}
		d.addDatapath(row, k, fast)
	}

	st := api.Status{
		Version:       d.cfg.Build.Version,
		Build:         d.cfg.Build,
		Network:       discovery.IDOf(d.secret).String(),
		Name:          d.pub.Name(),
		Nickname:      d.cfg.Nickname,
		PublicKey:     d.pub.String(),
		Encryption:    d.encryption(),
		Datapath:      d.datapathStatus(),
		Port:          int(d.cfg.Port),
		HostIP:        hostIPString(d.hostPrefix()),
		HostIPFrom:    d.hostIPFrom(),
		DefaultSubnet: d.defaultSubnet().String(),
		Exposed:       d.exposures(),
		Range:         d.cfg.Range.String(),
		Interface:     d.cfg.Iface,
		Bridge:        d.cfg.Bridge,
		MTU:           d.cfg.MTU,
		MTUFrom:       d.mtuFrom,
		Peers:         []api.Peer{},
		Conns:         []api.Connection{},
		Attached:      []api.Attachment{},
		Counters:      d.counters(),
		DNS:           d.dnsStatus(false),
		IPAM:          d.ipamStatus(),
		Evicted:       []api.Evicted{},
	}
	if d.members != nil {
		st.Evicted = d.evictedList()
	}
	st.Secret = d.secretStatus()

	nick := map[key.Public]string{}
	for _, p := range peers {
		nick[p.Key] = p.Nickname
	}
	refused := *d.refusedHostIPs.Load()
	groups := map[key.Public][]netip.Addr{}
	if d.mcast != nil {
		var local []netip.Addr
		local, groups = d.mcast.eng.Groups()
		groups[d.pub] = local
	}
	for _, p := range peers {
		ap := api.Peer{
			Name:      p.Key.Name(),
			Nickname:  p.Nickname,
			PublicKey: p.Key.String(),
			Reachable: p.Reachable || p.Self,
			Self:      p.Self,
			Addresses: []string{},
			Neighbors: []string{},
		}
		if p.HostIP.IsValid() {
			ap.HostIP = p.HostIP.String()
			ap.HostIPRefused = refused[p.Key]
		}
		for _, a := range p.Attached {
			ap.Addresses = append(ap.Addresses, a.String())
		}
		for _, n := range p.Neighbors {
			ap.Neighbors = append(ap.Neighbors, n.Name())
		}
		for _, g := range groups[p.Key] {
			ap.MulticastGroups = append(ap.MulticastGroups, g.String())
		}
		st.Peers = append(st.Peers, ap)
	}

	// One row per control connection or target; WireGuard figures are added
	// to the row of the peer they belong to, and peers reached only through
	// gossip (no control connection of ours) get a row of their own.
	covered := map[key.Public]bool{}
	for _, c := range conns {
		row := api.Connection{Address: c.Addr, Outbound: c.Outbound, State: c.State, Error: c.Err}
		if !c.Peer.IsZero() {
			row.Peer, row.Nickname = c.Peer.Name(), c.Nickname
			if c.State == discovery.StateEstablished && !covered[c.Peer] {
				covered[c.Peer] = true
				addWireGuard(&row, wg[c.Peer], nick)
				dp(&row, c.Peer)
			}
		}
		st.Conns = append(st.Conns, row)
	}
	for _, p := range peers {
		if p.Self || covered[p.Key] {
			continue
		}
		s, ok := wg[p.Key]
		if !ok {
			continue
		}
		row := api.Connection{Peer: p.Key.Name(), Nickname: p.Nickname, State: discovery.StateConnecting}
		if p.Endpoint.IsValid() {
			row.Address = p.Endpoint.String()
		}
		if !s.LastHandshake.IsZero() {
			row.State = discovery.StateEstablished
		}
		addWireGuard(&row, s, nick)
		dp(&row, p.Key)
		st.Conns = append(st.Conns, row)
	}

	d.addNATStatus(&st)
	st.Attached = d.ps()
	return st
}

func addWireGuard(row *api.Connection, s tunnel.PeerStats, nick map[key.Public]string) {
	switch {
	case s.Relayed:
		row.Via = nick[s.Via]
		if row.Via == "" && !s.Via.IsZero() {
			row.Via = s.Via.Name()
		}
		row.Endpoint = "relayed"
	case s.Endpoint.IsValid():
		row.Endpoint = s.Endpoint.String()
		row.Direct = true
	}
	if s.RTT > 0 {
		row.RTTMillis = float64(s.RTT.Microseconds()) / 1000
	}
	if !s.LastHandshake.IsZero() {
		t := s.LastHandshake.UTC().Truncate(time.Second)
		row.LastHandshake = &t
	}
	row.RxBytes, row.TxBytes = s.RxBytes, s.TxBytes
	row.PathWhy = s.Why
	if s.From != reach.SourceNone {
		row.EndpointFrom = s.From.String()
	}
	row.MTU, row.MTUSource, row.MTUProbed = s.MTU, string(s.MTUSource), s.MTUProbed
}

// counters merges the parts' counters; their names are distinct by prefix
// (control_, gossip_, udp_).
func (d *Daemon) counters() map[string]uint64 {
	out := map[string]uint64{}
	maps.Copy(out, d.router.Counters())
	maps.Copy(out, d.tun.Counters())
	maps.Copy(out, d.ipam.Status().Counters)
	if d.dns != nil {
		maps.Copy(out, d.dns.Counters())
	}
	if d.nat != nil {
		maps.Copy(out, d.nat.Counters())
	}
	if d.planes.fast != nil {
		maps.Copy(out, d.planes.fast.Counters())
	}
	if d.mcast != nil {
		maps.Copy(out, d.mcast.counters())
	}
	return out
}
