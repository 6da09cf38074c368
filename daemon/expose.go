package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/atomicfile"
)

// The host's own overlay addresses and who may reach them.
//
// The host address (the bridge's, where DNS answers, the source of the
// host's packets into the overlay) is an IPAM allocation under hostID in
// the default subnet, so it clashes with no container or other host; a
// joiner has none until the ring gives it space, and gets it at the first
// reconcile after. `--host-ip` claims a given address instead. host.json
// keeps it (and the exposures) so that the next start has it before IPAM
// opens.
//
// By default the host's services are closed to the overlay except DNS
// (hostnet/expose_linux.go). `expose [SUBNET]` opens an address of the
// host to one subnet's containers: the host address for the default
// subnet, an address allocated in SUBNET (id exposeID) otherwise; `hide`
// closes it again and gives the address back.

const (
	hostFile = "host.json"
	// hostID is the IPAM id of the host's own address.
	hostID = ipam.HostID
)

// exposeIDPrefix begins the IPAM id of the host's address in an isolated
// subnet: exposeID.
const exposeIDPrefix = "weavewg:expose:"

// exposeID is the IPAM id of the host's address in an isolated subnet.
func exposeID(subnet netip.Prefix) string { return exposeIDPrefix + subnet.String() }

// hostState is host.json.
type hostState struct {
	HostIP  string   `json:"host_ip,omitempty"` // with the range's prefix length
	Exposed []string `json:"exposed,omitempty"` // subnets
}

func loadHostState(dir string) (hostState, error) {
	var st hostState
	b, err := os.ReadFile(filepath.Join(dir, hostFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return hostState{}, fmt.Errorf("%s: %w", hostFile, err)
	}
	return st, nil
}

// saveHostStateLocked writes host.json; exposeMu held.
func (d *Daemon) saveHostStateLocked() error {
	st := hostState{}
	if p := d.hostPrefix(); p.IsValid() {
		st.HostIP = p.String()
	}
	for _, s := range d.exposed {
		st.Exposed = append(st.Exposed, s.String())
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(d.cfg.StateDir, hostFile), append(b, '\n'), 0o600)
}

// loadHost reads host.json at start: the host address (unless --host-ip
// gives one) and the exposures. A damaged file is set aside: the address
// is allocated again, the host starts hidden.
func (d *Daemon) loadHost() {
	st, err := loadHostState(d.cfg.StateDir)
	if err != nil {
		aside := filepath.Join(d.cfg.StateDir, hostFile+".corrupt")
		os.Rename(filepath.Join(d.cfg.StateDir, hostFile), aside)
		d.log.Error("host state unreadable, set aside: the host address comes from IPAM again and the host starts hidden", "err", err, "moved_to", aside)
		st = hostState{}
	}
	var p netip.Prefix
	switch {
	case d.cfg.HostIP.IsValid():
		p = d.cfg.HostIP
	case st.HostIP != "":
		if q, err := netip.ParsePrefix(st.HostIP); err == nil && q.Addr().Is4() && d.cfg.Range.Contains(q.Addr()) {
			p = netip.PrefixFrom(q.Addr(), d.cfg.Range.Bits())
		} else {
			d.log.Warn("host address in host.json is not in the overlay range; allocating another", "host_ip", st.HostIP, "range", d.cfg.Range.String())
		}
	}
	if p.IsValid() {
		d.hostIPv.Store(&p)
	}
	for _, s := range st.Exposed {
		if q, err := netip.ParsePrefix(s); err == nil && d.cfg.Range.Contains(q.Addr()) {
			d.exposed = append(d.exposed, q.Masked())
		}
	}
}

// hostPrefix is the host's overlay address with the range's prefix
// length; invalid until IPAM gave it one.
func (d *Daemon) hostPrefix() netip.Prefix {
	if p := d.hostIPv.Load(); p != nil {
		return *p
	}
	return netip.Prefix{}
}

// ensureHostIP runs in the reconcile loop: it allocates the host address
// when there is none yet; it records a known one in IPAM (after a restart
// that lost ipam.db, or for --host-ip) once the ring is known; and it
// allocates another when IPAM lost it (this peer's network gave way to
// another's when it connected, so the address is in space it no longer
// owns).
func (d *Daemon) ensureHostIP() {
	if d.forgetOnStop.Load() {
		return // reset: the host leaves the network, its address with it
	}
	cur := d.hostPrefix()
	if cur.IsValid() {
		if slices.Contains(d.ipam.AddressesOf(hostID), cur.Addr()) {
			return
		}
		err := d.ipam.ClaimAfterRestart(cur.Addr(), hostID)
		if err == nil || errors.Is(err, ipam.ErrWaitingForSpace) {
			return
		}
		if d.cfg.HostIP.IsValid() {
			if msg := err.Error(); msg != d.hostClaimErr {
				d.hostClaimErr = msg
				d.log.Error("--host-ip is not recorded in IPAM; another peer may hand it out (give --host-ip another address, or none to get one from IPAM)",
					"host_ip", cur.String(), "err", d.ipamError(cur.Addr(), err))
			}
			return
		}
		d.log.Warn("the host address is no longer this peer's in IPAM; allocating another", "host_ip", cur.String(), "err", err)
	}
	addr, err := d.allocateIn(hostID, d.defaultSubnet())
	if err != nil {
		return // waiting for space; the allocator asked for it
	}
	d.adoptHostIP(netip.PrefixFrom(addr, d.cfg.Range.Bits()))
}

// adoptHostIP makes p the host's address everywhere: host.json, the
// bridge, gossip, DNS, and the exposures.
func (d *Daemon) adoptHostIP(p netip.Prefix) {
	d.exposeMu.Lock()
	defer d.exposeMu.Unlock()
	d.hostIPv.Store(&p)
	if err := d.saveHostStateLocked(); err != nil {
		d.log.Error("saving the host address", "err", err)
	}
	if h, ok := d.host.(hostAddresser); ok {
		if err := h.SetHostIP(p); err != nil {
			d.log.Error("putting the host address on the bridge", "host_ip", p.String(), "err", err)
		}
	}
	d.router.SetHostIP(p.Addr())
	if f, ok := d.planes.fast.(interface{ SetHostIP(netip.Addr) }); ok {
		f.SetHostIP(p.Addr())
	}
	if d.dns != nil && d.cfg.DNSListen == "" {
		if err := d.dns.Listen(net.JoinHostPort(p.Addr().String(), "53")); err != nil {
			d.log.Error("DNS server on the host address", "err", err)
		}
	}
	d.applyExposedLocked()
	d.log.Info("host overlay address from IPAM", "host_ip", p.String())
	d.notify("host overlay address %s", p)
}

// hostAddresser is the part of hostnet.Host that sets the host's overlay
// addresses (an interface of its own so the daemon's fakes need not have it).
type hostAddresser interface {
	SetHostIP(p netip.Prefix) error
	SetExposed(e []hostnet.Exposure) error
}

// exposureAddr is the host's address in subnet s: the host address for
// the default subnet, else the one allocated under exposeID(s).
func (d *Daemon) exposureAddr(s netip.Prefix) (netip.Addr, bool) {
	if s == d.defaultSubnet() {
		a := d.hostPrefix().Addr()
		return a, a.IsValid()
	}
	for _, a := range d.ipam.Allocations() {
		if a.ID == exposeID(s) {
			return a.Addr, true
		}
	}
	return netip.Addr{}, false
}

// applyExposedLocked hands the exposures whose address is known to the
// host networking; exposeMu held.
func (d *Daemon) applyExposedLocked() {
	h, ok := d.host.(hostAddresser)
	if !ok {
		return
	}
	var list []hostnet.Exposure
	for _, s := range d.exposed {
		if a, ok := d.exposureAddr(s); ok {
			list = append(list, hostnet.Exposure{Addr: a, From: s})
		}
	}
	if err := h.SetExposed(list); err != nil {
		d.log.Error("opening the host to the overlay", "err", err)
	}
}

// exposures lists what status shows.
func (d *Daemon) exposures() []api.Exposure {
	d.exposeMu.Lock()
	defer d.exposeMu.Unlock()
	out := []api.Exposure{}
	for _, s := range d.exposed {
		e := api.Exposure{Subnet: s.String()}
		if a, ok := d.exposureAddr(s); ok {
			e.Address = a.String()
		}
		out = append(out, e)
	}
	return out
}

// subnetArg parses the subnet of expose/hide/attach --net: "" is the
// default subnet; anything else must be a subnet inside the range.
func (d *Daemon) subnetArg(s string) (netip.Prefix, error) {
	if s == "" {
		return d.defaultSubnet(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, badRequest("subnet %q is not an IPv4 CIDR such as 10.32.0.0/12", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, badRequest("subnet %s has host bits set; did you mean %s?", p, p.Masked())
	}
	if err := d.checkSubnet(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// expose opens the host to the containers of a subnet.
func (d *Daemon) expose(req api.ExposeRequest) (api.ExposeResult, error) {
	s, err := d.subnetArg(req.Subnet)
	if err != nil {
		return api.ExposeResult{}, err
	}
	d.exposeMu.Lock()
	var addr netip.Addr
	if s == d.defaultSubnet() {
		if addr = d.hostPrefix().Addr(); !addr.IsValid() {
			d.exposeMu.Unlock()
			return api.ExposeResult{}, badRequest("this host has no overlay address yet: it is waiting for address space from its peers; retry once `weavewg status ipam` shows a range")
		}
	} else if addr, err = d.allocateIn(exposeID(s), s); err != nil {
		d.exposeMu.Unlock()
		return api.ExposeResult{}, d.subnetAllocError(s, err)
	}
	changed := !slices.Contains(d.exposed, s)
	if changed {
		d.exposed = append(d.exposed, s)
		if err := d.saveHostStateLocked(); err != nil {
			d.exposed = d.exposed[:len(d.exposed)-1]
			d.exposeMu.Unlock()
			return api.ExposeResult{}, fmt.Errorf("saving %s: %w", hostFile, err)
		}
	}
	d.applyExposedLocked()
	d.exposeMu.Unlock()
	if changed {
		d.log.Info("host exposed to the overlay", "subnet", s.String(), "address", addr.String())
	}
	return api.ExposeResult{Address: addr.String(), Subnet: s.String(), Changed: changed, Exposed: d.exposures()}, nil
}

// hide closes what expose opened and gives an isolated subnet's address
// back to IPAM.
func (d *Daemon) hide(req api.ExposeRequest) (api.ExposeResult, error) {
	s, err := d.subnetArg(req.Subnet)
	if err != nil {
		return api.ExposeResult{}, err
	}
	d.exposeMu.Lock()
	addr, _ := d.exposureAddr(s)
	i := slices.Index(d.exposed, s)
	changed := i >= 0
	if changed {
		d.exposed = slices.Delete(d.exposed, i, i+1)
		if err := d.saveHostStateLocked(); err != nil {
			d.exposed = slices.Insert(d.exposed, i, s)
			d.exposeMu.Unlock()
			return api.ExposeResult{}, fmt.Errorf("saving %s: %w", hostFile, err)
		}
	}
	// Closed before the address goes, so it is never open on an address
	// that another container may get.
	d.applyExposedLocked()
	if s != d.defaultSubnet() {
		if _, err := d.ipam.Free(exposeID(s)); err != nil {
			d.log.Warn("releasing the host's address in a hidden subnet", "subnet", s.String(), "err", err)
		}
	}
	d.exposeMu.Unlock()
	if changed {
		d.log.Info("host hidden from the overlay", "subnet", s.String())
	}
	res := api.ExposeResult{Subnet: s.String(), Changed: changed, Exposed: d.exposures()}
	if addr.IsValid() {
		res.Address = addr.String()
	}
	return res, nil
}

// hostIPString is p as status shows it: "" when there is none yet.
func hostIPString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

// hostIPText is the host address for logs and the ready line.
func (d *Daemon) hostIPText() string {
	if p := d.hostPrefix(); p.IsValid() {
		return p.String()
	}
	return "(none yet: waiting for address space)"
}

// hostIPFrom says where the host address came from.
func (d *Daemon) hostIPFrom() string {
	switch {
	case d.cfg.HostIP.IsValid():
		return "--host-ip"
	case d.hostPrefix().IsValid():
		return "ipam"
	}
	return ""
}
