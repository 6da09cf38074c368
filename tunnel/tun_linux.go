package tunnel

import (
	"fmt"
	"sync/atomic"

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
	last  atomic.Int64 // the MTU last read
}

// MTU reads the TUN's MTU. While the device closes, the link is gone before
// wireguard-go's event goroutine stops asking: that case answers the last
// MTU read instead of making wireguard-go log an error at every shutdown.
func (t *nsTUN) MTU() (int, error) {
	l, err := t.nl.LinkByIndex(t.index)
	if err != nil {
		if isNotFound(err) && t.last.Load() != 0 {
			return int(t.last.Load()), nil
		}
		return 0, fmt.Errorf("TUN MTU: %w", err)
	}
	t.last.Store(int64(l.Attrs().MTU))
	return l.Attrs().MTU, nil
}
