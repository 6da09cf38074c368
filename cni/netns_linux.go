package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns runs f with a netlink handle inside the namespace at path; the
// calling thread never changes namespace.
func inNetns(path string, f func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("namespace %s: netlink: %w", path, err)
	}
	defer h.Close()
	return f(h)
}

// linkMAC is the MAC address of ifName in the namespace at path.
func linkMAC(path, ifName string) (string, error) {
	var mac string
	err := inNetns(path, func(h *netlink.Handle) error {
		l, err := h.LinkByName(ifName)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr.String()
		return nil
	})
	return mac, err
}

// checkInterface verifies ifName in the namespace at path: present, up,
// holding ip, with the route to ip's prefix through it.
func checkInterface(path, ifName string, ip netip.Prefix) error {
	return inNetns(path, func(h *netlink.Handle) error {
		l, err := h.LinkByName(ifName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return fmt.Errorf("interface %s is missing from namespace %s", ifName, path)
			}
			return fmt.Errorf("interface %s: %w", ifName, err)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("interface %s is down", ifName)
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("interface %s: addresses: %w", ifName, err)
		}
		found := false
		for _, a := range addrs {
			ones, _ := a.Mask.Size()
			if p, ok := netip.AddrFromSlice(a.IP.To4()); ok && netip.PrefixFrom(p, ones) == ip {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("interface %s does not hold %s", ifName, ip)
		}
		routes, err := h.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("interface %s: routes: %w", ifName, err)
		}
		want := ip.Masked()
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			ones, _ := r.Dst.Mask.Size()
			if p, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok && netip.PrefixFrom(p, ones) == want {
				return nil
			}
		}
		return fmt.Errorf("no route to the overlay %s through %s", want, ifName)
	})
}
