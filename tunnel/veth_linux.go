package tunnel

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// CreateVeth makes a veth pair in the tunnel's namespace for a container
// runtime that moves one end into the container itself (Docker's remote
// driver): hostName goes on the bridge and up, peerName stays here, down,
// for the runtime to take. Both get the tunnel MTU (Docker never sets one).
// It returns the peer's MAC address.
func (t *Tunnel) CreateVeth(hostName, peerName string) (net.HardwareAddr, error) {
	if len(hostName) > maxIfNameLen || len(peerName) > maxIfNameLen {
		return nil, fmt.Errorf("veth %s/%s: names are at most %d characters", hostName, peerName, maxIfNameLen)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("veth: %w", ErrClosed)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: t.cfg.MTU},
		PeerName:  peerName,
		PeerMTU:   uint32(t.cfg.MTU),
	}
	if err := t.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("creating veth pair %s/%s: %w", hostName, peerName, err)
	}
	fail := func(format string, args ...any) (net.HardwareAddr, error) {
		if l, err := t.nl.LinkByName(hostName); err == nil {
			t.nl.LinkDel(l)
		}
		return nil, fmt.Errorf("veth %s: "+format, append([]any{hostName}, args...)...)
	}
	host, err := t.nl.LinkByName(hostName)
	if err != nil {
		return fail("%w", err)
	}
	if err := t.nl.LinkSetMasterByIndex(host, t.brIndex); err != nil {
		return fail("putting it on bridge %s: %w", t.cfg.Bridge, err)
	}
	if err := t.nl.LinkSetUp(host); err != nil {
		return fail("setting it up: %w", err)
	}
	peer, err := t.nl.LinkByName(peerName)
	if err != nil {
		return fail("peer %s: %w", peerName, err)
	}
	return peer.Attrs().HardwareAddr, nil
}

// AdoptVeth puts the host end of a veth made by CreateVeth back on the
// bridge after a restart; it fails if it is gone or not a veth.
func (t *Tunnel) AdoptVeth(hostName string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("adopt veth: %w", ErrClosed)
	}
	link, err := t.nl.LinkByName(hostName)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("host veth %s is gone", hostName)
		}
		return fmt.Errorf("host veth %s: %w", hostName, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("%s is a %s link, not a veth", hostName, link.Type())
	}
	if err := t.nl.LinkSetMasterByIndex(link, t.brIndex); err != nil {
		return fmt.Errorf("putting %s on bridge %s: %w", hostName, t.cfg.Bridge, err)
	}
	if err := t.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", hostName, err)
	}
	return nil
}

// DeleteVeth removes a veth pair by its host end; one already gone is fine.
func (t *Tunnel) DeleteVeth(hostName string) error {
	return t.Detach(Attached{Netns: "(docker)", HostVeth: hostName})
}
