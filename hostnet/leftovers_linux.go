package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RemoveLeftovers removes what a stopped daemon leaves for its containers'
// local traffic (CloseKeepingBridge): the bridge, weavewg's rules in the
// host's forward chains and the forward filter table of tun, in the
// network namespace of the calling thread. What is already gone is fine.
// Attached namespaces keep their veths (off the bridge), as after Close.
// No daemon may be running on the bridge: its watcher would put the rules
// back.
func RemoveLeftovers(bridge, tun string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return fmt.Errorf("host networking: reading the network namespace: %w", err)
	}
	defer ns.Close()
	var errs []error
	if err := newFirewall(ns, bridge, tun, nil, log).remove(); err != nil {
		errs = append(errs, fmt.Errorf("host networking: %w", err))
	}
	if err := removeForwardFilter(ns, tun); err != nil {
		errs = append(errs, fmt.Errorf("host networking: %w", err))
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("host networking: opening netlink: %w", err))...)
	}
	defer nl.Close()
	switch l, err := nl.LinkByName(bridge); {
	case err == nil && l.Type() != "bridge":
		errs = append(errs, fmt.Errorf("host networking: %s is a %s link, not weavewg's bridge; left alone", bridge, l.Type()))
	case err == nil:
		if err := nl.LinkDel(l); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("host networking: deleting bridge %s: %w", bridge, err))
		}
	case !isNotFound(err):
		errs = append(errs, fmt.Errorf("host networking: bridge %s: %w", bridge, err))
	}
	return errors.Join(errs...)
}
