package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/mcast"
	"github.com/weavewg/weavewg/types/key"
)

// Multicast and broadcast across hosts (package mcast decides, hostnet
// taps the bridge): a container's datagram to a group is read off the
// bridge, and sent as a unicast UDP datagram to the overlay address of
// each host with members of the group (head-end replication), so it
// travels through WireGuard like any packet to that host: encrypted end to
// end and relayed where the pair is relayed. The receiving host checks it
// came in through the TUN from that host and puts it on its bridge, whose
// snooping hands it to the member ports only.

const (
	mcastChannel = "mcast"
	// mcastAntiEntropy: each host repeats its groups this often, so a lost
	// message is repaired; changes go out at once.
	mcastAntiEntropy = 30 * time.Second
)

// multicastHost is what multicast needs of hostnet.Host; a host network
// without it (the daemon's tests' fakes) has no multicast.
type multicastHost interface {
	WatchMulticastMembers(stop <-chan struct{}, changed func([]hostnet.MulticastMember))
	OpenMulticastTap() (*hostnet.MulticastTap, error)
}

// multicast is the daemon's part that moves replicated datagrams.
type multicast struct {
	// Constant after start.
	eng  *mcast.Engine
	ch   gossipChannel
	tap  *hostnet.MulticastTap
	conn *ipv4.PacketConn
	udp  *net.UDPConn
	port int
	// overlayIfs are the devices a replicated datagram may arrive on: the
	// TUN and the kernel WireGuard device (WireGuard checked its source)
	// and the VXLAN fast path's.
	overlayIfs []string
	stop       chan struct{}
	wg         sync.WaitGroup
	peers      atomic.Int32 // how many peers replication knows (setPeers)

	rxWrongIf atomic.Uint64

	// Guarded by mu: the bridge's members as last read, and the subnet of
	// the container behind each port (applyFilters), which together make
	// this host's groups on each subnet.
	mu      sync.Mutex
	members []hostnet.MulticastMember
	ports   map[string]netip.Prefix
}

// startMulticast opens the mcast channel (before the control plane
// starts), the bridge tap and the UDP socket on the host's overlay
// address, and starts their loops.
func (d *Daemon) startMulticast(open channelOpener) error {
	mh, ok := d.host.(multicastHost)
	if !ok {
		return nil
	}
	// A relaunch's containers are scoped from the start, not from the
	// first reconcile (applyFilters keeps it current).
	fs := d.filterState()
	m := &multicast{
		eng: mcast.New(mcast.Config{
			Self:      d.pub,
			Subnets:   fs.used,
			LinkLocal: d.cfg.MulticastLinkLocal,
			Logger:    d.log.With("part", "mcast"),
		}),
		port:       mcast.DataPort(int(d.cfg.Port)),
		overlayIfs: append([]string{d.cfg.Iface, kernelDeviceName(d.cfg.Iface)}, d.fastDevices()...),
		stop:       make(chan struct{}),
		ports:      fs.allPorts,
	}
	ch, err := open(mcastChannel, func(from key.Public, msg []byte) {
		// A malformed message is counted; gossip goes on.
		m.eng.HandleMessage(from, msg)
	})
	if err != nil {
		return fmt.Errorf("multicast: %w", err)
	}
	m.ch = ch
	// Bound to every address: a joiner gets its host address from IPAM
	// after this; what counts is the device a datagram came in on
	// (deliverLoop), and the forward filter lets only the peer devices
	// reach this port of the host address (hostnet.Config.PeerUDPPorts).
	laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(m.port)))
	if m.udp, err = net.ListenUDP("udp4", laddr); err != nil {
		return fmt.Errorf("multicast: replication socket on %s: %w", laddr, err)
	}
	// A full-size datagram and the replication headers exceed the tunnel
	// MTU: let the kernel fragment rather than refuse it.
	if rc, err := m.udp.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
		})
	}
	m.conn = ipv4.NewPacketConn(m.udp)
	if err := m.conn.SetControlMessage(ipv4.FlagInterface, true); err != nil {
		m.udp.Close()
		return fmt.Errorf("multicast: %w", err)
	}
	if m.tap, err = mh.OpenMulticastTap(); err != nil {
		m.udp.Close()
		return fmt.Errorf("multicast: %w", err)
	}
	d.mcast = m
	m.wg.Go(m.replicateLoop)
	m.wg.Go(m.deliverLoop)
	m.wg.Go(func() {
		mh.WatchMulticastMembers(m.stop, func(ms []hostnet.MulticastMember) {
			m.mu.Lock()
			m.members = ms
			m.mu.Unlock()
			m.updateGroups(false)
		})
	})
	m.wg.Go(m.antiEntropyLoop)
	return nil
}

func (m *multicast) close() error {
	close(m.stop)
	err := errors.Join(m.tap.Close(), m.udp.Close())
	m.wg.Wait()
	return err
}

// replicateLoop reads what containers send to groups and broadcast
// addresses off the bridge and sends a copy to each host with members.
func (m *multicast) replicateLoop() {
	buf := make([]byte, 1<<16)
	out := make([]byte, 0, 1<<16+mcast.DataHdrLen)
	for {
		pkt, err := m.tap.ReadPacket(buf)
		if err != nil {
			return
		}
		targets := m.eng.Outbound(pkt)
		if len(targets) == 0 {
			continue
		}
		out = mcast.AppendData(out[:0], pkt)
		for _, t := range targets {
			_, err := m.udp.WriteToUDPAddrPort(out, netip.AddrPortFrom(t, uint16(m.port)))
			m.eng.Sent(err)
		}
	}
}

// deliverLoop puts what other hosts replicated to this one on the bridge.
func (m *multicast) deliverLoop() {
	buf := make([]byte, 1<<16)
	frame := make([]byte, 0, 1<<16+14)
	ifIndex := map[int]bool{}
	lookup := func() {
		clear(ifIndex)
		for _, name := range m.overlayIfs {
			if ifi, err := net.InterfaceByName(name); err == nil {
				ifIndex[ifi.Index] = true
			}
		}
	}
	lookup()
	for {
		n, cm, src, err := m.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if cm != nil && !ifIndex[cm.IfIndex] {
			// A device may have come after the lookup (the fast path's).
			lookup()
		}
		if cm == nil || !ifIndex[cm.IfIndex] {
			// Only what WireGuard (or the trusted fast path) delivered
			// has a source that proves the sending host; a container on
			// the bridge could claim any.
			m.rxWrongIf.Add(1)
			continue
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		from, _ := netip.AddrFromSlice(ua.IP)
		pkt, dst, ok := m.eng.Inbound(from.Unmap(), buf[:n])
		if !ok {
			continue
		}
		m.eng.Delivered(m.tap.WritePacket(frame, dst, pkt))
	}
}

func (m *multicast) antiEntropyLoop() {
	t := beat.NewTicker(mcastAntiEntropy) // with the daemon's other loops
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.ch.Broadcast(m.eng.Message())
		}
		// A round costs a message to every peer: past beat.SpreadPeers
		// peers it comes less often (issue 18); changes go out at once.
		t.Reset(beat.Spread(mcastAntiEntropy, int(m.peers.Load())))
	}
}

// setPeers tells replication the reachable peers (called by reconcile with
// each peer's allowed addresses); a peer new to it gets this host's groups
// at once.
func (m *multicast) setPeers(self []netip.Prefix, peers []discovery.Peer, allowed map[key.Public][]netip.Prefix) {
	m.eng.SetSelf(self)
	var ps []mcast.Peer
	for _, p := range peers {
		src, ok := allowed[p.Key]
		if !ok {
			continue
		}
		host := netip.Addr{}
		if slices.Contains(src, netip.PrefixFrom(p.HostIP, 32)) {
			host = p.HostIP
		}
		ps = append(ps, mcast.Peer{Key: p.Key, HostIP: host, Sources: src})
	}
	m.peers.Store(int32(len(ps)))
	for _, k := range m.eng.SetPeers(ps) {
		// An error means unreachable again already; anti-entropy repairs it.
		m.ch.Send(k, m.eng.Message())
	}
}

// setSubnets tells replication this host's subnets (the default one and
// those its containers are on) and the subnet of the container behind
// each bridge port; a change is told to every peer at once.
func (m *multicast) setSubnets(subnets []netip.Prefix, ports map[string]netip.Prefix) {
	m.mu.Lock()
	m.ports = ports
	m.mu.Unlock()
	m.updateGroups(m.eng.SetSubnets(subnets))
}

// updateGroups hands the engine the bridge's members, each on the subnet
// of its port's container (a port without one, a moment before its
// attachment is recorded, is left out until the next update), and tells
// every peer if this host's state changed.
func (m *multicast) updateGroups(changed bool) {
	// Held while the engine takes them, so a watcher's update made from
	// the ports before a change cannot land after the change's own.
	m.mu.Lock()
	var ms []mcast.Member
	for _, mm := range m.members {
		if s, ok := m.ports[mm.Port]; ok {
			ms = append(ms, mcast.Member{Subnet: s, Group: mm.Group})
		}
	}
	changed = m.eng.SetLocalGroups(ms) || changed
	m.mu.Unlock()
	if changed {
		m.ch.Broadcast(m.eng.Message())
	}
}

func (m *multicast) counters() map[string]uint64 {
	c := m.eng.Counters()
	c["mcast_rx_dropped_interface"] = m.rxWrongIf.Load()
	return c
}
