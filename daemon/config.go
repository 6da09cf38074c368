package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/api"
)

// Defaults a Weave Net user would expect.
const (
	DefaultPort     = 6783
	DefaultStateDir = "/var/lib/weavewg"
	DefaultIface    = "weavewg0"
	DefaultBridge   = "weavewg"
	DefaultRange    = "10.32.0.0/12"
	ContainerIfName = "ethwe0"
)

// Config is everything `weavewg launch` accepts.
type Config struct {
	Nickname  string
	Port      uint16
	Password  string // "" means the network is open to anyone who reaches the port
	StateDir  string
	APISocket string
	Iface     string
	Bridge    string
	MTU       int // 0: derived from the underlay (mtu.go)
	// HostIP is this host's overlay address on the bridge, claimed in
	// IPAM (--host-ip). Invalid means IPAM allocates one (expose.go).
	HostIP netip.Prefix
	Range  netip.Prefix
	// DefaultSubnet is where addresses come from when no subnet is asked
	// for (--ipalloc-default-subnet); invalid means the whole Range, and
	// then there are no isolated subnets (subnet.go).
	DefaultSubnet netip.Prefix
	Peers         []string // HOST[:PORT] to connect to at start

	// DNS. NoDNS turns the name server off.
	NoDNS         bool
	DNSDomain     string        // "" means weave.local.
	DNSTTL        time.Duration // 0 means 1 s
	DNSUpstreams  []string      // overrides DNSResolvConf
	DNSResolvConf string        // "" means /etc/resolv.conf
	DNSListen     string        // "" means HOST_IP:53

	// MulticastLinkLocal replicates 224.0.0.0/24 (mDNS, say) to the other
	// hosts with containers; off, it stays on its host
	// (--multicast-link-local).
	MulticastLinkLocal bool

	// TrustedSubnets are underlay subnets where traffic between peers may
	// go unencrypted through kernel VXLAN (--trusted-subnets; fastpath.go).
	TrustedSubnets []netip.Prefix
	// Datapath is --datapath: auto (""), kernel or userspace (kernel.go).
	Datapath string

	// IdleAfter is how long a pair may carry no data before its probes,
	// keepalives and ICE pause (package reach); 0: reach.DefaultIdleAfter,
	// negative: never.
	IdleAfter time.Duration

	// ConnLimit is --conn-limit, the most control connections this peer
	// holds (0: discovery.DefaultConnLimit; discovery/connlimit.go).
	ConnLimit int
	// ReclaimAfter, when positive, hands over the address space of peers
	// unreachable that long, as rmpeer would (--reclaim-after).
	ReclaimAfter time.Duration
	// Docker configures the Docker plugin (docker.go).
	Docker DockerConfig
	// IPAMInMemory keeps the allocator's state in memory only (tests).
	IPAMInMemory bool

	// Admission is set when this start follows `weavewg join`: the network
	// to record. Peers then holds the token's members.
	Admission *discovery.JoinResult
	// Notify, if set, is told what a person waiting at the terminal wants
	// to know: the join line of a new network, space received, ready.
	Notify func(msg string)
	// Terminal, if set, prints to the person's terminal and nowhere else;
	// launch sets it only when its standard output is a terminal. Secrets
	// meant for that person (the first join token) go only here, never to
	// Notify, which may be a log or a journal.
	Terminal func(msg string)
	Logger   *slog.Logger
	// WGUAPIDir is where the WireGuard device's UAPI socket IFACE.sock is
	// made, for `wg show` (tunnel.DefaultUAPIDir on a host; the test bed
	// gives each host its own). Empty: no socket.
	WGUAPIDir string
	// MetricsAddr is HOST:PORT to serve Prometheus metrics on over TCP
	// (GET /metrics); empty: only on the API socket.
	MetricsAddr string

	// Build is the binary's version, reported by status.
	Build api.Build

	// ForceRange allows an overlay range outside private (RFC 1918) and
	// shared (RFC 6598, CGNAT) space; special-purpose space (loopback,
	// multicast, this-network, link-local, reserved) is refused anyway.
	ForceRange bool
}

// Address space an overlay range may use without --force-range, and space
// it may never use: there the kernel, or every router, treats addresses
// specially and the overlay could not work.
var (
	privateSpace = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("100.64.0.0/10"),
	}
	specialSpace = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("240.0.0.0/4"),
	}
)

// checkRangeSpace refuses a range in special-purpose space, and outside
// private or CGNAT space unless forced.
func checkRangeSpace(r netip.Prefix, force bool) error {
	for _, s := range specialSpace {
		if s.Overlaps(r) {
			return fmt.Errorf("overlay range %s overlaps %s, special-purpose address space; use private space such as 10.32.0.0/12", r, s)
		}
	}
	if force {
		return nil
	}
	for _, s := range privateSpace {
		if s.Bits() <= r.Bits() && s.Contains(r.Addr()) {
			return nil
		}
	}
	return fmt.Errorf("overlay range %s is not private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) space; its addresses belong to someone on the Internet (--force-range if you own them)", r)
}

// checkRangeFree refuses a range that overlaps the subnet of a local
// interface (other than weavewg's own TUN and bridge): the host's routes
// to that subnet and the overlay's would fight, and one of the two
// networks would become unreachable.
func checkRangeFree(r netip.Prefix, own ...string) error {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil // nothing to compare with; the kernel will say
	}
	for _, ifc := range ifs {
		if slices.Contains(own, ifc.Name) || strings.HasPrefix(ifc.Name, "vethw") {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			bits, _ := ipn.Mask.Size()
			if !ok || !ip.Unmap().Is4() {
				continue
			}
			p := netip.PrefixFrom(ip.Unmap(), bits).Masked()
			if p.Overlaps(r) {
				return fmt.Errorf("overlay range %s overlaps %s on interface %s; choose another range (--ipalloc-range)", r, p, ifc.Name)
			}
		}
	}
	return nil
}

func (c *Config) validate() error {
	if c.Port == 0 {
		return errors.New("--port must be 1-65535")
	}
	if c.StateDir == "" || c.APISocket == "" || c.Iface == "" || c.Bridge == "" {
		return errors.New("--state-dir, --api-socket, --iface and --bridge must not be empty")
	}
	if len(c.Iface) > 15 || len(c.Bridge) > 15 {
		return errors.New("interface names are at most 15 characters")
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65000) {
		return fmt.Errorf("--mtu %d is out of range (576-65000; leave it out to derive it from the underlay)", c.MTU)
	}
	if !c.Range.IsValid() || !c.Range.Addr().Is4() || c.Range.Bits() > 30 || c.Range != c.Range.Masked() {
		return fmt.Errorf("overlay range %s must be an IPv4 network prefix of /30 or larger, e.g. 10.32.0.0/12", c.Range)
	}
	if err := checkRangeSpace(c.Range, c.ForceRange); err != nil {
		return err
	}
	if c.HostIP.IsValid() {
		if c.HostIP.Bits() != c.Range.Bits() || !c.Range.Contains(c.HostIP.Addr()) {
			return fmt.Errorf("--host-ip %s must be an address inside %s with the same prefix length (e.g. %s)",
				c.HostIP, c.Range, netip.PrefixFrom(c.Range.Addr().Next(), c.Range.Bits()))
		}
		if c.HostIP.Addr() == c.Range.Addr() || c.HostIP.Addr() == lastAddr(c.Range) {
			return fmt.Errorf("--host-ip %s is the network or broadcast address of %s", c.HostIP.Addr(), c.Range)
		}
	}
	switch c.Datapath {
	case "":
		c.Datapath = DatapathAuto
	case DatapathAuto, DatapathKernel, DatapathUserspace:
	default:
		return fmt.Errorf("--datapath %q: want auto, kernel or userspace", c.Datapath)
	}
	if err := validateDefaultSubnet(c.DefaultSubnet, c.Range); err != nil {
		return err
	}
	if c.HostIP.IsValid() && c.DefaultSubnet.IsValid() && !c.DefaultSubnet.Contains(c.HostIP.Addr()) {
		return fmt.Errorf("--host-ip %s must lie in the default subnet %s", c.HostIP.Addr(), c.DefaultSubnet)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (uint32(1)<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}
