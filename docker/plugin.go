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
// addresses unique, so no cluster store is needed. CreateEndpoint makes a
// veth pair whose host end is on weavewg's bridge; Join hands the other end
// to Docker, which moves it into the container as ethwe0. Container names
// are found through the Docker API after Join and registered in weave.local.
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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Host is what the plugin needs of the weavewg daemon. Methods may be called
// concurrently.
type Host interface {
	// AllocateAddress reserves an address in weavewg's IPAM for id, which
	// is unique per allocation: want if valid (failing if it is not free
	// here), else the next free one, waiting for space from other peers
	// until ctx ends. The prefix length is the overlay range's. Calling it
	// again with the same id and address is a no-op.
	AllocateAddress(ctx context.Context, id string, want netip.Addr) (netip.Prefix, error)
	// FreeAddress releases the addresses of id; an id with none is fine.
	FreeAddress(id string) error
	// CreateVeth makes a veth pair in the host's network namespace: host
	// end on the bridge and up, both ends with the tunnel MTU. It returns
	// the MAC address of the peer end.
	CreateVeth(hostName, peerName string) (net.HardwareAddr, error)
	// AdoptVeth puts an existing host end back on the bridge (after a
	// restart); it fails if the veth is gone.
	AdoptVeth(hostName string) error
	// DeleteVeth removes a veth pair by its host end; a pair already gone
	// is fine.
	DeleteVeth(hostName string) error
	// AddName registers name (in weave.local) for addr under origin.
	AddName(name string, addr netip.Addr, origin string) error
	// RemoveNames withdraws every name registered under origin.
	RemoveNames(origin string)
	// HostIP is the host's overlay address, with the range's prefix length.
	HostIP() netip.Prefix
	// Range is the overlay range.
	Range() netip.Prefix
}

// Config configures a Plugin.
type Config struct {
	Host Host
	// StateFile keeps networks, endpoints and addresses across restarts.
	StateFile string
	// DockerSocket is the Docker API socket, asked which container owns an
	// endpoint; "" means container names are not registered.
	DockerSocket string
	// NameTimeout bounds how long a name is looked for after Join (default
	// 30 s).
	NameTimeout time.Duration
	Logger      *slog.Logger
}

// Plugin serves both drivers.
type Plugin struct {
	cfg    Config
	host   Host
	log    *slog.Logger
	poolID string
	docker *Client // nil without a Docker socket

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

// Restore re-claims the recorded addresses, puts the recorded endpoints'
// veths back on the bridge and re-registers their names: the containers
// of a restarted daemon keep their connectivity.
func (p *Plugin) Restore(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, id := range p.st.Addresses {
		a, err := netip.ParseAddr(addr)
		if err == nil {
			_, err = p.host.AllocateAddress(ctx, id, a)
		}
		if err != nil {
			p.log.Warn("could not re-claim a Docker address", "ip", addr, "err", err)
		}
	}
	for id, ep := range p.st.Endpoints {
		if err := p.host.AdoptVeth(ep.HostVeth); err != nil {
			// Its container is gone or going; Docker's Leave and
			// DeleteEndpoint will clean up.
			p.log.Warn("endpoint veth not re-adopted", "endpoint", short(id), "host_veth", ep.HostVeth, "err", err)
			continue
		}
		if ep.Name != "" {
			p.addNameLocked(id, ep)
		} else if ep.Joined {
			p.startLookupLocked(id, ep)
		}
		p.log.Info("re-adopted Docker endpoint", "endpoint", short(id), "ip", ep.Address, "name", ep.Name)
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
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("plugin socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("something answers on %s already (another weavewg?)", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
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

// --- network driver ---

func (p *Plugin) createNetwork(r createNetworkRequest) (any, error) {
	if r.NetworkID == "" {
		return nil, errors.New("NetworkID is missing")
	}
	if len(r.IPv6Data) > 0 {
		return nil, errors.New("weavewg networks are IPv4 only (drop --ipv6)")
	}
	if len(r.IPv4Data) == 0 {
		return nil, fmt.Errorf("no IPv4 pool: create the network with --ipam-driver weavewg")
	}
	for _, d := range r.IPv4Data {
		if d.Pool != anyPool && d.Pool != p.host.Range().String() {
			return nil, fmt.Errorf("pool %s is not weavewg's: create the network with --ipam-driver weavewg (addresses come from the overlay range %s)", d.Pool, p.host.Range())
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.st.Networks[r.NetworkID]; ok {
		return struct{}{}, nil
	}
	p.st.Networks[r.NetworkID] = network{Pool: r.IPv4Data[0].Pool, Gateway: r.IPv4Data[0].Gateway}
	if err := p.saveLocked(); err != nil {
		delete(p.st.Networks, r.NetworkID)
		return nil, err
	}
	p.log.Info("Docker network created", "network", short(r.NetworkID))
	return struct{}{}, nil
}

func (p *Plugin) deleteNetwork(r networkRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	old := p.st.Networks[r.NetworkID]
	delete(p.st.Networks, r.NetworkID)
	if err := p.saveLocked(); err != nil {
		p.st.Networks[r.NetworkID] = old
		return nil, err
	}
	p.log.Info("Docker network deleted", "network", short(r.NetworkID))
	return struct{}{}, nil
}

func (p *Plugin) knownNetworkLocked(id string) error {
	if id == "" {
		return errors.New("NetworkID is missing")
	}
	if _, ok := p.st.Networks[id]; !ok {
		return fmt.Errorf("network %s is not a weavewg network here", short(id))
	}
	return nil
}

// vethNames are the names of an endpoint's veth pair: "vethwl" (host end)
// and "vethwg" (the end Docker moves into the container) and up to 9
// characters of the endpoint ID, 15 at most.
func vethNames(endpointID string) (host, peer string, err error) {
	if endpointID == "" {
		return "", "", errors.New("EndpointID is missing")
	}
	for _, c := range endpointID {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return "", "", fmt.Errorf("EndpointID %q has characters other than letters and digits", endpointID)
		}
	}
	id := endpointID
	if len(id) > 9 {
		id = id[:9]
	}
	return "vethwl" + id, "vethwg" + id, nil
}

func (p *Plugin) createEndpoint(r createEndpointRequest) (any, error) {
	hostVeth, peerVeth, err := vethNames(r.EndpointID)
	if err != nil {
		return nil, err
	}
	if r.Interface == nil || r.Interface.Address == "" {
		return nil, errors.New("Interface.Address is missing: create the network with --ipam-driver weavewg")
	}
	if r.Interface.AddressIPv6 != "" {
		return nil, errors.New("weavewg networks are IPv4 only")
	}
	addr, err := netip.ParsePrefix(r.Interface.Address)
	if err != nil {
		return nil, fmt.Errorf("Interface.Address %q: %v", r.Interface.Address, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	if _, ok := p.st.Addresses[addr.Addr().String()]; !ok {
		return nil, fmt.Errorf("address %s was not allocated by weavewg: create the network with --ipam-driver weavewg", addr.Addr())
	}
	if _, ok := p.st.Endpoints[r.EndpointID]; ok {
		return nil, fmt.Errorf("endpoint %s exists already", short(r.EndpointID))
	}
	for id, ep := range p.st.Endpoints {
		if ep.HostVeth == hostVeth {
			return nil, fmt.Errorf("endpoint %s's veth name %s is taken by endpoint %s", short(r.EndpointID), hostVeth, short(id))
		}
	}
	// A veth of that name that no endpoint records is left over from a
	// crash between creating it and saving the state.
	p.host.DeleteVeth(hostVeth)
	mac, err := p.host.CreateVeth(hostVeth, peerVeth)
	if err != nil {
		return nil, err
	}
	p.st.Endpoints[r.EndpointID] = endpoint{NetworkID: r.NetworkID, Address: addr.String(), HostVeth: hostVeth, PeerVeth: peerVeth}
	if err := p.saveLocked(); err != nil {
		delete(p.st.Endpoints, r.EndpointID)
		p.host.DeleteVeth(hostVeth)
		return nil, err
	}
	p.log.Info("Docker endpoint created", "endpoint", short(r.EndpointID), "ip", addr.String(), "host_veth", hostVeth)
	res := createEndpointResponse{}
	if r.Interface.MacAddress == "" && mac != nil {
		// Docker sets what it supplied itself; echoing it is an error.
		res.Interface = &endpointInterface{MacAddress: mac.String()}
	}
	return res, nil
}

func (p *Plugin) deleteEndpoint(r endpointRequest) (any, error) {
	if _, _, err := vethNames(r.EndpointID); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.st.Endpoints[r.EndpointID]
	if !ok {
		return struct{}{}, nil // gone already: deleting is idempotent
	}
	if ep.NetworkID != r.NetworkID {
		return nil, fmt.Errorf("endpoint %s is on network %s, not %s", short(r.EndpointID), short(ep.NetworkID), short(r.NetworkID))
	}
	p.stopLookupLocked(r.EndpointID)
	p.host.RemoveNames(origin(r.EndpointID))
	if err := p.host.DeleteVeth(ep.HostVeth); err != nil {
		p.log.Warn("removing endpoint veth", "host_veth", ep.HostVeth, "err", err)
	}
	delete(p.st.Endpoints, r.EndpointID)
	if err := p.saveLocked(); err != nil {
		return nil, err
	}
	p.log.Info("Docker endpoint deleted", "endpoint", short(r.EndpointID), "ip", ep.Address)
	return struct{}{}, nil
}

func (p *Plugin) endpointInfo(r endpointRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.st.Endpoints[r.EndpointID]
	if !ok {
		return nil, fmt.Errorf("endpoint %q is not known here", r.EndpointID)
	}
	return endpointInfoResponse{Value: map[string]any{"host_veth": ep.HostVeth, "address": ep.Address, "name": ep.Name}}, nil
}

func (p *Plugin) join(r joinRequest) (any, error) {
	if r.SandboxKey == "" {
		return nil, errors.New("SandboxKey is missing")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.st.Endpoints[r.EndpointID]
	if !ok || ep.NetworkID != r.NetworkID {
		return nil, fmt.Errorf("endpoint %q is not known on network %s", r.EndpointID, short(r.NetworkID))
	}
	if !ep.Joined {
		ep.Joined = true
		p.st.Endpoints[r.EndpointID] = ep
		if err := p.saveLocked(); err != nil {
			ep.Joined = false
			p.st.Endpoints[r.EndpointID] = ep
			return nil, err
		}
	}
	p.startLookupLocked(r.EndpointID, ep)
	// No gateway: the overlay is reached through ethwe0's own prefix, and
	// Docker gives the container its usual way out (docker_gwbridge), as
	// with Weave Net.
	return joinResponse{InterfaceName: interfaceName{SrcName: ep.PeerVeth, DstPrefix: ContainerIfPrefix}}, nil
}

func (p *Plugin) leave(r endpointRequest) (any, error) {
	if _, _, err := vethNames(r.EndpointID); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	ep, ok := p.st.Endpoints[r.EndpointID]
	if !ok {
		return struct{}{}, nil
	}
	p.stopLookupLocked(r.EndpointID)
	p.host.RemoveNames(origin(r.EndpointID))
	if ep.Joined || ep.Name != "" {
		ep.Joined, ep.Name, ep.ContainerID = false, "", ""
		p.st.Endpoints[r.EndpointID] = ep
		if err := p.saveLocked(); err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}

func (p *Plugin) externalConnectivity(r endpointRequest) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.knownNetworkLocked(r.NetworkID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// --- IPAM driver ---

func (p *Plugin) requestPool(r requestPoolRequest) (any, error) {
	if r.V6 {
		return nil, errors.New("weavewg's IPAM is IPv4 only")
	}
	if r.AddressSpace != "" && r.AddressSpace != AddressSpace {
		return nil, fmt.Errorf("unknown address space %q (weavewg's is %q)", r.AddressSpace, AddressSpace)
	}
	rng := p.host.Range().String()
	pool := r.Pool
	switch pool {
	case "":
		pool = anyPool
	case rng:
	default:
		return nil, fmt.Errorf("subnet %s: weavewg allocates from its overlay range %s; omit --subnet or give that", r.Pool, rng)
	}
	if r.SubPool != "" && r.SubPool != rng {
		return nil, fmt.Errorf("ip-range %s: weavewg allocates from the whole overlay range %s; omit --ip-range", r.SubPool, rng)
	}
	return requestPoolResponse{PoolID: p.poolID, Pool: pool, Data: map[string]string{}}, nil
}

func (p *Plugin) releasePool(r releasePoolRequest) (any, error) {
	if r.PoolID != p.poolID {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	return struct{}{}, nil
}

func (p *Plugin) requestAddress(r requestAddressRequest) (any, error) {
	if r.PoolID != p.poolID {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	var want netip.Addr
	if r.Address != "" {
		a, err := netip.ParseAddr(r.Address)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("address %q is not an IPv4 address", r.Address)
		}
		want = a
	}
	hostIP := p.host.HostIP()
	if r.Options[optRequestAddressType] == optGateway {
		// The gateway is the host's own overlay address on the bridge.
		if want.IsValid() && want != hostIP.Addr() {
			return nil, fmt.Errorf("gateway %s: a weavewg network's gateway is this host's overlay address %s; omit --gateway", want, hostIP.Addr())
		}
		return requestAddressResponse{Address: hostIP.String(), Data: map[string]string{}}, nil
	}
	if want == hostIP.Addr() {
		return nil, fmt.Errorf("address %s is this host's overlay address", want)
	}
	id := "docker:" + randomID()
	if want.IsValid() {
		p.mu.Lock()
		_, taken := p.st.Addresses[want.String()]
		p.mu.Unlock()
		if taken {
			return nil, fmt.Errorf("address %s is in use", want)
		}
		id = "docker:" + want.String()
	}
	// Waiting for address space from another peer happens unlocked; the
	// id is unique, so nothing else can touch this allocation meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Second)
	defer cancel()
	addr, err := p.host.AllocateAddress(ctx, id, want)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, taken := p.st.Addresses[addr.Addr().String()]; taken {
		// A concurrent request for the same static address won; the
		// allocation is its (same id), so nothing is freed here.
		return nil, fmt.Errorf("address %s is in use", addr.Addr())
	}
	p.st.Addresses[addr.Addr().String()] = id
	if err := p.saveLocked(); err != nil {
		delete(p.st.Addresses, addr.Addr().String())
		p.host.FreeAddress(id)
		return nil, err
	}
	p.log.Info("Docker address allocated", "ip", addr.String())
	return requestAddressResponse{Address: addr.String(), Data: map[string]string{}}, nil
}

func (p *Plugin) releaseAddress(r releaseAddressRequest) (any, error) {
	if r.PoolID != p.poolID {
		return nil, fmt.Errorf("unknown pool %q", r.PoolID)
	}
	a, err := netip.ParseAddr(r.Address)
	if err != nil {
		return nil, fmt.Errorf("address %q is not an IP address", r.Address)
	}
	if a == p.host.HostIP().Addr() {
		return struct{}{}, nil // the gateway: never allocated
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.st.Addresses[a.String()]
	if !ok {
		return nil, fmt.Errorf("address %s was not allocated by weavewg's Docker IPAM", a)
	}
	for eid, ep := range p.st.Endpoints {
		if pr, err := netip.ParsePrefix(ep.Address); err == nil && pr.Addr() == a {
			return nil, fmt.Errorf("address %s is still used by endpoint %s", a, short(eid))
		}
	}
	// The record goes first: a crash in between leaks the address rather
	// than leaving it free and recorded as ours.
	delete(p.st.Addresses, a.String())
	if err := p.saveLocked(); err != nil {
		p.st.Addresses[a.String()] = id
		return nil, err
	}
	if err := p.host.FreeAddress(id); err != nil {
		p.log.Warn("releasing Docker address", "ip", a, "err", err)
	}
	p.log.Info("Docker address released", "ip", a)
	return struct{}{}, nil
}

// --- container names ---

func origin(endpointID string) string { return "docker:" + endpointID }

// startLookupLocked asks Docker, in the background, which container owns
// the endpoint, and registers its name.
func (p *Plugin) startLookupLocked(id string, ep endpoint) {
	if p.docker == nil || p.closed {
		return
	}
	p.stopLookupLocked(id)
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.NameTimeout)
	p.lookup[id] = cancel
	p.wg.Go(func() {
		defer cancel()
		name, cid, err := p.docker.EndpointContainer(ctx, ep.NetworkID, id)
		p.mu.Lock()
		defer p.mu.Unlock()
		if ctx.Err() == context.Canceled {
			return // left or deleted meanwhile
		}
		delete(p.lookup, id)
		if err != nil {
			p.log.Warn("no container name for endpoint", "endpoint", short(id), "err", err)
			return
		}
		cur, ok := p.st.Endpoints[id]
		if !ok || !cur.Joined {
			return
		}
		cur.Name, cur.ContainerID = name, cid
		p.st.Endpoints[id] = cur
		if err := p.saveLocked(); err != nil {
			p.log.Warn("saving Docker state", "err", err)
		}
		p.addNameLocked(id, cur)
	})
}

func (p *Plugin) stopLookupLocked(id string) {
	if cancel, ok := p.lookup[id]; ok {
		cancel()
		delete(p.lookup, id)
	}
}

func (p *Plugin) addNameLocked(id string, ep endpoint) {
	a, err := netip.ParsePrefix(ep.Address)
	if err != nil {
		return
	}
	if err := p.host.AddName(ep.Name, a.Addr(), origin(id)); err != nil {
		p.log.Warn("container name not registered in DNS", "name", ep.Name, "err", err)
		return
	}
	p.log.Info("container name registered", "name", ep.Name, "ip", a.Addr())
}

func (p *Plugin) saveLocked() error {
	if err := p.st.save(p.cfg.StateFile); err != nil {
		return fmt.Errorf("saving the plugin state: %w", err)
	}
	return nil
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
