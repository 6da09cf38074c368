// Package hostnet owns this host's networking around the WireGuard data
// plane: the bridge containers hang off (its address, MAC, MTU, proxy ARP
// and the sysctls forwarding needs), veth pairs and moving their ends into
// network namespaces, the routes that send peers' prefixes into the TUN,
// and the firewall rules weavewg needs (the forward filter).
//
// It knows nothing of WireGuard: the TUN is given to it by name (package
// tunnel makes it). The split follows wireguard-go's tun.Device/conn.Bind
// and Tailscale's wgengine/router: the datapath carries packets, this
// package makes the host route them. Everything is created in the network
// namespace of the thread that calls New; see Host.
package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Config is what a Host needs.
type Config struct {
	Bridge string // bridge name, e.g. weavewg
	TUN    string // the WireGuard TUN's name, e.g. weavewg0; it must exist
	MTU    int    // the bridge's MTU; every veth gets it too
	// HostIP is the bridge's address with the overlay prefix length, e.g.
	// 10.32.0.1/12; invalid while the host has none yet (a joiner before
	// IPAM gave it space: SetHostIP sets it later).
	HostIP netip.Prefix
	// Overlay is the overlay range; invalid means HostIP's prefix.
	Overlay netip.Prefix
	// PeerUDPPorts are UDP ports of the host address that other hosts
	// reach through the peer devices (TUN, VXLAN, kernel WireGuard) while
	// the host is hidden from containers (multicast replication).
	PeerUDPPorts []uint16
	// MACSeed makes the bridge's MAC address, the same on every run (the
	// peer's public key).
	MACSeed []byte
	// OtherDevices carry peers' packets beside the TUN (the VXLAN fast
	// path's device); the host's forward policy is passed for them as for
	// the TUN. They need not exist yet.
	OtherDevices []string
	// The forward filter's state as the daemon's attachments make it
	// (SetSubnets, SetPortSubnets, SetEgress), so that New builds it whole
	// and a relaunch has no moment without isolation or egress.
	Subnets     []netip.Prefix
	PortSubnets map[string]netip.Prefix
	Egress      []netip.Addr
	Logger      *slog.Logger
}

// AttachSpec says which namespace to attach and with which address.
type AttachSpec struct {
	Netns  string       // path of a network namespace
	IP     netip.Prefix // address with the overlay prefix length
	IfName string       // name inside the namespace; "" means ethwe0
	// Routes are on-link routes besides the address's own prefix: the
	// host address (its DNS) for a container of an isolated subnet.
	Routes []netip.Prefix
	// Gateway, if valid, is the namespace's default route (onlink, via
	// this interface): egress through the host (attach --egress).
	Gateway netip.Addr
}

// Attached describes an attachment, enough to adopt it again after a restart.
type Attached struct {
	Netns    string
	IP       netip.Prefix
	IfName   string
	HostVeth string
	MTU      int
}

// ErrClosed is returned by the methods of a closed Host.
var ErrClosed = errors.New("host networking closed")

// routeProtocol marks the routes a Host installs (rtm_protocol), so that
// SetRoutes can tell them from any other route and reconcile exactly its
// own. 0x57 is 'W'; iproute2 prints it as "proto 87".
const routeProtocol netlink.RouteProtocol = 0x57

// Host is the host networking of one weavewg router.
//
// Network namespaces: New creates everything (the bridge, the sysctls, the
// forward filter) in the network namespace of the thread that calls it, and
// remembers that namespace. Every later netlink call goes through a handle
// opened there, so the other methods may be called from any goroutine.
type Host struct {
	// Constant after New.
	cfg      Config
	log      *slog.Logger
	ns       netns.NsHandle  // the namespace New ran in
	nl       *netlink.Handle // netlink in ns
	filtered bool            // the forward filter is installed (filter_linux.go)
	fw       *firewall       // weavewg's rules in the host's forward chains (firewall_linux.go)
	fwStop   chan struct{}   // closed by Close: stops the firewall watcher
	fwDone   chan struct{}   // closed when the watcher has stopped
	tunIndex int
	brIndex  int

	// mu guards what follows and serialises every change to the bridge's
	// ports and the routes.
	mu      sync.Mutex
	closed  bool
	skipped string       // prefixes last refused a route, to log a change once
	hostIP  netip.Prefix // the bridge's address (SetHostIP); invalid: none yet
	spec    filterSpec   // what the forward filter is made for (expose_linux.go)
	// otherIdx: the indexes the forward filter matches the other peer
	// devices by (those that existed when it was made; linkwatch_linux.go).
	otherIdx map[string]uint32
}

// New creates (or re-adopts) the bridge with HostIP, sets the sysctls
// forwarding between the bridge and the TUN needs, installs the forward
// filter, puts weavewg's rules into the host's forward chains and starts
// the watcher that keeps them there. The TUN must exist already.
//
// It works in the network namespace of the calling thread, like tunnel.New.
func New(cfg Config) (*Host, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	h := &Host{cfg: cfg, log: cfg.Logger, ns: netns.None()}
	ok := false
	defer func() {
		if !ok {
			h.teardown()
		}
	}()
	var err error
	if h.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("host networking: reading the network namespace: %w", err)
	}
	if h.nl, err = netlink.NewHandleAt(h.ns, unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("host networking: opening netlink: %w", err)
	}
	tun, err := h.nl.LinkByName(cfg.TUN)
	if err != nil {
		return nil, fmt.Errorf("host networking: TUN %s: %w", cfg.TUN, err)
	}
	h.tunIndex = tun.Attrs().Index
	h.hostIP = cfg.HostIP
	br, err := setupBridge(h.nl, cfg.Bridge, cfg.MTU, cfg.HostIP, cfg.MACSeed)
	if err != nil {
		return nil, fmt.Errorf("host networking: %w", err)
	}
	h.brIndex = br.Attrs().Index
	if err := setupBridgeMulticast(h.ns, h.brIndex); err != nil {
		return nil, fmt.Errorf("host networking: bridge %s: multicast snooping: %w", cfg.Bridge, err)
	}
	if err := setSysctls(cfg.Bridge, cfg.TUN); err != nil {
		return nil, fmt.Errorf("host networking: %w", err)
	}
	spec := filterSpec{bridge: cfg.Bridge, tun: cfg.TUN, others: cfg.OtherDevices, overlay: cfg.Overlay, hostIP: cfg.HostIP.Addr(), peerUDP: cfg.PeerUDPPorts,
		subnets: sortedSubnets(cfg.Subnets), ports: maps.Clone(cfg.PortSubnets), egress: sortedAddrs(cfg.Egress)}
	h.spec = spec
	if h.otherIdx, err = installForwardFilter(h.ns, spec); err != nil {
		return nil, fmt.Errorf("host networking: %w", err)
	}
	h.filtered = true
	h.fw = newFirewall(h.ns, cfg.Bridge, cfg.TUN, cfg.OtherDevices, h.log)
	h.fw.setFilter(spec)
	if repaired, err := h.fw.ensure(); err != nil {
		// Not fatal: the watcher retries, and a host whose forward policy
		// accepts works without the rules.
		h.log.Error("passing the host's forward policy", "err", err)
	} else if len(repaired) > 0 {
		h.log.Info("firewall rules added", "where", strings.Join(repaired, ", "))
	}
	h.fwStop, h.fwDone = make(chan struct{}), make(chan struct{})
	go h.fw.watch(h.fwStop, h.fwDone)
	ok = true
	h.log.Info("host networking up", "bridge", cfg.Bridge, "tun", cfg.TUN, "host_ip", cfg.HostIP.String(), "mtu", cfg.MTU)
	return h, nil
}

func (c *Config) check() error {
	switch {
	case c.TUN == "" || len(c.TUN) > maxIfNameLen:
		return fmt.Errorf("host networking: TUN name %q must have 1 to %d characters", c.TUN, maxIfNameLen)
	case c.Bridge == "" || len(c.Bridge) > maxIfNameLen:
		return fmt.Errorf("host networking: bridge name %q must have 1 to %d characters", c.Bridge, maxIfNameLen)
	case c.Bridge == c.TUN:
		return fmt.Errorf("host networking: the TUN and the bridge are both named %q", c.TUN)
	case c.MTU < 576 || c.MTU > 65535:
		return fmt.Errorf("host networking: MTU %d is out of range", c.MTU)
	}
	if !c.Overlay.IsValid() {
		c.Overlay = c.HostIP.Masked()
	}
	switch {
	case !c.Overlay.IsValid() || !c.Overlay.Addr().Is4():
		return fmt.Errorf("host networking: overlay range %v is not an IPv4 prefix", c.Overlay)
	case c.HostIP.IsValid() && (!c.HostIP.Addr().Is4() || !c.Overlay.Contains(c.HostIP.Addr())):
		return fmt.Errorf("host networking: host address %v is not an IPv4 address inside %v", c.HostIP, c.Overlay)
	}
	return nil
}

// Close removes the routes, the bridge, weavewg's firewall rules and the
// forward filter: weavewg leaves the host (reset). Attached
// namespaces keep their veth pairs (off the bridge), so that the next run
// can Adopt them.
func (h *Host) Close() error { return h.close(false) }

// CloseKeepingBridge is Close for a daemon stop or upgrade (SIGTERM): the
// routes go (with the TUN), but the bridge with its address and its ports,
// weavewg's forward rules and the forward filter stay, so the containers
// on this host keep reaching each other while no daemon runs, as Weave
// Net's did; the next New adopts them all in place. The rules that name
// the TUN match nothing while it is gone. Why the rules stay:
// docs/architecture.md, "Stop, upgrade and reset".
func (h *Host) CloseKeepingBridge() error { return h.close(true) }

func (h *Host) close(keep bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	if h.fwStop != nil {
		close(h.fwStop)
		<-h.fwDone
	}
	if keep {
		return h.release()
	}
	return h.teardown()
}

// release lets go of the host's networking, leaving it in place.
func (h *Host) release() error {
	var err error
	if h.nl != nil && h.tunIndex != 0 {
		if _, err = h.syncRoutes(nil); isGone(err) {
			err = nil
		}
	}
	h.nl.Close()
	h.ns.Close()
	h.log.Info("host networking stopped; the bridge, its ports and weavewg's forward rules stay for local traffic", "bridge", h.cfg.Bridge)
	return err
}

// teardown releases whatever New made; it copes with a half-made Host.
func (h *Host) teardown() error {
	var errs []error
	if h.nl != nil && h.tunIndex != 0 {
		if _, err := h.syncRoutes(nil); err != nil && !isGone(err) {
			errs = append(errs, err)
		}
	}
	if h.nl != nil && h.brIndex != 0 {
		if l, err := h.nl.LinkByIndex(h.brIndex); err == nil {
			if err := h.nl.LinkDel(l); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("host networking: deleting bridge %s: %w", h.cfg.Bridge, err))
			}
		}
	}
	if h.fw != nil {
		if err := h.fw.remove(); err != nil {
			errs = append(errs, fmt.Errorf("host networking: %w", err))
		}
	}
	if h.filtered {
		if err := removeForwardFilter(h.ns, h.cfg.TUN); err != nil {
			errs = append(errs, fmt.Errorf("host networking: %w", err))
		}
	}
	if h.nl != nil {
		h.nl.Close()
	}
	if h.ns.IsOpen() {
		h.ns.Close()
	}
	return errors.Join(errs...)
}

// SetRoutes makes the routes into the TUN (dev TUN, src HostIP) exactly
// those of prefixes that lie strictly inside the overlay prefix; any other
// prefix (one that would cover the bridge's own subnet, or lies outside the
// overlay) gets no route, and is logged once. It reads the routes back every
// time, so a route lost behind its back (the TUN went down and up, someone
// ran ip route del) comes back on the next call.
func (h *Host) SetRoutes(prefixes []netip.Prefix) error {
	return h.SetRoutesWithMTU(prefixes, nil)
}

// SetRoutesWithMTU is SetRoutes where the prefixes in mtu get a route MTU
// of their own (a peer behind a smaller path; tunnel/mtu.go), so that the
// kernel answers a container's too-large DF packet with ICMP
// "fragmentation needed", and the MSS clamp (pmtu.AddMSSClamp) reads it.
func (h *Host) SetRoutesWithMTU(prefixes []netip.Prefix, mtu map[netip.Prefix]int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("set routes: %w", ErrClosed)
	}
	routes, skipped := h.routesFor(prefixes, mtu)
	if skipped != h.skipped {
		h.skipped = skipped
		if skipped != "" {
			h.log.Warn("not routing peer prefixes that are not inside the overlay prefix", "overlay", h.cfg.Overlay.String(), "prefixes", skipped)
		}
	}
	_, err := h.syncRoutes(routes)
	return err
}

// routesFor returns the prefixes to route into the TUN, each with its MTU
// from mtu (0: the TUN's), and the refused ones as text.
func (h *Host) routesFor(prefixes []netip.Prefix, mtu map[netip.Prefix]int) (map[netip.Prefix]int, string) {
	overlay := h.cfg.Overlay
	routes := make(map[netip.Prefix]int)
	var skipped []string
	for _, pfx := range prefixes {
		if !pfx.IsValid() {
			continue
		}
		m := mtu[pfx]
		pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()).Masked()
		if pfx.Addr().Is4() && pfx.Bits() > overlay.Bits() && overlay.Contains(pfx.Addr()) {
			routes[pfx] = m
		} else {
			skipped = append(skipped, pfx.String())
		}
	}
	slices.Sort(skipped)
	return routes, strings.Join(slices.Compact(skipped), ",")
}

// syncRoutes makes the routes into the TUN that carry routeProtocol exactly
// want, each with its MTU (0: none of its own). It reports how many routes
// it changed.
func (h *Host) syncRoutes(want map[netip.Prefix]int) (int, error) {
	filter := &netlink.Route{LinkIndex: h.tunIndex, Table: unix.RT_TABLE_MAIN, Protocol: routeProtocol}
	have, err := h.nl.RouteListFiltered(netlink.FAMILY_ALL, filter,
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0, fmt.Errorf("routes: listing routes of %s: %w", h.cfg.TUN, err)
	}
	var (
		errs    []error
		changed int
		present = make(map[netip.Prefix]bool, len(have))
	)
	for _, r := range have {
		pfx, ok := ipNetToPrefix(r.Dst)
		if m, wanted := want[pfx]; ok && wanted && r.MTU == m && srcIs(r, h.hostIP.Addr()) {
			present[pfx] = true
			continue
		}
		if err := h.nl.RouteDel(&r); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("routes: deleting %v dev %s: %w", r.Dst, h.cfg.TUN, err))
			continue
		}
		changed++
	}
	for pfx := range want {
		if present[pfx] {
			continue
		}
		r := tunRoute(h.tunIndex, pfx, h.hostIP.Addr())
		r.Protocol = routeProtocol
		if m := want[pfx]; m > 0 {
			r.MTU = m
			r.AdvMSS = m - 40 // IPv4 + TCP headers, for the host's own sockets
		}
		if err := h.nl.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("routes: adding %s dev %s: %w", pfx, h.cfg.TUN, err))
			continue
		}
		changed++
	}
	return changed, errors.Join(errs...)
}
