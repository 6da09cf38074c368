package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/internal/beat"
)

// Multicast on the bridge (package mcast decides what crosses hosts):
//
//   - The kernel bridge snoops IGMP (v2 and v3 reports) into its multicast
//     database (MDB): which port has members of which group. weavewg reads
//     it over netlink (RTM_GETMDB, and RTNLGRP_MDB notifications) instead
//     of snooping IGMP itself: the kernel already does the timers, queries
//     and v2/v3 compatibility.
//   - The bridge is its own querier (multicast_querier 1), so members
//     answer general queries (every 20 s: queryInterval) and their entries
//     never age out (without a querier, nobody asks and entries expire
//     after 260 s).
//   - Until the kernel counts a querier as present, a query response
//     interval after the querier is turned on, the bridge floods IGMP
//     reports to every port, and a container in IGMPv2 mode (the bridge's
//     queries are v2) that hears another member's report for its group
//     cancels its own (report suppression, RFC 2236): its port is not
//     learned until the next general query, the second startup query
//     (31.25 s later by default). Members have 1 s to answer a query
//     (queryResponseInterval: a bridge's ports are one hop away), so the
//     window is 1 s, and the startup queries come every 5 s
//     (startupQueryInterval), so a join lost in it is learned within
//     about 6 s. The querier is turned on after these are set: the kernel
//     opens the window with the response interval it has then.
//   - Every port has fast leave (one container per port): a leave deletes
//     the port's entry at once, and the hosts replicating to this one hear
//     of it within the notification's round trip.
//   - The bridge device is a permanent multicast router port
//     (multicast_router 2), so every multicast frame on the bridge is also
//     passed up to the host, where the tap sees it.

// Linux's MDB attributes (include/uapi/linux/if_bridge.h); x/sys lacks them.
const (
	mdbaMDB          = 1 // MDBA_MDB
	mdbaMDBEntry     = 1 // MDBA_MDB_ENTRY
	mdbaMDBEntryInfo = 1 // MDBA_MDB_ENTRY_INFO: struct br_mdb_entry
	// brMDBEntryLen is the part of struct br_mdb_entry read: ifindex u32,
	// state u8, flags u8, vid u16, the address union (16 bytes), proto be16.
	brMDBEntryLen = 26
	brPortMsgLen  = 8 // struct br_port_msg: family u8, 3 pad, ifindex u32
)

// queryInterval is the bridge querier's general query interval in
// hundredths of a second (clock_t): 20 s instead of the kernel's 125 s, so
// a member whose two join reports were both lost (a host starved of CPU
// has been seen to) is learned within 20 s. Each member answers every
// query with one report per group (v2) or one for all (v3).
const queryInterval = 20 * 100

// queryResponseInterval (1 s, the kernel's is 10 s) is how long members
// may take to answer a query, and how long after the querier is turned on
// the bridge floods reports (see above); startupQueryInterval (5 s, a
// quarter of queryInterval as RFC 3376 has it; the kernel's is 31.25 s)
// spaces the first two queries. Both in hundredths of a second.
const (
	queryResponseInterval = 1 * 100
	startupQueryInterval  = 5 * 100
)

// setupBridgeMulticast turns on snooping, the bridge's querier and its
// router port on the bridge at index: the querier in a second request,
// once the query intervals are set (the kernel reads a request's
// attributes in its own order, the querier before the intervals).
func setupBridgeMulticast(ns netns.NsHandle, index int) error {
	err := changeBridge(ns, index, func(data *nl.RtAttr) {
		data.AddRtAttr(unix.IFLA_BR_MCAST_SNOOPING, []byte{1})
		data.AddRtAttr(unix.IFLA_BR_MCAST_ROUTER, []byte{2})
		data.AddRtAttr(unix.IFLA_BR_MCAST_QUERY_INTVL, nl.Uint64Attr(queryInterval))
		data.AddRtAttr(unix.IFLA_BR_MCAST_QUERY_RESPONSE_INTVL, nl.Uint64Attr(queryResponseInterval))
		data.AddRtAttr(unix.IFLA_BR_MCAST_STARTUP_QUERY_INTVL, nl.Uint64Attr(startupQueryInterval))
	})
	if err != nil {
		return err
	}
	return changeBridge(ns, index, func(data *nl.RtAttr) {
		data.AddRtAttr(unix.IFLA_BR_MCAST_QUERIER, []byte{1})
	})
}

// changeBridge sends one RTM_NEWLINK for the bridge at index with the
// bridge attributes add puts in.
func changeBridge(ns netns.NsHandle, index int, add func(data *nl.RtAttr)) error {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	add(info.AddRtAttr(nl.IFLA_INFO_DATA, nil))
	req.AddData(info)
	return executeAt(ns, req, 0, func([]byte) {})
}

// executeAt runs a netlink request on a socket opened in ns.
func executeAt(ns netns.NsHandle, req *nl.NetlinkRequest, resType uint16, each func([]byte)) error {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer s.Close()
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	s.SetReceiveTimeout(&tv)
	s.SetSendTimeout(&tv)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
	return req.ExecuteIter(unix.NETLINK_ROUTE, resType, func(m []byte) bool {
		each(m)
		return true
	})
}

// setFastLeave gives a bridge port fast leave: it has one container
// behind it, so its group entry goes with that container's leave.
func (h *Host) setFastLeave(link netlink.Link) {
	if err := h.nl.LinkSetFastLeave(link, true); err != nil {
		h.log.Warn("setting fast leave on a bridge port; a container's multicast leave then takes the querier's 2 s", "port", link.Attrs().Name, "err", err)
	}
}

// MulticastMember is a group with a member behind one port of the bridge.
type MulticastMember struct {
	// Port is the port's name: a container's host-side veth, whose
	// attachment says which subnet the member is on.
	Port  string
	Group netip.Addr
}

// MulticastMembers returns the IPv4 groups with members behind some port
// of the bridge (not groups only the host itself joined), by port, sorted.
func (h *Host) MulticastMembers() ([]MulticastMember, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETMDB, unix.NLM_F_DUMP)
	req.AddData(brPortMsg{family: unix.AF_BRIDGE, ifindex: uint32(h.brIndex)})
	var entries []mdbEntry
	// The kernel answers a dump with messages of type RTM_GETMDB
	// (br_mdb_dump); notifications are RTM_NEWMDB and RTM_DELMDB.
	err := executeAt(h.ns, req, unix.RTM_GETMDB, func(m []byte) {
		entries = append(entries, parseMDB(m, h.brIndex)...)
	})
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, fmt.Errorf("reading the bridge's multicast database: %w", err)
	}
	names := map[int]string{}
	var out []MulticastMember
	for _, e := range entries {
		name, ok := names[e.port]
		if !ok {
			// A port that went since the dump has no name: its entry
			// goes with it.
			if l, lerr := h.nl.LinkByIndex(e.port); lerr == nil {
				name = l.Attrs().Name
			}
			names[e.port] = name
		}
		if name != "" {
			out = append(out, MulticastMember{Port: name, Group: e.group})
		}
	}
	slices.SortFunc(out, func(a, b MulticastMember) int {
		if c := strings.Compare(a.Port, b.Port); c != 0 {
			return c
		}
		return a.Group.Compare(b.Group)
	})
	return slices.Compact(out), err
}

// MulticastGroups returns the groups of MulticastMembers, ascending.
func (h *Host) MulticastGroups() ([]netip.Addr, error) {
	ms, err := h.MulticastMembers()
	var groups []netip.Addr
	for _, m := range ms {
		groups = append(groups, m.Group)
	}
	slices.SortFunc(groups, netip.Addr.Compare)
	return slices.Compact(groups), err
}

type brPortMsg struct {
	family  uint8
	ifindex uint32
}

func (m brPortMsg) Len() int { return brPortMsgLen }

func (m brPortMsg) Serialize() []byte {
	b := make([]byte, brPortMsgLen)
	b[0] = m.family
	nl.NativeEndian().PutUint32(b[4:], m.ifindex)
	return b
}

// mdbEntry is an IPv4 group with a member behind the port at index port.
type mdbEntry struct {
	port  int
	group netip.Addr
}

// parseMDB returns the IPv4 entries of one RTM_NEWMDB message (struct
// br_port_msg and attributes) of bridge brIndex that have a member behind
// a port, not the bridge device itself. Anything it cannot read is skipped.
func parseMDB(m []byte, brIndex int) []mdbEntry {
	if len(m) < brPortMsgLen || int(nl.NativeEndian().Uint32(m[4:8])) != brIndex {
		return nil
	}
	var out []mdbEntry
	for _, mdb := range parseAttrs(m[brPortMsgLen:], mdbaMDB) {
		for _, ent := range parseAttrs(mdb, mdbaMDBEntry) {
			for _, info := range parseAttrs(ent, mdbaMDBEntryInfo) {
				if len(info) < brMDBEntryLen {
					continue
				}
				port := int(nl.NativeEndian().Uint32(info[0:4]))
				proto := binary.BigEndian.Uint16(info[24:26])
				if port == brIndex || proto != unix.ETH_P_IP {
					continue
				}
				if g := netip.AddrFrom4([4]byte(info[8:12])); g.IsMulticast() {
					out = append(out, mdbEntry{port: port, group: g})
				}
			}
		}
	}
	return out
}

// parseAttrs returns the payloads of the attributes of type typ in b; it
// stops at the first malformed one. (nl.ParseRouteAttr panics on an
// attribute whose length runs past its padding at the end of b, which
// FuzzParseMDB found.)
func parseAttrs(b []byte, typ uint16) [][]byte {
	var out [][]byte
	for len(b) >= unix.SizeofRtAttr {
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		t := nl.NativeEndian().Uint16(b[2:4])
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		if t&nl.NLA_TYPE_MASK == typ {
			out = append(out, b[unix.SizeofRtAttr:l])
		}
		b = b[min(len(b), (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1)):]
	}
	return out
}

// WatchMulticastMembers calls changed with the bridge's members
// (MulticastMembers) at once, whenever the kernel notifies a change of its
// multicast database, and every 10 s in case a notification was lost,
// until stop is closed.
func (h *Host) WatchMulticastMembers(stop <-chan struct{}, changed func([]MulticastMember)) {
	notes := make(chan struct{}, 1)
	go h.subscribeMDB(stop, notes)
	t := beat.NewTicker(10 * time.Second) // with the daemon's other loops
	defer t.Stop()
	for {
		if ms, err := h.MulticastMembers(); err != nil {
			h.log.Warn("reading the bridge's multicast groups", "err", err)
		} else {
			changed(ms)
		}
		select {
		case <-stop:
			return
		case <-notes:
		case <-t.C:
		}
	}
}

// subscribeMDB signals notes on every MDB notification until stop.
func (h *Host) subscribeMDB(stop <-chan struct{}, notes chan<- struct{}) {
	for {
		s, err := nl.SubscribeAt(h.ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_MDB)
		if err != nil {
			h.log.Warn("subscribing to the bridge's multicast changes; reading them every 10 s", "err", err)
			return
		}
		tv := unix.NsecToTimeval((500 * time.Millisecond).Nanoseconds())
		s.SetReceiveTimeout(&tv)
		for {
			select {
			case <-stop:
				s.Close()
				return
			default:
			}
			_, _, err := s.Receive()
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			select {
			case notes <- struct{}{}:
			default:
			}
			if err != nil {
				// An overrun (ENOBUFS) or a closed socket: subscribe again.
				break
			}
		}
		s.Close()
	}
}

// MulticastTap reads the multicast and broadcast frames that reach the
// bridge from its ports, and sends frames out of the bridge to its ports.
type MulticastTap struct {
	f   *os.File
	mac net.HardwareAddr
}

// OpenMulticastTap opens an AF_PACKET socket on the bridge. A classic BPF
// filter keeps everything else out of it (the bridge passes every routed
// unicast packet up too): only IPv4 frames to a group or broadcast address,
// and not the frames the host itself sends, so what this host delivers
// from the overlay is never read back and replicated again.
//
// The socket takes every protocol (ETH_P_ALL) and ignores outgoing frames
// (PACKET_IGNORE_OUTGOING, Linux 4.20). The kernel hands a received frame
// to its taps of every protocol before IP, and to taps of one protocol
// after IP's handler was handed it: bound to ETH_P_IP, the tap still held
// a reference to every packet a container sent through the host while IP
// forwarded it, so IP cloned each one (skb_share_check in ip_rcv) and
// ip_forward then copied its header to lower the TTL (skb_cow), a clone
// and a copy per packet that the tap's filter dropped anyway (perf of a
// flood ping between containers, November 30). A tap of every protocol
// has dropped the frame before IP sees it. Taps of every protocol are
// also handed each frame the bridge sends, one clone for all of them
// (dev_queue_xmit_nit), unless they ignore outgoing frames, which this
// one needs not see: a kernel without the option gets the ETH_P_IP
// binding as before.
func (h *Host) OpenMulticastTap() (*MulticastTap, error) {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 1},                                       // first byte of the destination MAC
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 1, SkipFalse: 5},                 // group bit, else drop
		bpf.LoadAbsolute{Off: 12, Size: 2},                                      // EtherType
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_IP, SkipFalse: 3},       // IPv4, else drop
		bpf.LoadExtension{Num: bpf.ExtType},                                     // packet type
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 1}, // sent by the host: drop
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return nil, err
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	var fd int
	err = inNS(h.ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("multicast tap: %w", err)
	}
	fail := func(what string, err error) (*MulticastTap, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("multicast tap on %s: %s: %w", h.cfg.Bridge, what, err)
	}
	// The filter goes on before the socket is bound, so nothing unfiltered
	// is ever queued.
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}); err != nil {
		return fail("attaching the filter", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20); err != nil {
		return fail("receive buffer", err)
	}
	proto := uint16(unix.ETH_P_IP)
	if unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1) == nil {
		proto = unix.ETH_P_ALL
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: h.brIndex}); err != nil {
		return fail("binding", err)
	}
	link, err := h.nl.LinkByIndex(h.brIndex)
	if err != nil {
		return fail("bridge", err)
	}
	return &MulticastTap{f: os.NewFile(uintptr(fd), "multicast-tap"), mac: link.Attrs().HardwareAddr}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ReadPacket reads the next frame into buf and returns the IPv4 packet in
// it. It returns os.ErrClosed after Close.
func (t *MulticastTap) ReadPacket(buf []byte) ([]byte, error) {
	for {
		n, err := t.f.Read(buf)
		if err != nil {
			return nil, err
		}
		if n > 14 {
			return buf[14:n], nil
		}
	}
}

// WritePacket sends the IPv4 packet pkt out of the bridge to Ethernet
// address dst (a group's or broadcast): the bridge delivers it to the
// ports its multicast database says have members (all, for a broadcast).
// scratch is reused for the frame.
func (t *MulticastTap) WritePacket(scratch []byte, dst net.HardwareAddr, pkt []byte) error {
	f := append(scratch[:0], dst...)
	f = append(f, t.mac...)
	f = append(f, unix.ETH_P_IP>>8, unix.ETH_P_IP&0xff)
	f = append(f, pkt...)
	_, err := t.f.Write(f)
	return err
}

// Close closes the tap; a blocked ReadPacket returns.
func (t *MulticastTap) Close() error { return t.f.Close() }
