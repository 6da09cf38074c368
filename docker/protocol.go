package docker

// The JSON of Docker's plugin protocol (libnetwork remote driver and remote
// IPAM), with the field names Docker uses. Only what weavewg reads or
// answers is declared; unknown fields are ignored.

// Interfaces named in the Plugin.Activate handshake.
const (
	ifaceNetwork = "NetworkDriver"
	ifaceIPAM    = "IpamDriver"
)

// MediaType is the Content-Type of every answer.
const MediaType = "application/vnd.docker.plugins.v1+json"

// Option keys Docker puts in request options.
const (
	optRequestAddressType = "RequestAddressType"
	optGateway            = "com.docker.network.gateway"
	optGeneric            = "com.docker.network.generic"
)

// AddressSpace is the one address space the IPAM driver has, local and
// global alike.
const AddressSpace = "weavewg"

// ContainerIfPrefix is the DstPrefix of Join: Docker names the interface
// ethwe0 (the prefix plus an index) inside the container.
const ContainerIfPrefix = "ethwe"

// anyPool is the pool answered to a RequestPool without --subnet. Docker
// checks a pool it did not ask for against the host's routes and asks again
// while they overlap; the overlay range always overlaps the bridge's route,
// so the range itself would make it ask forever. 0.0.0.0/0 is the one pool
// it does not check; the addresses still carry the overlay prefix length.
const anyPool = "0.0.0.0/0"

type errorResponse struct {
	Err string
}

type activateResponse struct {
	Implements []string
}

type capabilitiesResponse struct {
	Scope             string
	ConnectivityScope string
}

type ipamCapabilitiesResponse struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

type addressSpacesResponse struct {
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type ipamData struct {
	AddressSpace string
	Pool         string
	Gateway      string
	AuxAddresses map[string]string
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type networkRequest struct {
	NetworkID string
}

type allocateNetworkRequest struct {
	NetworkID string
	Options   map[string]string
}

type allocateNetworkResponse struct {
	Options map[string]string
}

type endpointInterface struct {
	Address     string `json:",omitempty"`
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type createEndpointResponse struct {
	Interface *endpointInterface `json:",omitempty"`
}

type endpointRequest struct {
	NetworkID  string
	EndpointID string
}

type endpointInfoResponse struct {
	Value map[string]any
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type interfaceName struct {
	SrcName   string
	DstPrefix string
}

type staticRoute struct {
	Destination string
	RouteType   int
	NextHop     string `json:",omitempty"`
}

type joinResponse struct {
	InterfaceName         interfaceName
	Gateway               string        `json:",omitempty"`
	StaticRoutes          []staticRoute `json:",omitempty"`
	DisableGatewayService bool
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type releasePoolRequest struct {
	PoolID string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	Address string
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}
