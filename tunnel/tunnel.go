// Package tunnel owns the data plane: the TUN device driven by wireguard-go,
// the one UDP socket (a conn.Bind that sorts WireGuard from everything else),
// the bridge containers hang off, the routes into the TUN, and attaching
// network namespaces to the bridge.
package tunnel

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Config is what a Tunnel needs.
type Config struct {
	Private key.Private
	Secret  key.Secret   // every peer's WireGuard preshared key
	Port    uint16       // UDP port
	Iface   string       // TUN name, e.g. weavewg0
	Bridge  string       // bridge name, e.g. weavewg
	MTU     int          // tunnel MTU; every veth gets it too
	HostIP  netip.Prefix // the bridge's address with the overlay prefix length, e.g. 10.32.0.1/12
	Logger  *slog.Logger
}

// PeerConfig is one WireGuard peer as the control plane wants it.
type PeerConfig struct {
	Key        key.Public
	Endpoint   netip.AddrPort // invalid: leave the endpoint as wireguard-go learned it
	AllowedIPs []netip.Prefix
}

// PeerStats is what wireguard-go reports of one peer.
type PeerStats struct {
	Endpoint      netip.AddrPort
	LastHandshake time.Time // zero if none
	RxBytes       uint64
	TxBytes       uint64
}

// AttachSpec says which namespace to attach and with which address.
type AttachSpec struct {
	Netns  string       // path of a network namespace
	IP     netip.Prefix // address with the overlay prefix length
	IfName string       // name inside the namespace; "" means ethwe0
}

// Attached describes an attachment, enough to adopt it again after a restart.
type Attached struct {
	Netns    string
	IP       netip.Prefix
	IfName   string
	HostVeth string
	MTU      int
}

// Tunnel is the data plane of one host.
type Tunnel struct{}

// New creates the TUN device and wireguard-go device, binds the UDP port,
// creates (or re-adopts) the bridge with HostIP, and brings everything up.
func New(cfg Config) (*Tunnel, error) { panic("not implemented") }

// Close tears down the device, its routes, the TUN and the bridge.
func (t *Tunnel) Close() error { panic("not implemented") }

// SetPeers makes the WireGuard peers and the routes into the TUN exactly peers.
func (t *Tunnel) SetPeers(peers []PeerConfig) error { panic("not implemented") }

// PeerStats reports every WireGuard peer.
func (t *Tunnel) PeerStats() map[key.Public]PeerStats { panic("not implemented") }

// Counters reports datagram sorting and drop counters by name.
func (t *Tunnel) Counters() map[string]uint64 { panic("not implemented") }

// Attach gives a namespace an interface on the bridge.
func (t *Tunnel) Attach(spec AttachSpec) (Attached, error) { panic("not implemented") }

// Adopt puts a previously attached namespace's host veth back on the bridge
// after a restart; it fails if the namespace or veth is gone.
func (t *Tunnel) Adopt(a Attached) error { panic("not implemented") }

// Detach removes an attachment's veth pair.
func (t *Tunnel) Detach(a Attached) error { panic("not implemented") }
