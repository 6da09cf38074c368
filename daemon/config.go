package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
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
	// HostIP is this host's overlay address on the bridge. Invalid means
	// derive one from the public key inside Range.
	HostIP netip.Prefix
	Range  netip.Prefix
	Peers  []string // HOST[:PORT] to connect to at start

	// DNS. NoDNS turns the name server off.
	NoDNS         bool
	DNSDomain     string        // "" means weave.local.
	DNSTTL        time.Duration // 0 means 1 s
	DNSUpstreams  []string      // overrides DNSResolvConf
	DNSResolvConf string        // "" means /etc/resolv.conf
	DNSListen     string        // "" means HOST_IP:53

	// TrustedSubnets are underlay subnets where traffic between peers may
	// go unencrypted through kernel VXLAN (--trusted-subnets; fastpath.go).
	TrustedSubnets []netip.Prefix

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
	if c.HostIP.IsValid() {
		if c.HostIP.Bits() != c.Range.Bits() || !c.Range.Contains(c.HostIP.Addr()) {
			return fmt.Errorf("--host-ip %s must be an address inside %s with the same prefix length (e.g. %s)",
				c.HostIP, c.Range, netip.PrefixFrom(c.Range.Addr().Next(), c.Range.Bits()))
		}
		if c.HostIP.Addr() == c.Range.Addr() || c.HostIP.Addr() == lastAddr(c.Range) {
			return fmt.Errorf("--host-ip %s is the network or broadcast address of %s", c.HostIP.Addr(), c.Range)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// derivedHostIP picks an address for the host from its public key, so that
// restarts keep it. It is a stopgap until IPAM hands out host addresses:
// collisions are possible (one in a million per pair in a /12) and are
// detected and reported by the daemon rather than silently routed.
func derivedHostIP(r netip.Prefix, pub key.Public) netip.Prefix {
	h := blake2s.Sum256(pub[:])
	size := uint32(1) << (32 - r.Bits())
	off := 1 + binary.BigEndian.Uint32(h[:4])%(size-2)
	base := r.Addr().As4()
	v := binary.BigEndian.Uint32(base[:]) + off
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], v)
	return netip.PrefixFrom(netip.AddrFrom4(out), r.Bits())
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (uint32(1)<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}
