package hostnet

import (
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
		} else if h.dispatchDeleted(stop, ch, deleted) {
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
			if u.Header.Type == unix.RTM_DELLINK && u.Link != nil {
				deleted(u.Link.Attrs().Name)
			}
		}
	}
}
