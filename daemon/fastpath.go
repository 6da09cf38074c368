package daemon

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
	"github.com/weavewg/weavewg/vxlan"
)

// The trusted fast path (--trusted-subnets): package vxlan carries the
// packets of peers whose underlay addresses, and this host's, lie in
// trusted subnets, while their VXLAN path answers probes. WireGuard keeps
// every peer configured all the while; which one carries a peer's packets is
// decided by the routes alone: reconcile hands vxlan its candidates first
// (it routes the prefixes of those it carries into its device, replacing
// their TUN routes), then routes everyone else's into the TUN, then lets
// vxlan prune its stale routes, so no prefix is ever without a route.

// fastPath is what the daemon uses of vxlan.Plane.
type fastPath interface {
	Close() error
	SetPeers(peers []vxlan.Peer) (map[key.Public]bool, error)
	PruneRoutes() error
	Stats() map[key.Public]vxlan.PeerStats
	Counters() map[string]uint64
}

var _ fastPath = (*vxlan.Plane)(nil)

// Status words for the datapath carrying a peer's packets.
const (
	datapathVXLAN     = "vxlan (trusted)"
	datapathUserspace = "userspace wireguard"
)

// vxlanDeviceName is the VXLAN device of the TUN iface: "vx" before it,
// cut to the 15 characters an interface name may have.
func vxlanDeviceName(iface string) string {
	n := "vx" + iface
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// encryption is what status says about the data path's cryptography: with
// trusted subnets, that some pairs have none.
func (d *Daemon) encryption() string {
	if len(d.cfg.TrustedSubnets) == 0 {
		return encryption
	}
	var nets []string
	for _, p := range d.cfg.TrustedSubnets {
		nets = append(nets, p.String())
	}
	return fmt.Sprintf("%s; NONE between peers whose underlay addresses both lie in the trusted subnets %s (kernel VXLAN on UDP %d)",
		encryption, strings.Join(nets, ","), d.cfg.Port+1)
}

// fastDevices names the fast path's device when there is one, for the
// host's forward policy to be passed for it.
func (d *Daemon) fastDevices() []string {
	if len(d.cfg.TrustedSubnets) == 0 {
		return nil
	}
	return []string{vxlanDeviceName(d.cfg.Iface)}
}

// openFastPath makes the VXLAN device when --trusted-subnets is given; nil
// otherwise.
func (d *Daemon) openFastPath() (fastPath, error) {
	if len(d.cfg.TrustedSubnets) == 0 {
		return nil, nil
	}
	if d.cfg.Port == 65535 {
		return nil, fmt.Errorf("--trusted-subnets: the VXLAN port is --port+1, and --port is 65535")
	}
	p, err := vxlan.New(vxlan.Config{
		Name:     vxlanDeviceName(d.cfg.Iface),
		Port:     d.cfg.Port + 1,
		VNI:      vxlan.VNIOf(d.secret),
		MTU:      d.cfg.MTU,
		Self:     d.pub,
		Secret:   d.secret,
		Trusted:  vxlan.Trusted(d.cfg.TrustedSubnets),
		HostIP:   d.hostPrefix().Addr(),
		OnChange: d.nudge,
		Logger:   d.log.With("part", "vxlan"),
	})
	if err != nil {
		return nil, fmt.Errorf("trusted fast path: %w", err)
	}
	return p, nil
}

// setFastPeers gives the fast path every reachable peer with an underlay
// address and a host address of its own, and returns those it carries.
func (d *Daemon) setFastPeers(want []tunnel.PeerConfig, peers []discovery.Peer, conflicts map[key.Public]string) map[key.Public]bool {
	if d.planes.fast == nil {
		return nil
	}
	hostIP := map[key.Public]netip.Addr{}
	for _, p := range peers {
		hostIP[p.Key] = p.HostIP
	}
	var cands []vxlan.Peer
	for _, pc := range want {
		if !pc.Endpoint.IsValid() || !hostIP[pc.Key].IsValid() || conflicts[pc.Key] != "" {
			continue
		}
		cands = append(cands, vxlan.Peer{Key: pc.Key, Underlay: pc.Endpoint.Addr(), HostIP: hostIP[pc.Key], Prefixes: pc.AllowedIPs})
	}
	using, err := d.planes.fast.SetPeers(cands)
	if err != nil {
		d.log.Error("configuring the VXLAN fast path", "err", err)
	}
	return using
}

// pruneFast removes the fast path's routes of peers gone back to WireGuard.
func (d *Daemon) pruneFast() {
	if d.planes.fast == nil {
		return
	}
	if err := d.planes.fast.PruneRoutes(); err != nil {
		d.log.Error("removing VXLAN routes", "err", err)
	}
}

// addDatapath says which datapath carries the peer's packets in row.
func (d *Daemon) addDatapath(row *api.Connection, k key.Public, fast map[key.Public]vxlan.PeerStats) {
	if s, ok := fast[k]; ok && s.Using {
		row.Datapath = datapathVXLAN
		row.Endpoint = s.Endpoint.String()
		row.Direct, row.Via = true, ""
		row.EndpointFrom = "" // the VXLAN endpoint is the peer's underlay address, not WireGuard's
		row.PathWhy = "trusted pair, VXLAN probes answered"
		if s.RTT > 0 {
			row.RTTMillis = float64(s.RTT.Microseconds()) / 1000
		}
		return
	}
	if row.Endpoint != "" && row.Datapath == "" {
		row.Datapath = datapathUserspace
	}
}
