package daemon

import (
	"net"
	"net/netip"
	"strconv"

	"github.com/weavewg/weavewg/pmtu"
	"github.com/weavewg/weavewg/tunnel"
)

// tunnelMTU is the MTU of the TUN and of every container interface: --mtu
// when given (fixed: no peer's MTU is lowered either), else derived from the
// underlay: the routes towards the peers known at start, the default route,
// or the host's links (tunnel.UnderlayMTU), less 80 bytes (pmtu.Overhead).
// why says where it came from, for the log and status.
func tunnelMTU(cfg Config) (mtu int, fixed bool, why string, err error) {
	if cfg.MTU != 0 {
		return cfg.MTU, true, "--mtu", nil
	}
	var dsts []netip.Addr
	for _, p := range cfg.Peers {
		host := p
		if h, _, err := net.SplitHostPort(p); err == nil {
			host = h
		}
		if a, err := netip.ParseAddr(host); err == nil {
			dsts = append(dsts, a)
		}
	}
	mtu, why, err = tunnel.UnderlayMTU(dsts, cfg.Iface, cfg.Bridge)
	if err != nil {
		return 0, false, "", err
	}
	return mtu, false, why + " less " + strconv.Itoa(pmtu.Overhead(false)), nil
}
