// Package vxlan owns the unencrypted fast path between peers on trusted
// underlay subnets (--trusted-subnets), as Weave Net's fastdp had: a kernel
// VXLAN device, one FDB and ARP entry per trusted peer, the routes that send
// a peer's overlay prefixes into the device while its path answers, the
// probes that say whether it answers (probe.go, choice.go), and the
// firewall table that confines what the device may carry (filter_linux.go).
//
// The scheme. The device listens on UDP port --port+1 (6784 by default,
// the port Weave Net's fastdp used, so existing firewall rules for Weave
// fit), with a VNI derived from the network secret (VNIOf). Its Ethernet
// address is derived from the host's public key (MACOf), so every host
// knows every peer's without asking. A peer's prefixes are routed "via" its
// overlay host address, onlink, whose permanent ARP entry is the peer's MAC,
// whose FDB entry is the peer's underlay address. WireGuard keeps the peer
// configured all along: switching between the paths changes routes only,
// never addresses, so established flows survive a switch either way.
//
// Trust. VXLAN is neither encrypted nor authenticated; a pair uses it only
// when both underlay addresses lie in trusted subnets, and the input filter
// drops VXLAN datagrams from any source outside them. Everything is created
// in the network namespace of the thread that calls New.
package vxlan

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/internal/ownroutes"
	"github.com/weavewg/weavewg/types/key"
)

// Config is what a Plane needs.
type Config struct {
	Name    string // the VXLAN device, e.g. vxweavewg0
	Port    uint16 // UDP port of the device
	VNI     uint32 // VXLAN network identifier; VNIOf the secret
	MTU     int    // the device's MTU (the overlay's)
	Self    key.Public
	Secret  key.Secret // keys the probe frames
	Trusted Trusted
	// HostIP is the source of routed packets. (That decapsulated traffic
	// is forwarded only to the bridge is the host's forward filter's job:
	// the owner lists the device in hostnet.Config.OtherDevices.)
	HostIP netip.Addr
	// OnChange is called, from the probe loop and without locks held, when
	// a peer moves between VXLAN and WireGuard; the owner then calls
	// SetPeers again to move its routes.
	OnChange func()
	Logger   *slog.Logger
}

// Peer is one candidate peer as the control plane knows it.
type Peer struct {
	Key      key.Public
	Underlay netip.Addr // its underlay address (WireGuard endpoint's)
	HostIP   netip.Addr // its overlay host address: the routes' next hop
	Prefixes []netip.Prefix
}

// PeerStats is the VXLAN view of one peer.
type PeerStats struct {
	Trusted  bool           // both ends lie in trusted subnets
	Using    bool           // its prefixes are routed into the VXLAN device (not only decided)
	Endpoint netip.AddrPort // underlay address and VXLAN port
	RTT      time.Duration  // last probe round trip; 0 none
}

// routeProtocol marks the routes a Plane installs. It is hostnet's too, so
// a route moving between the TUN and the device is one RouteReplace (same
// destination, table and metric), with no moment without a route.
const routeProtocol netlink.RouteProtocol = 0x57

// Counter names.
const (
	CounterProbesSent     = "vxlan_probes_sent"
	CounterProbeReplies   = "vxlan_probe_replies"
	CounterProbesAnswered = "vxlan_probes_answered"
	CounterBadDropped     = "vxlan_probe_bad_dropped"
	CounterUnknownDropped = "vxlan_probe_unknown_peer_dropped"
	CounterSendErrors     = "vxlan_probe_send_errors"
	// CounterFilterRestored counts the times the filter table was found
	// missing (a firewall reload's `nft flush ruleset`) and put back.
	CounterFilterRestored = "vxlan_filter_restored"
)

type peerEntry struct {
	Peer
	mac  net.HardwareAddr
	path Path
	// What is programmed into the kernel for it: its FDB entry's underlay
	// address and its ARP entry's host address; invalid when none; and
	// whether its prefixes are routed into the device (as of the last
	// SetPeers: the probe loop decides, SetPeers carries it out).
	fdb, arp netip.Addr
	routed   bool
}

// Plane is the VXLAN fast path of one host.
type Plane struct {
	// Constant after New.
	cfg   Config
	log   *slog.Logger
	ns    netns.NsHandle
	nl    *netlink.Handle
	index int
	mac   net.HardwareAddr
	key   [32]byte
	sock  *packetSocket

	ctr [7]atomic.Uint64 // by counterNames index

	// mu guards what follows.
	mu     sync.Mutex
	closed bool
	peers  map[key.Public]*peerEntry
	byMAC  map[[6]byte]*peerEntry
	routes map[netip.Prefix]bool // routes into the device as last set
	// hostIP is the routes' source: cfg.HostIP, or what SetHostIP gave
	// (a joiner gets its host address from IPAM after start).
	hostIP netip.Addr

	stop chan struct{}
	done sync.WaitGroup
}

var counterNames = [...]string{CounterProbesSent, CounterProbeReplies, CounterProbesAnswered,
	CounterBadDropped, CounterUnknownDropped, CounterSendErrors, CounterFilterRestored}

const (
	cSent = iota
	cReplies
	cAnswered
	cBad
	cUnknown
	cSendErr
	cFilterRestored
)

// New creates the VXLAN device (replacing one a crashed run left), the
// filter table and the probe socket, and starts probing.
func New(cfg Config) (*Plane, error) {
	switch {
	case cfg.Name == "" || len(cfg.Name) > unix.IFNAMSIZ-1:
		return nil, fmt.Errorf("vxlan: device name %q must have 1 to 15 characters", cfg.Name)
	case cfg.Port == 0 || cfg.VNI == 0 || cfg.VNI >= 1<<24:
		return nil, fmt.Errorf("vxlan: port %d / VNI %d out of range", cfg.Port, cfg.VNI)
	case len(cfg.Trusted) == 0:
		return nil, errors.New("vxlan: no trusted subnets")
	case cfg.HostIP.IsValid() && !cfg.HostIP.Is4():
		return nil, fmt.Errorf("vxlan: host address %v is not IPv4", cfg.HostIP)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	p := &Plane{cfg: cfg, hostIP: cfg.HostIP, log: cfg.Logger, ns: netns.None(), mac: MACOf(cfg.Self), key: probeKey(cfg.Secret),
		peers: map[key.Public]*peerEntry{}, byMAC: map[[6]byte]*peerEntry{}, routes: map[netip.Prefix]bool{},
		stop: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			p.teardown()
		}
	}()
	var err error
	if p.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("vxlan: reading the network namespace: %w", err)
	}
	if p.nl, err = netlink.NewHandleAt(p.ns, unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("vxlan: opening netlink: %w", err)
	}
	if p.index, err = createDevice(p.nl, cfg, p.mac); err != nil {
		return nil, err
	}
	if err := installFilter(p.ns, cfg); err != nil {
		return nil, err
	}
	if p.sock, err = openPacketSocket(p.index); err != nil {
		return nil, err
	}
	ok = true
	p.done.Add(2)
	go p.receiveLoop()
	go p.probeLoop()
	p.log.Info("vxlan fast path up", "device", cfg.Name, "port", cfg.Port, "vni", cfg.VNI, "trusted", fmt.Sprint(cfg.Trusted))
	return p, nil
}

// Close stops probing and removes the device (its routes, FDB and ARP
// entries go with it) and the filter table.
func (p *Plane) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.stop)
	p.mu.Unlock()
	p.sock.close()
	p.done.Wait()
	return p.teardown()
}

func (p *Plane) teardown() error {
	var errs []error
	if p.nl != nil && p.index != 0 {
		if l, err := p.nl.LinkByIndex(p.index); err == nil {
			if err := p.nl.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("vxlan: deleting %s: %w", p.cfg.Name, err))
			}
		}
	}
	if p.ns.IsOpen() {
		if err := removeFilter(p.ns, p.cfg.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if p.nl != nil {
		p.nl.Close()
	}
	if p.ns.IsOpen() {
		p.ns.Close()
	}
	return errors.Join(errs...)
}

// SetPeers makes the candidate peers exactly peers: trusted ones get their
// FDB and ARP entries (so they can be probed), and the prefixes of those
// whose path is in use are routed into the device, replacing their routes
// into the TUN. It returns the peers now on VXLAN; the caller routes every
// other peer's prefixes into the TUN and then calls PruneRoutes, so that no
// prefix is ever without a route.
func (p *Plane) SetPeers(peers []Peer) (map[key.Public]bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("vxlan: closed")
	}
	var errs []error
	seen := map[key.Public]bool{}
	for _, pc := range peers {
		if pc.Key.IsZero() || pc.Key == p.cfg.Self || seen[pc.Key] {
			continue
		}
		seen[pc.Key] = true
		e := p.peers[pc.Key]
		if e == nil {
			e = &peerEntry{mac: MACOf(pc.Key)}
			p.peers[pc.Key] = e
			p.byMAC[[6]byte(e.mac)] = e
		}
		e.Peer = pc
		e.Underlay = pc.Underlay.Unmap()
		e.path.SetTrusted(pc.HostIP.Is4() && e.Underlay.Is4() && p.cfg.Trusted.Pair(p.localAddr(e.Underlay), e.Underlay))
		if err := p.programLocked(e); err != nil {
			errs = append(errs, err)
		}
	}
	for k, e := range p.peers {
		if !seen[k] {
			e.path.SetTrusted(false)
			if err := p.programLocked(e); err != nil {
				errs = append(errs, err)
			}
			delete(p.peers, k)
			delete(p.byMAC, [6]byte(e.mac))
		}
	}
	using := map[key.Public]bool{}
	want := map[netip.Prefix]bool{}
	now := time.Now().UnixNano()
	for k, e := range p.peers {
		if use, changed := e.path.Decide(now); changed {
			p.logChange(e, use)
		}
		e.routed = e.path.Using()
		if !e.routed {
			continue
		}
		using[k] = true
		for _, pfx := range e.Prefixes {
			pfx = pfx.Masked()
			if !pfx.Addr().Is4() || want[pfx] {
				continue
			}
			want[pfx] = true
			if err := p.nl.RouteReplace(p.route(pfx, e.HostIP)); err != nil {
				errs = append(errs, fmt.Errorf("vxlan: routing %s via %s: %w", pfx, e.HostIP, err))
			}
		}
	}
	p.routes = want
	return using, errors.Join(errs...)
}

// SetHostIP sets the source of the routes into the device; the next
// SetPeers puts it on them.
func (p *Plane) SetHostIP(a netip.Addr) {
	p.mu.Lock()
	p.hostIP = a
	p.mu.Unlock()
}

// PruneRoutes removes the device's routes that the last SetPeers did not
// want (those of peers gone back to WireGuard, which the caller has routed
// into the TUN by now).
func (p *Plane) PruneRoutes() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if err := ownroutes.Prune(p.nl, p.index, p.routes); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	return nil
}

func (p *Plane) route(pfx netip.Prefix, via netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: p.index,
		Dst:       &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), 32)},
		Gw:        via.AsSlice(),
		Src:       p.hostIP.AsSlice(), // nil (none) while the host has no address
		Flags:     int(netlink.FLAG_ONLINK),
		Protocol:  routeProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// localAddr is the source address the kernel would use towards remote on
// the underlay; invalid if there is no route.
func (p *Plane) localAddr(remote netip.Addr) netip.Addr {
	rs, err := p.nl.RouteGet(remote.AsSlice())
	if err != nil || len(rs) == 0 {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(rs[0].Src)
	return a.Unmap()
}

// programLocked makes e's FDB and ARP entries match its trust.
func (p *Plane) programLocked(e *peerEntry) error {
	var fdb, arp netip.Addr
	if e.path.Trusted() {
		fdb, arp = e.Underlay, e.HostIP
	}
	var errs []error
	if e.fdb != fdb {
		if e.fdb.IsValid() {
			if err := p.nl.NeighDel(fdbEntry(p.index, e.mac, e.fdb)); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("vxlan: removing FDB entry of %s: %w", e.Key.Name(), err))
			}
		}
		e.fdb = netip.Addr{}
		if fdb.IsValid() {
			if err := p.nl.NeighSet(fdbEntry(p.index, e.mac, fdb)); err != nil {
				errs = append(errs, fmt.Errorf("vxlan: FDB entry of %s: %w", e.Key.Name(), err))
			} else {
				e.fdb = fdb
			}
		}
	}
	if e.arp != arp {
		if e.arp.IsValid() {
			if err := p.nl.NeighDel(arpEntry(p.index, e.mac, e.arp)); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("vxlan: removing ARP entry of %s: %w", e.Key.Name(), err))
			}
		}
		e.arp = netip.Addr{}
		if arp.IsValid() {
			if err := p.nl.NeighSet(arpEntry(p.index, e.mac, arp)); err != nil {
				errs = append(errs, fmt.Errorf("vxlan: ARP entry of %s: %w", e.Key.Name(), err))
			} else {
				e.arp = arp
			}
		}
	}
	return errors.Join(errs...)
}

func fdbEntry(index int, mac net.HardwareAddr, underlay netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, IP: underlay.AsSlice(), HardwareAddr: mac}
}

func arpEntry(index int, mac net.HardwareAddr, ip netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: index, Family: unix.AF_INET, Type: unix.RTN_UNICAST,
		State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
}

func (p *Plane) logChange(e *peerEntry, use bool) {
	if use {
		p.log.Info("peer's VXLAN path answers; sending unencrypted over the trusted subnet", "peer", e.Key.Name(), "underlay", e.Underlay.String())
	} else {
		p.log.Info("peer's VXLAN path is silent or untrusted; back to WireGuard", "peer", e.Key.Name(), "underlay", e.Underlay.String())
	}
}

// Stats reports every candidate peer.
func (p *Plane) Stats() map[key.Public]PeerStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[key.Public]PeerStats, len(p.peers))
	for k, e := range p.peers {
		out[k] = PeerStats{Trusted: e.path.Trusted(), Using: e.routed,
			Endpoint: netip.AddrPortFrom(e.Underlay, p.cfg.Port), RTT: e.path.RTT()}
	}
	return out
}

// Counters reports the probe counters by name (the Counter* constants).
func (p *Plane) Counters() map[string]uint64 {
	out := make(map[string]uint64, len(counterNames))
	for i, n := range counterNames {
		out[n] = p.ctr[i].Load()
	}
	return out
}

// probeLoop probes every trusted peer each ProbeInterval and applies the
// path rule; when a peer changes path it tells the owner.
func (p *Plane) probeLoop() {
	defer p.done.Done()
	tick := beat.NewTicker(ProbeInterval) // with the daemon's other loops
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		p.keepFilter()
		now := time.Now().UnixNano()
		changed := false
		p.mu.Lock()
		for _, e := range p.peers {
			if e.path.Trusted() && e.fdb.IsValid() {
				f := appendFrame(make([]byte, 0, frameLen), &p.key, TypeProbe, now, p.mac, e.mac)
				if err := p.sock.send(f, e.mac); err != nil {
					p.ctr[cSendErr].Add(1)
				} else {
					p.ctr[cSent].Add(1)
				}
			}
			// Decide only: the routes move when the owner calls SetPeers.
			if use, ch := e.path.Decide(now); ch {
				changed = true
				p.logChange(e, use)
			}
		}
		p.mu.Unlock()
		if changed && p.cfg.OnChange != nil {
			p.cfg.OnChange()
		}
	}
}

// keepFilter puts the filter table back when it is gone. The kernel's
// VXLAN device decapsulates datagrams from any source; only the table
// keeps those from outside the trusted subnets out, and a firewall reload
// (`nft flush ruleset`, as nftables.service runs it) removes every table.
// hostnet's watcher puts the forward filter back the same way.
func (p *Plane) keepFilter() {
	ok, err := filterInPlace(p.ns, p.cfg)
	if err != nil {
		p.log.Warn("vxlan: reading the filter table", "err", err)
		return
	}
	if ok {
		return
	}
	if err := installFilter(p.ns, p.cfg); err != nil {
		p.log.Error("vxlan: putting the filter table back", "err", err)
		return
	}
	p.ctr[cFilterRestored].Add(1)
	p.log.Warn("vxlan: filter table was gone (a firewall reload?); put back", "device", p.cfg.Name)
}

// receiveLoop answers probes and records answers until the socket closes.
func (p *Plane) receiveLoop() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, src, err := p.sock.recv(buf)
		if err != nil {
			if errors.Is(err, errSocketClosed) {
				return
			}
			// A receive error on a packet socket (ENETDOWN while the
			// device is down, say): count it, and do not spin.
			p.ctr[cBad].Add(1)
			select {
			case <-p.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		p.handleFrame(buf[:n], src, time.Now().UnixNano())
	}
}

func (p *Plane) handleFrame(b []byte, src net.HardwareAddr, now int64) {
	if len(src) != 6 {
		p.ctr[cBad].Add(1)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byMAC[[6]byte(src)]
	if e == nil || !e.path.Trusted() {
		p.ctr[cUnknown].Add(1)
		return
	}
	typ, ts, err := parseFrame(b, &p.key, src, p.mac)
	if err != nil {
		p.ctr[cBad].Add(1)
		return
	}
	switch typ {
	case TypeProbe:
		f := appendFrame(make([]byte, 0, frameLen), &p.key, TypeReply, ts, p.mac, src)
		if err := p.sock.send(f, src); err != nil {
			p.ctr[cSendErr].Add(1)
			return
		}
		p.ctr[cAnswered].Add(1)
	case TypeReply:
		rtt := time.Duration(now - ts)
		if rtt < 0 || rtt > time.Minute {
			p.ctr[cBad].Add(1)
			return
		}
		e.path.Replied(now, rtt)
		p.ctr[cReplies].Add(1)
	}
}
