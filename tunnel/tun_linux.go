package tunnel

import (
	"fmt"
	"os"
	"sync"
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
	index int
	last  atomic.Int64 // the MTU last read

	// wireguard-go does not wait for its TUN event goroutine when the
	// device closes, so MTU can be called after Close: the handle is
	// nsTUN's own, closed by Close under mu, and nil afterwards.
	mu sync.Mutex
	nl *netlink.Handle
}

// newNSTUN wraps dev; it takes ownership of nl.
func newNSTUN(dev tun.Device, nl *netlink.Handle, index int) *nsTUN {
	return &nsTUN{Device: dev, nl: nl, index: index}
}

// MTU reads the TUN's MTU. While the device closes, the link is gone before
// wireguard-go's event goroutine stops asking: that case answers the last
// MTU read instead of making wireguard-go log an error at every shutdown.
func (t *nsTUN) MTU() (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nl == nil {
		if last := t.last.Load(); last != 0 {
			return int(last), nil
		}
		return 0, fmt.Errorf("TUN MTU: %w", os.ErrClosed)
	}
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

// Close closes the TUN, then the netlink handle.
func (t *nsTUN) Close() error {
	err := t.Device.Close()
	t.mu.Lock()
	if t.nl != nil {
		t.nl.Close()
		t.nl = nil
	}
	t.mu.Unlock()
	return err
}
