package hostnet

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// CreateVeth makes a veth pair in the host namespace New ran in for a container
// runtime that moves one end into the container itself (Docker's remote
// driver): hostName goes on the bridge and up, peerName stays here, down,
// for the runtime to take. Both get the bridge MTU (Docker never sets one).
// It returns the peer's MAC address.
func (h *Host) CreateVeth(hostName, peerName string) (net.HardwareAddr, error) {
	if len(hostName) > maxIfNameLen || len(peerName) > maxIfNameLen {
		return nil, fmt.Errorf("veth %s/%s: names are at most %d characters", hostName, peerName, maxIfNameLen)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("veth: %w", ErrClosed)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: h.cfg.MTU},
		PeerName:  peerName,
		PeerMTU:   uint32(h.cfg.MTU),
	}
	if err := h.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("creating veth pair %s/%s: %w", hostName, peerName, err)
	}
	fail := func(format string, args ...any) (net.HardwareAddr, error) {
		if l, err := h.nl.LinkByName(hostName); err == nil {
			h.nl.LinkDel(l)
		}
		return nil, fmt.Errorf("veth %s: "+format, append([]any{hostName}, args...)...)
	}
	host, err := h.nl.LinkByName(hostName)
	if err != nil {
		return fail("%w", err)
	}
	if err := h.nl.LinkSetMasterByIndex(host, h.brIndex); err != nil {
		return fail("putting it on bridge %s: %w", h.cfg.Bridge, err)
	}
	if err := h.nl.LinkSetUp(host); err != nil {
		return fail("setting it up: %w", err)
	}
	h.setFastLeave(host)
	peer, err := h.nl.LinkByName(peerName)
	if err != nil {
		return fail("peer %s: %w", peerName, err)
	}
	h.forgetNeighbors()
	return peer.Attrs().HardwareAddr, nil
}

// AdoptVeth puts the host end of a veth made by CreateVeth back on the
// bridge after a restart; it fails if it is gone or not a veth.
func (h *Host) AdoptVeth(hostName string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("adopt veth: %w", ErrClosed)
	}
	link, err := h.nl.LinkByName(hostName)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("host veth %s is gone", hostName)
		}
		return fmt.Errorf("host veth %s: %w", hostName, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("%s is a %s link, not a veth", hostName, link.Type())
	}
	if err := h.nl.LinkSetMasterByIndex(link, h.brIndex); err != nil {
		return fmt.Errorf("putting %s on bridge %s: %w", hostName, h.cfg.Bridge, err)
	}
	if err := h.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", hostName, err)
	}
	h.setFastLeave(link)
	return nil
}

// DeleteVeth removes a veth pair by its host end; one already gone is fine.
func (h *Host) DeleteVeth(hostName string) error {
	return h.Detach(Attached{Netns: "(docker)", HostVeth: hostName})
}
