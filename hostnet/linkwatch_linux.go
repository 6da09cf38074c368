package hostnet

import (
	"maps"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// WatchDeletedLinks calls deleted with the name of every link removed from
// the host's namespace until stop is closed, and returns then. It is how
// the daemon learns at once that a container's namespace is gone: when the
// kernel destroys a namespace it deletes the veths in it, and their host
// ends with them. A lost subscription (the socket's buffer overran) is made
// again after a second; what it missed, the daemon's periodic check of the
// namespaces still finds.
//
// It also keeps the forward filter matching the other peer devices
// (Config.OtherDevices) by their indexes: when one appears, goes or is
// made again, the table is made again (otherLinks).
func (h *Host) WatchDeletedLinks(stop <-chan struct{}, deleted func(name string)) {
	for {
		ch := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			Namespace:     &h.ns,
			ErrorCallback: func(err error) { h.log.Debug("link watch", "err", err) },
		})
		if err != nil {
			h.log.Warn("watching for deleted links; retrying in a second", "err", err)
		} else if h.otherLinks(); h.dispatchDeleted(stop, ch, deleted) {
			close(done)
			for range ch {
				// Drained so the reader sees the socket closed.
			}
			return
		} else {
			close(done)
			h.log.Warn("the link watch ended; subscribing again in a second")
		}
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// dispatchDeleted passes deletions on until stop (true) or until the
// subscription ends (false).
func (h *Host) dispatchDeleted(stop <-chan struct{}, ch <-chan netlink.LinkUpdate, deleted func(string)) bool {
	for {
		select {
		case <-stop:
			return true
		case u, ok := <-ch:
			if !ok {
				return false
			}
			if u.Link == nil {
				continue
			}
			name := u.Link.Attrs().Name
			if u.Header.Type == unix.RTM_DELLINK {
				deleted(name)
			}
			if slices.Contains(h.cfg.OtherDevices, name) {
				h.otherLinks()
			}
		}
	}
}

// otherLinks makes the forward filter again when an other peer device
// appeared, went or was made again (a new index) since it was made, so
// that the table matches each that exists by its index; until then a
// device made again is matched by its name (installForwardFilter).
func (h *Host) otherLinks() {
	if len(h.cfg.OtherDevices) == 0 || !h.filtered {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed { // h.ns is closed too
		return
	}
	if maps.Equal(indexes(h.ns, h.cfg.OtherDevices...), h.otherIdx) {
		return
	}
	if err := h.setFilterLocked(h.spec); err != nil {
		h.log.Warn("making the forward filter again for a peer device's new index", "err", err)
	}
}
