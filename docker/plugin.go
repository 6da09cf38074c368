// Package docker serves Docker's plugin protocol for weavewg: one socket that
// is both a libnetwork remote network driver and a remote IPAM driver.
//
// Every call is an HTTP POST of JSON to /Interface.Method (see protocol.go
// for the messages). Answers are JSON with Content-Type MediaType; a failure
// is HTTP 500 with {"Err": "..."}, which both of Docker's clients read as an
// error; a path that is not a method is 404. A call with an empty body is a
// call with no arguments, as Docker sends GetCapabilities.
//
// The driver is local-scope: every Docker host creates the network for
// itself, and weavewg's own IPAM (one ring across all hosts) keeps the
// addresses unique, so no cluster store is needed. Each address handed to
// Docker is an attachment of the daemon's attachment service (origin
// docker), which persists it, publishes it to the mesh and registers its
// name; the plugin keeps only Docker's networks in its own file.
// CreateEndpoint makes a veth pair whose host end is on weavewg's bridge;
// Join hands the other end to Docker, which moves it into the container as
// ethwe0. Container names are found through the Docker API after Join.
//
// Files by role: plugin.go (this: the socket and its routes), network.go
// (the network driver), ipam.go (the IPAM driver), names.go (container
// names), client.go (the Docker engine client), state.go (networks).
package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/weavewg/weavewg/types/attachment"
	"github.com/weavewg/weavewg/types/unixhttp"
)

// Host is what the plugin needs of the weavewg daemon: its attachment
// service and its bridge. Methods may be called concurrently and never call
// back into the plugin.
type Host interface {
	// Reserve records attachment id (origin docker) and allocates its
	// address in weavewg's IPAM: want if valid (failing if it is not free
	// here), else the next free one, waiting for space from other peers
	// until ctx ends, in subnet (an isolated subnet; invalid: the default
	// one). The prefix length is the subnet's.
	Reserve(ctx context.Context, id string, want netip.Addr, subnet netip.Prefix) (netip.Prefix, error)
	// CheckSubnet refuses a subnet that is not a usable isolated subnet
	// (or the default one), saying why.
	CheckSubnet(p netip.Prefix) error
	// Release removes attachment id and frees its address; an unknown id
	// is fine.
	Release(id string) error
	// Update changes attachment id with f (which must not change its ID,
	// origin or address) and records the change; the mesh and DNS follow.
	Update(id string, f func(*attachment.Record)) error
	// Attachments lists the Docker attachments.
	Attachments() []attachment.Record
	// CreateVeth makes a veth pair in the host's network namespace: host
	// end on the bridge and up, both ends with the tunnel MTU. It returns
	// the MAC address of the peer end.
	CreateVeth(hostName, peerName string) (net.HardwareAddr, error)
	// DeleteVeth removes a veth pair by its host end; a pair already gone
	// is fine.
	DeleteVeth(hostName string) error
	// HostIP is the host's overlay address, with the range's prefix length.
	HostIP() netip.Prefix
	// Range is the overlay range.
	Range() netip.Prefix
}

// Config configures a Plugin.
type Config struct {
	Host Host
	// StateFile keeps Docker's weavewg networks across restarts.
	StateFile string
	// DockerSocket is the Docker API socket, asked which container owns an
	// endpoint; "" means container names are not registered.
	DockerSocket string
	// NameTimeout bounds how long a name is looked for after Join (default
	// 30 s).
	NameTimeout time.Duration
	// AddressWait bounds how long RequestAddress waits for address space
	// while the peer joins (default 30 s).
	AddressWait time.Duration
	Logger      *slog.Logger
}

// Plugin serves both drivers.
type Plugin struct {
	cfg    Config
	host   Host
	log    *slog.Logger
	poolID string
	docker *Client // nil without a Docker socket

	// mu serialises calls that change endpoints, and the state file; it is
	// taken before the Host's own lock (Host never calls back).
	mu     sync.Mutex
	st     *state
	lookup map[string]context.CancelFunc // endpoint → its name lookup
	wg     sync.WaitGroup
	closed bool
}

// New loads the state file and returns a plugin; Restore and Handler follow.
func New(cfg Config) (*Plugin, error) {
	if cfg.Host == nil || cfg.StateFile == "" {
		return nil, errors.New("docker plugin: Host and StateFile are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NameTimeout == 0 {
		cfg.NameTimeout = 30 * time.Second
	}
	if cfg.AddressWait == 0 {
		cfg.AddressWait = 30 * time.Second
	}
	st, err := loadState(cfg.StateFile)
	if err != nil {
		return nil, err
	}
	p := &Plugin{
		cfg: cfg, host: cfg.Host, log: cfg.Logger, st: st,
		poolID: "weavewg-" + cfg.Host.Range().String(),
		lookup: map[string]context.CancelFunc{},
	}
	if cfg.DockerSocket != "" {
		p.docker = NewClient(cfg.DockerSocket)
	}
	return p, nil
}

// Restore looks up the names of joined endpoints that had none when the
// daemon stopped. (The daemon re-adopted the endpoints' veths and
// addresses, and re-registered the names it knew, before the plugin
// started.)
func (p *Plugin) Restore(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rec := range p.host.Attachments() {
		if rec.Endpoint != "" && rec.Joined && rec.Name == "" {
			p.startLookupLocked(rec.Endpoint, rec)
		}
	}
}

// Close stops the name lookups. The veths and state stay for the next start.
func (p *Plugin) Close() {
	p.mu.Lock()
	p.closed = true
	for _, cancel := range p.lookup {
		cancel()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// Listen serves the plugin on a unix socket at path, replacing a stale
// socket. Remove the socket when done: a socket nobody answers makes
// Docker hang.
func (p *Plugin) Listen(path string) (net.Listener, error) {
	ln, err := unixhttp.Listen(path, 0o660)
	if errors.Is(err, unixhttp.ErrInUse) {
		return nil, fmt.Errorf("%w (another weavewg?)", err)
	}
	return ln, err
}

// Handler is the HTTP handler of both drivers.
func (p *Plugin) Handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(name string, f func([]byte) (any, error)) {
		mux.HandleFunc("/"+name, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				reply(w, http.StatusMethodNotAllowed, errorResponse{Err: name + " takes POST"})
				return
			}
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				reply(w, http.StatusInternalServerError, errorResponse{Err: "reading request: " + err.Error()})
				return
			}
			res, err := f(body)
			if err != nil {
				p.log.Warn("docker plugin call failed", "call", name, "err", err)
				reply(w, http.StatusInternalServerError, errorResponse{Err: err.Error()})
				return
			}
			p.log.Debug("docker plugin call", "call", name)
			reply(w, http.StatusOK, res)
		})
	}
	noArgs := func(v any) func([]byte) (any, error) { return func([]byte) (any, error) { return v, nil } }
	empty := struct{}{}

	handle("Plugin.Activate", noArgs(activateResponse{Implements: []string{ifaceNetwork, ifaceIPAM}}))

	handle("NetworkDriver.GetCapabilities", noArgs(capabilitiesResponse{Scope: "local", ConnectivityScope: "local"}))
	handle("NetworkDriver.CreateNetwork", call(p.createNetwork))
	handle("NetworkDriver.DeleteNetwork", call(p.deleteNetwork))
	handle("NetworkDriver.AllocateNetwork", call(func(r allocateNetworkRequest) (any, error) {
		if r.NetworkID == "" {
			return nil, errors.New("NetworkID is missing")
		}
		return allocateNetworkResponse{Options: r.Options}, nil
	}))
	handle("NetworkDriver.FreeNetwork", call(func(r networkRequest) (any, error) {
		if r.NetworkID == "" {
			return nil, errors.New("NetworkID is missing")
		}
		return empty, nil
	}))
	handle("NetworkDriver.CreateEndpoint", call(p.createEndpoint))
	handle("NetworkDriver.DeleteEndpoint", call(p.deleteEndpoint))
	handle("NetworkDriver.EndpointOperInfo", call(p.endpointInfo))
	handle("NetworkDriver.Join", call(p.join))
	handle("NetworkDriver.Leave", call(p.leave))
	handle("NetworkDriver.DiscoverNew", noArgs(empty))
	handle("NetworkDriver.DiscoverDelete", noArgs(empty))
	handle("NetworkDriver.ProgramExternalConnectivity", call(p.externalConnectivity))
	handle("NetworkDriver.RevokeExternalConnectivity", call(p.externalConnectivity))

	handle("IpamDriver.GetCapabilities", noArgs(ipamCapabilitiesResponse{}))
	handle("IpamDriver.GetDefaultAddressSpaces", noArgs(addressSpacesResponse{
		LocalDefaultAddressSpace: AddressSpace, GlobalDefaultAddressSpace: AddressSpace,
	}))
	handle("IpamDriver.RequestPool", call(p.requestPool))
	handle("IpamDriver.ReleasePool", call(p.releasePool))
	handle("IpamDriver.RequestAddress", call(p.requestAddress))
	handle("IpamDriver.ReleaseAddress", call(p.releaseAddress))
	return mux
}

// call decodes the body into a T (an empty body is a zero T) for f.
func call[T any](f func(T) (any, error)) func([]byte) (any, error) {
	return func(body []byte) (any, error) {
		var req T
		if len(strings.TrimSpace(string(body))) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, fmt.Errorf("malformed request: %v", err)
			}
		}
		return f(req)
	}
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", MediaType)
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (p *Plugin) saveLocked() error {
	if err := p.st.save(p.cfg.StateFile); err != nil {
		return fmt.Errorf("saving the plugin state: %w", err)
	}
	return nil
}

// endpointLocked finds the attachment of an endpoint.
func (p *Plugin) endpointLocked(endpointID string) (attachment.Record, bool) {
	for _, r := range p.host.Attachments() {
		if r.Endpoint == endpointID {
			return r, true
		}
	}
	return attachment.Record{}, false
}

// addressLocked finds the attachment holding an address.
func (p *Plugin) addressLocked(a netip.Addr) (attachment.Record, bool) {
	for _, r := range p.host.Attachments() {
		if pr, ok := r.Prefix(); ok && pr.Addr() == a {
			return r, true
		}
	}
	return attachment.Record{}, false
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func randomID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
