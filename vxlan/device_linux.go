package vxlan

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/internal/rpfilter"
)

// createDevice makes the VXLAN device: no learning (every entry is put
// there by SetPeers), no multicast group (peers are unicast FDB entries),
// the host's MAC, the overlay MTU. A device of that name left by a crashed
// run is replaced. It returns the device's index.
func createDevice(nl *netlink.Handle, cfg Config, mac net.HardwareAddr) (int, error) {
	if old, err := nl.LinkByName(cfg.Name); err == nil {
		if old.Type() != "vxlan" {
			return 0, fmt.Errorf("vxlan: a %s link named %s exists", old.Type(), cfg.Name)
		}
		if err := nl.LinkDel(old); err != nil {
			return 0, fmt.Errorf("vxlan: removing stale %s: %w", cfg.Name, err)
		}
	}
	dev := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU, HardwareAddr: mac},
		VxlanId:   int(cfg.VNI),
		Port:      int(cfg.Port),
		Learning:  false,
	}
	if err := nl.LinkAdd(dev); err != nil {
		if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("vxlan: creating %s on UDP port %d (VNI %d): %w; is another VXLAN device using the port?", cfg.Name, cfg.Port, cfg.VNI, err)
		}
		return 0, fmt.Errorf("vxlan: creating %s on UDP port %d: %w", cfg.Name, cfg.Port, err)
	}
	link, err := nl.LinkByName(cfg.Name)
	if err != nil {
		return 0, fmt.Errorf("vxlan: %s: %w", cfg.Name, err)
	}
	// Reverse-path filtering never strict, as on the TUN and the bridge:
	// packets from a peer's containers arrive here, and strict mode would
	// drop any whose prefix is routed into the TUN at that moment (during
	// a switch).
	if err := rpfilter.NotStrict(cfg.Name); err != nil {
		nl.LinkDel(link)
		return 0, fmt.Errorf("vxlan: %w", err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		nl.LinkDel(link)
		return 0, fmt.Errorf("vxlan: setting %s up: %w", cfg.Name, err)
	}
	return link.Attrs().Index, nil
}
