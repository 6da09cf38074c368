package daemon

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"

	"github.com/weavewg/weavewg/kernelwg"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// Kernel WireGuard (--datapath; docs/architecture.md, "Kernel WireGuard:
// the port question, decided"). Package kernelwg's device listens on
// --port and carries the peers the path owner (the tunnel's reach machine)
// says are direct; the tunnel's socket moves to --port+2, where the
// port-sharing table steers STUN, relay frames and probes, and keeps every
// peer for them. Relayed peers stay on wireguard-go. As with the VXLAN fast
// path, which device carries a peer is decided by routes: reconcile hands
// the kernel device its peers after the fast path has taken its own, then
// routes everyone else's prefixes into the TUN, then lets the kernel
// device prune its stale routes.

// Datapath choices (--datapath).
const (
	DatapathAuto      = "auto"
	DatapathKernel    = "kernel"
	DatapathUserspace = "userspace"
)

// datapathKernel is the status word of a peer the kernel device carries.
const datapathKernel = "kernel wireguard"

// kernelPath is what the daemon uses of kernelwg.Plane.
type kernelPath interface {
	Close() error
	Name() string
	SetHostIP(a netip.Addr)
	SetPeers(peers []kernelwg.Peer) (map[key.Public]bool, error)
	PruneRoutes() error
	Stats() map[key.Public]kernelwg.PeerStats
	// Steered is the endpoints whose datagrams reach the kernel socket
	// (the steering sets as last written).
	Steered() []netip.AddrPort
}

var _ kernelPath = (*kernelwg.Plane)(nil)

// kernelDeviceName is the kernel WireGuard device of the TUN iface: "kw"
// before it, cut to the 15 characters an interface name may have.
func kernelDeviceName(iface string) string {
	n := "kw" + iface
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// openKernel makes the kernel WireGuard device unless --datapath is
// userspace. With auto, a kernel that refuses the device means userspace,
// said once in the log and in status; with kernel, it is an error.
func (d *Daemon) openKernel() (kernelPath, error) {
	if d.cfg.Datapath == DatapathUserspace {
		d.datapathWhy = "--datapath userspace"
		return nil, nil
	}
	if d.cfg.Port > 65533 {
		if d.cfg.Datapath == DatapathKernel {
			return nil, fmt.Errorf("--datapath kernel: the userspace socket moves to --port+2, and --port is %d", d.cfg.Port)
		}
		d.datapathWhy = "--port leaves no room for the userspace socket at --port+2"
		return nil, nil
	}
	p, err := kernelwg.New(kernelwg.Config{
		Name:       kernelDeviceName(d.cfg.Iface),
		Port:       d.cfg.Port,
		SharedPort: d.cfg.Port + 2,
		MTU:        d.cfg.MTU,
		Private:    d.priv,
		PSK:        d.secret,
		HostIP:     d.hostPrefix().Addr(), // invalid on a joiner's first start: setKernelPeers sets it
		Logger:     d.log.With("part", "kernelwg"),
	})
	switch {
	case err == nil:
		return p, nil
	case d.cfg.Datapath == DatapathKernel:
		return nil, fmt.Errorf("--datapath kernel: %w", err)
	case errors.Is(err, kernelwg.ErrUnsupported):
		d.datapathWhy = "the kernel has no WireGuard"
		d.log.Info("kernel WireGuard is not available; using userspace WireGuard (wireguard-go)", "err", err)
	default:
		d.datapathWhy = "kernel WireGuard failed: " + err.Error()
		d.log.Warn("kernel WireGuard failed; using userspace WireGuard (wireguard-go)", "err", err)
	}
	return nil, nil
}

// tunnelPort is the userspace socket's port: --port, or --port+2 beside
// the kernel device.
func (d *Daemon) tunnelPort(kernel kernelPath) uint16 {
	if kernel != nil {
		return d.cfg.Port + 2
	}
	return d.cfg.Port
}

// setKernelPeers gives the kernel device every peer in want that the
// fast path does not carry and whose path is direct, at the endpoint the
// path owner chose, with the path MTU the tunnel found towards it on its
// routes, and returns those it carries. A peer whose probes say it sends
// to us through its relay (the two sides disagree: its direct probes
// failed where ours did not, or it moved a probe round before us) stays
// on wireguard-go: its relayed datagrams arrive at the userspace socket,
// and a session it made with the kernel device could not be read there. A peer's move is then
// told to the tunnel (Elsewhere), so that wireguard-go stops keeping it
// alive; a peer that left the device gets a new handshake from
// wireguard-go.
func (d *Daemon) setKernelPeers(want []tunnel.PeerConfig, onVXLAN map[key.Public]bool) map[key.Public]bool {
	if d.planes.kernel == nil {
		return nil
	}
	stats := d.tun.PeerStats()
	mtus := d.tun.PeerMTUs()
	var cands []kernelwg.Peer
	for _, pc := range want {
		s, ok := stats[pc.Key]
		if onVXLAN[pc.Key] || !ok || s.Relayed || s.PeerRelays || !s.Endpoint.IsValid() {
			continue
		}
		cands = append(cands, kernelwg.Peer{Key: pc.Key, Endpoint: s.Endpoint, Prefixes: pc.AllowedIPs, PSK: pc.PSK,
			MTU: mtus[pc.Key].MTU})
	}
	// The routes' source: the host's address, which a first join gets
	// from IPAM after the device was made.
	d.planes.kernel.SetHostIP(d.hostPrefix().Addr())
	on, err := d.planes.kernel.SetPeers(cands)
	if err != nil {
		d.log.Error("configuring kernel WireGuard peers", "err", err)
	}
	// Before wireguard-go gets peers back (Rehandshake below): its
	// initiations to the kernel's peers could never complete, and they
	// keep those peers' kernels from handshaking with ours
	// (tunnel/kernelpeers.go). The endpoints the steering sets hold, not
	// those of the peers on the device: after a failed write of the sets
	// the two differ, and an endpoint not in the sets is answered to
	// wireguard-go, whose initiations there must go out.
	d.tun.SetKernelEndpoints(d.planes.kernel.Steered())
	d.markKernelActive(on)
	if !maps.Equal(on, d.onKernel) {
		left := map[key.Public]bool{}
		for i := range want {
			k := want[i].Key
			want[i].Elsewhere = on[k]
			if d.onKernel[k] && !on[k] {
				left[k] = true
			}
		}
		d.onKernel = on
		d.kernelPeers.Store(&on)
		if err := d.tun.SetPeers(want); err != nil {
			d.log.Error("configuring WireGuard peers", "err", err)
		}
		// A peer back on wireguard-go holds the session it made with the
		// kernel device, which wireguard-go cannot read: what it sends is
		// dropped until one side handshakes. It would, 15 s after hearing
		// nothing back, or we when we next send; with nothing to send
		// (the receiving end of a stream) that is a 15 s stall. So
		// wireguard-go handshakes at once, as the kernel does for a peer
		// that joins its device.
		if len(left) > 0 {
			d.tun.Rehandshake(left)
		}
	}
	return on
}

// markKernelActive tells the path owner which peers on the kernel device
// carried data since the last reconcile (their bytes grew). wireguard-go
// sees none of their packets, so their pairs would otherwise go idle
// (tunnel/idle.go) a minute after they moved: no more path probes, so a
// direct path that fails would never be noticed (between two kernel
// hosts) and the peer would stay on the kernel device, sending into the
// void. Bytes grow only with data and what data causes (handshakes,
// WireGuard's passive keepalives), so an unused pair still goes idle.
func (d *Daemon) markKernelActive(on map[key.Public]bool) {
	if len(on) == 0 {
		d.kernelBytes = nil
		return
	}
	stats := d.planes.kernel.Stats()
	active := map[key.Public]bool{}
	seen := make(map[key.Public]uint64, len(stats))
	for k, s := range stats {
		n := s.RxBytes + s.TxBytes
		seen[k] = n
		if old, ok := d.kernelBytes[k]; on[k] && n > old || on[k] && !ok && n > 0 {
			active[k] = true
		}
	}
	d.kernelBytes = seen
	if len(active) > 0 {
		d.tun.MarkActive(active)
	}
}

// markElsewhere flags the peers the kernel device carried at the last
// reconcile, before the tunnel is given them.
func (d *Daemon) markElsewhere(want []tunnel.PeerConfig) {
	for i := range want {
		want[i].Elsewhere = d.onKernel[want[i].Key]
	}
}

// onKernelNow is the set of peers the kernel device carried at the last
// reconcile (safe outside the reconcile loop).
func (d *Daemon) onKernelNow() map[key.Public]bool {
	if p := d.kernelPeers.Load(); p != nil {
		return *p
	}
	return nil
}

// pruneKernel removes the kernel device's routes of peers gone to the TUN.
func (d *Daemon) pruneKernel() {
	if d.planes.kernel == nil {
		return
	}
	if err := d.planes.kernel.PruneRoutes(); err != nil {
		d.log.Error("removing kernel WireGuard routes", "err", err)
	}
}

// datapathStatus is what status says about the datapath in use.
func (d *Daemon) datapathStatus() string {
	if k := d.planes.kernel; k != nil {
		return fmt.Sprintf("%s (device %s, UDP %d) for direct peers; userspace wireguard (wireguard-go, UDP %d steered behind %d) for relayed ones",
			datapathKernel, k.Name(), d.cfg.Port, d.cfg.Port+2, d.cfg.Port)
	}
	if d.datapathWhy != "" {
		return datapathUserspace + " (wireguard-go; " + d.datapathWhy + ")"
	}
	return datapathUserspace + " (wireguard-go)"
}

// addKernel fills row from the kernel device when it carries the peer.
func addKernel(row *api.Connection, s kernelwg.PeerStats) {
	row.Datapath = datapathKernel
	row.Direct, row.Via = true, ""
	if s.Endpoint.IsValid() {
		row.Endpoint = s.Endpoint.String()
	}
	row.LastHandshake = nil
	if !s.LastHandshake.IsZero() {
		t := s.LastHandshake.UTC().Truncate(1e9)
		row.LastHandshake = &t
	}
	row.RxBytes, row.TxBytes = s.RxBytes, s.TxBytes
}
