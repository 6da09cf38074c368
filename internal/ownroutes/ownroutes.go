// Package ownroutes removes the routes weavewg put into one of its devices
// and no longer wants; the datapaths that route peers' prefixes into a
// device of their own (vxlan, kernelwg) share it.
package ownroutes

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Protocol marks every route weavewg installs (hostnet's, vxlan's,
// kernelwg's), so a route moving between devices is one RouteReplace (same
// destination, table and metric), with no moment without a route. 0x57 is
// 'W'; iproute2 prints it as "proto 87".
const Protocol netlink.RouteProtocol = 0x57

// Prune deletes the IPv4 routes of Protocol in the main table out through
// the device index whose destination keep does not hold.
func Prune(nl *netlink.Handle, index int, keep map[netip.Prefix]bool) error {
	filter := &netlink.Route{LinkIndex: index, Table: unix.RT_TABLE_MAIN, Protocol: Protocol}
	have, err := nl.RouteListFiltered(netlink.FAMILY_V4, filter,
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("listing routes: %w", err)
	}
	var errs []error
	for _, r := range have {
		if r.Dst != nil {
			if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
				ones, _ := r.Dst.Mask.Size()
				if keep[netip.PrefixFrom(a.Unmap(), ones)] {
					continue
				}
			}
		}
		if err := nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting route %v: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}
