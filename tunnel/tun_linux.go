package tunnel

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/tun"
)

// nsTUN is a tun.Device whose MTU is read through a netlink handle of the
// TUN's own namespace, by interface index.
//
// wireguard-go's NativeTun.MTU asks with an ioctl by interface name on a
// socket it opens on the calling thread, and its TUN event goroutine calls
// it after every link change. In a process that serves several namespaces
// (the tests) that thread may be in another namespace, where the name is
// unknown or, worse, names another host's TUN. Every other method is the
// NativeTun's: reads and writes go through unchanged (one more interface
// call per batch).
type nsTUN struct {
	tun.Device
	nl    *netlink.Handle
	index int
}

func (t *nsTUN) MTU() (int, error) {
	l, err := t.nl.LinkByIndex(t.index)
	if err != nil {
		return 0, fmt.Errorf("TUN MTU: %w", err)
	}
	return l.Attrs().MTU, nil
}
