// Package discovery owns a peer's place in the mesh: control connections
// (TCP, Noise XXpsk0 keyed by the network secret), gossip of peer records,
// the topology and the routes derived from it.
package discovery

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Config is what a Router needs. Zero values get defaults noted per field.
type Config struct {
	Private  key.Private
	Secret   key.Secret
	Nickname string
	// Port is the TCP port to listen on, the UDP port advertised for
	// WireGuard, and the default port of targets given without one.
	Port uint16
	// ListenAddr overrides the listen address; "" means ":Port".
	ListenAddr string
	// HostIP is this host's overlay address, advertised in gossip.
	HostIP netip.Addr
	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
}

// Peer is one peer as known from gossip, seen from this router.
type Peer struct {
	Key       key.Public
	Nickname  string
	HostIP    netip.Addr
	Port      uint16
	Attached  []netip.Prefix
	Neighbors []key.Public // peers it reports established connections to
	Reachable bool         // a path of confirmed (two-sided) edges leads there
	Self      bool
	// Endpoint is where to send WireGuard datagrams: the IP of our established
	// control connection to it with its Port, else an IP another peer sees it
	// at. Invalid when unknown.
	Endpoint netip.AddrPort
	Direct   bool // we have an established control connection to it
}

// Connection states, as shown by status.
const (
	StateConnecting  = "connecting"
	StateEstablished = "established"
	StateFailed      = "failed"
)

// ConnState describes one control connection or connection attempt.
type ConnState struct {
	Addr     string     // HOST:PORT dialled, or the remote address of an inbound one
	Peer     key.Public // zero until the handshake has completed
	Nickname string
	Outbound bool
	State    string
	Err      string // why the last attempt failed, if it did
}

// ErrUnknownTarget is returned by Forget for an address that is not a target.
var ErrUnknownTarget = errors.New("not a connection target")

// Router is the control plane of one peer.
type Router struct{}

// New checks cfg and returns a Router that is not yet listening.
func New(cfg Config) (*Router, error) { panic("not implemented") }

// Start listens on the TCP port and starts dialling, gossip and anti-entropy.
func (r *Router) Start() error { panic("not implemented") }

// Close stops everything Start began and closes every connection.
func (r *Router) Close() error { panic("not implemented") }

// Connect adds a persistent target, dialled with backoff until forgotten.
func (r *Router) Connect(addr string) error { panic("not implemented") }

// Forget removes a target and closes its connection.
func (r *Router) Forget(addr string) error { panic("not implemented") }

// SetAttached publishes the overlay prefixes attached on this host.
func (r *Router) SetAttached(prefixes []netip.Prefix) { panic("not implemented") }

// Changes is nudged (capacity 1, never blocks the router) whenever Peers may
// have changed.
func (r *Router) Changes() <-chan struct{} { panic("not implemented") }

// Peers returns a snapshot of every known peer, self first.
func (r *Router) Peers() []Peer { panic("not implemented") }

// Connections returns a snapshot of control connections and targets.
func (r *Router) Connections() []ConnState { panic("not implemented") }

// Counters returns event and drop counters by name.
func (r *Router) Counters() map[string]uint64 { panic("not implemented") }
