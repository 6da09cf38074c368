// Package api defines the JSON documents of the daemon's local HTTP API (a unix
// socket, root only). The daemon serves them; the CLI, the test bed and any
// script reading `weavewg status --json` consume them.
//
// Compatibility rule: fields are only ever added. A consumer ignores fields it
// does not know.
package api

import "time"

// DefaultSocket is where the daemon listens and the CLI looks when neither
// --api-socket nor WEAVEWG_API_SOCKET says otherwise.
const DefaultSocket = "/run/weavewg/weavewg.sock"

// EnvSocket names the environment variable that overrides DefaultSocket.
const EnvSocket = "WEAVEWG_API_SOCKET"

// Paths served on the socket.
const (
	PathStatus  = "/v1/status"  // GET → Status
	PathConnect = "/v1/connect" // POST ConnectRequest
	PathForget  = "/v1/forget"  // POST ConnectRequest
	PathAttach  = "/v1/attach"  // POST AttachRequest → Attachment
	PathDetach  = "/v1/detach"  // POST DetachRequest
	PathMetrics = "/metrics"    // Prometheus text format
)

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Status is everything `weavewg status` shows.
type Status struct {
	Version    string `json:"version"`
	Build      Build  `json:"build"`    // Version with its commit and date
	Network    string `json:"network"`  // the network ID (a hash of its secret, safe to show)
	Name       string `json:"name"`     // peer name, derived from the public key
	Nickname   string `json:"nickname"` // --name, default the hostname
	PublicKey  string `json:"public_key"`
	Encryption string `json:"encryption"`
	// Datapath is what carries WireGuard packets: kernel wireguard (for
	// direct peers, relayed ones staying on userspace) or userspace
	// wireguard, with why (--datapath).
	Datapath string `json:"datapath,omitempty"`
	Port     int    `json:"port"`
	HostIP   string `json:"host_ip"` // CIDR on the bridge, e.g. 10.32.0.1/12; "" until IPAM gave one
	// HostIPFrom says where the host address came from: "ipam" or
	// "--host-ip" (claimed in IPAM all the same).
	HostIPFrom string `json:"host_ip_from,omitempty"`
	// DefaultSubnet is where addresses come from when no subnet is asked
	// for (--ipalloc-default-subnet; the range without it).
	DefaultSubnet string `json:"default_subnet,omitempty"`
	// Exposed lists the host's addresses open to the overlay (expose);
	// empty: only its DNS answers containers.
	Exposed   []Exposure        `json:"exposed"`
	Range     string            `json:"range"` // the overlay prefix
	Interface string            `json:"interface"`
	Bridge    string            `json:"bridge"`
	MTU       int               `json:"mtu"`                // of the TUN and every container interface
	MTUFrom   string            `json:"mtu_from,omitempty"` // where it came from: --mtu, or the underlay route or link
	Peers     []Peer            `json:"peers"`              // every peer known by gossip, self first
	Conns     []Connection      `json:"connections"`        // one per control target or peer
	Attached  []Attachment      `json:"attachments"`
	Counters  map[string]uint64 `json:"counters"` // drops and events, by name
	// DNS summarises the name server; its entries are at PathDNS.
	DNS DNSStatus `json:"dns"`
	// IPAM is the address allocator's view, as at PathIPAM.
	IPAM IPAMStatus `json:"ipam"`
	// NAT is this peer's NAT as observed through other peers' STUN
	// answers; nil when NAT traversal is off.
	NAT *NATStatus `json:"nat,omitempty"`
	// Evicted are the peers evicted from the network (weavewg evict).
	Evicted []Evicted `json:"evicted"`
	// Secret is the network secret's epoch here (weavewg rotate-secret).
	Secret *SecretRotation `json:"secret,omitempty"`
}

// NATStatus is this peer's NAT behaviour as observed: the address STUN
// servers (other peers) saw it at, and whether that depends on the server.
type NATStatus struct {
	PublicAddress        string       `json:"public_address,omitempty"` // as the first server saw it
	Public               bool         `json:"public"`                   // a server saw one of our own addresses: no NAT
	VariesPerDestination bool         `json:"varies_per_destination"`   // servers saw different ports or addresses
	Mapping              string       `json:"mapping"`                  // in words
	Mappings             []NATMapping `json:"mappings"`
	ObservedAt           *time.Time   `json:"observed_at,omitempty"`
}

// NATMapping is where one STUN server saw this peer.
type NATMapping struct {
	Server string `json:"server"`
	Mapped string `json:"mapped"`
}

// Peer is one peer as gossip describes it.
type Peer struct {
	Name      string `json:"name"`
	Nickname  string `json:"nickname"`
	PublicKey string `json:"public_key"`
	HostIP    string `json:"host_ip,omitempty"`
	// HostIPRefused says why this daemon gives the peer no route to its
	// host address (another's container or host address); empty if none.
	HostIPRefused string   `json:"host_ip_refused,omitempty"`
	Reachable     bool     `json:"reachable"`      // a path of confirmed edges leads there
	Self          bool     `json:"self,omitempty"` // this daemon
	Addresses     []string `json:"addresses"`      // overlay prefixes routed to it
	Neighbors     []string `json:"neighbors"`      // names of peers it has established connections to
	// MulticastGroups are the groups its containers joined, as it
	// announced them (multicast goes only to peers that have members).
	MulticastGroups []string `json:"multicast_groups,omitempty"`
}

// Connection states.
const (
	StateConnecting  = "connecting"
	StateEstablished = "established"
	StateFailed      = "failed"
)

// Connection is how this daemon reaches one peer or one configured address.
type Connection struct {
	Address  string `json:"address"`            // HOST:PORT of the control connection
	Peer     string `json:"peer,omitempty"`     // peer name, once known
	Nickname string `json:"nickname,omitempty"` // its nickname
	Outbound bool   `json:"outbound"`           // we dialled it
	State    string `json:"state"`              // connecting, established, failed
	Error    string `json:"error,omitempty"`    // why the last attempt failed
	Direct   bool   `json:"direct"`             // data flows straight to the endpoint
	// Datapath is what carries the peer's packets: "vxlan (trusted)" (the
	// unencrypted fast path on trusted subnets), "kernel wireguard" or
	// "userspace wireguard".
	Datapath string `json:"datapath,omitempty"`
	Endpoint string `json:"endpoint,omitempty"` // WireGuard UDP endpoint in use
	// Via is, when the peer is relayed, the nickname (else the name) of the
	// first relay; empty when direct.
	Via string `json:"via,omitempty"`
	// RTTMillis is the last probe round trip on the path in use; 0 unknown.
	RTTMillis float64 `json:"rtt_ms,omitempty"`
	// EndpointFrom says where the endpoint came from: gossip, ice, or
	// traffic (the peer's authenticated datagrams came from there).
	EndpointFrom string `json:"endpoint_from,omitempty"`
	// PathWhy is the rule that chose direct or relayed, in words.
	PathWhy string `json:"path_why,omitempty"`
	// ICE is the state of NAT traversal towards the peer when a session
	// ran: checking, connected or backoff; empty when none was needed.
	ICE string `json:"ice,omitempty"`
	// Candidate and LocalCandidate are, when ICE connected, the candidate
	// types of the selected pair (host, srflx, prflx): the peer's and ours.
	Candidate      string  `json:"candidate,omitempty"`
	LocalCandidate string  `json:"local_candidate,omitempty"`
	ICEEndpoint    string  `json:"ice_endpoint,omitempty"` // the peer's address ICE selected
	ICEMillis      float64 `json:"ice_ms,omitempty"`       // from session start to selection
	// LastHandshake is the last completed WireGuard handshake; nil if none.
	LastHandshake *time.Time `json:"last_handshake,omitempty"`
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	// MTU is the overlay MTU towards the peer; MTUSource says why: "flag"
	// (--mtu), "link" (the tunnel's own, nothing smaller known), "route"
	// (the underlay route towards the peer, or a path MTU the kernel learnt
	// from ICMP) or "probe" (the largest padded probe it answered,
	// MTUProbed bytes of UDP payload).
	MTU       int    `json:"mtu,omitempty"`
	MTUSource string `json:"mtu_source,omitempty"`
	MTUProbed int    `json:"mtu_probed,omitempty"`
}

// ConnectRequest names a peer address for connect and forget.
type ConnectRequest struct {
	Address string `json:"address"` // HOST or HOST:PORT
}

// Attachment origins: who asked for an attachment.
const (
	OriginCLI    = "cli"
	OriginDocker = "docker"
	OriginCNI    = "cni"
)

// AttachRequest asks the daemon to give a network namespace an overlay interface.
type AttachRequest struct {
	// Netns is a network namespace path (/var/run/netns/NAME, /proc/PID/ns/net).
	// The CLI turns a PID into its path before sending.
	Netns string `json:"netns"`
	IP    string `json:"ip,omitempty"`   // CIDR or address, e.g. 10.32.1.5/12; "" allocates the next free one
	Name  string `json:"name,omitempty"` // registered as NAME.weave.local
	// Origin is "" or "cli" for weavewg attach, "cni" for the CNI plugin,
	// which names the attachment by ContainerID and IfName.
	Origin      string `json:"origin,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	IfName      string `json:"ifname,omitempty"` // inside the namespace; "" means ethwe0
	// WaitSeconds bounds how long the daemon waits for address space while
	// this peer joins; 0 means DefaultAttachWait.
	WaitSeconds float64 `json:"wait_seconds,omitempty"`
	// Net is the isolated subnet to attach to (Weave Net's net:CIDR, e.g.
	// 10.33.1.0/24); "" is the default subnet.
	Net string `json:"net,omitempty"`
	// Egress gives the namespace a default route through this host, its
	// traffic masqueraded to the host's own address on the way out.
	Egress bool `json:"egress,omitempty"`
}

// DefaultAttachWait is how long attach waits for address space by default.
const DefaultAttachWait = 30 * time.Second

// Attachment is one attachment on this host, of any origin.
type Attachment struct {
	ID          string `json:"id"`     // unique on the host (the IPAM allocation id)
	Origin      string `json:"origin"` // cli, docker or cni
	ContainerID string `json:"container_id,omitempty"`
	Netns       string `json:"netns"`
	IP          string `json:"ip"`
	Name        string `json:"name,omitempty"`
	Interface   string `json:"interface"`      // inside the namespace, ethwe0
	HostVeth    string `json:"host_veth"`      // the end on the bridge
	Peer        string `json:"peer,omitempty"` // the peer it is attached on, NAME(nickname); set by ps
	MTU         int    `json:"mtu"`
}

// DetachRequest names the attachment to detach: by namespace (the CLI), or
// by origin "cni" with ContainerID and IfName.
type DetachRequest struct {
	Netns       string `json:"netns,omitempty"`
	Origin      string `json:"origin,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	IfName      string `json:"ifname,omitempty"`
}

// Detached says whether a detach found something to remove; a CNI detach of
// something unknown succeeds with Found false (DEL is idempotent).
type Detached struct {
	Found bool   `json:"found"`
	IP    string `json:"ip,omitempty"`
}

// PathGC releases the CNI attachments a runtime no longer knows.
const PathGC = "/v1/gc" // POST GCRequest → GCResult

// GCRequest lists the CNI attachments to keep; every other CNI attachment
// on this host is released.
type GCRequest struct {
	Valid []GCAttachment `json:"valid"`
}

// GCAttachment names one CNI attachment.
type GCAttachment struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
}

// PathAttachReady says whether an attach would get an address now.
const PathAttachReady = "/v1/attach/ready" // GET → AttachReady

// AttachReady answers PathAttachReady (the CNI plugin's STATUS).
type AttachReady struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"` // why not, in a sentence
}

// GCResult lists what was released.
type GCResult struct {
	Released []Attachment `json:"released"`
}

// Paths of the DNS part of the API.
const (
	PathDNS       = "/v1/dns"        // GET → DNSStatus
	PathDNSAdd    = "/v1/dns/add"    // POST DNSRequest
	PathDNSRemove = "/v1/dns/remove" // POST DNSRequest → DNSRemoved
	PathDNSLookup = "/v1/dns/lookup" // GET ?name=NAME → DNSLookup
)

// DNSStatus is what `weavewg status dns` shows.
type DNSStatus struct {
	Enabled bool       `json:"enabled"`
	Domain  string     `json:"domain,omitempty"`
	Listen  string     `json:"listen,omitempty"` // address the server answers on
	TTL     int        `json:"ttl_seconds,omitempty"`
	Entries []DNSEntry `json:"entries"`
}

// DNSEntry is one name → address mapping in the gossiped table.
type DNSEntry struct {
	Name      string `json:"name"` // fully qualified, e.g. web.weave.local.
	Address   string `json:"address"`
	Peer      string `json:"peer"` // owning peer's name
	Nickname  string `json:"nickname,omitempty"`
	Origin    string `json:"origin,omitempty"` // the attachment (namespace) it came from; "" for dns-add
	Reachable bool   `json:"reachable"`        // false: its peer is unreachable and it is not answered
}

// DNSRequest adds or removes names by hand (dns-add, dns-remove).
type DNSRequest struct {
	Name      string   `json:"name"`      // e.g. web or web.weave.local; may be "" for remove
	Addresses []string `json:"addresses"` // IPv4 addresses
}

// DNSRemoved says how many entries a remove withdrew.
type DNSRemoved struct {
	Removed int `json:"removed"`
}

// DNSLookup is the answer of the local name table for one name.
type DNSLookup struct {
	Name      string   `json:"name"`
	Addresses []string `json:"addresses"`
}

// Paths of the address-allocation part of the API.
const (
	PathIPAM   = "/v1/ipam"   // GET → IPAMStatus
	PathPS     = "/v1/ps"     // GET → []Attachment
	PathRmpeer = "/v1/rmpeer" // POST RmpeerRequest → RmpeerResult
)

// IPAMStatus is what `weavewg status ipam` shows.
type IPAMStatus struct {
	Range     string         `json:"range"`
	Network   string         `json:"network,omitempty"` // the seed: who created the network; "" until known
	Allocated int            `json:"allocated"`         // addresses this peer handed out
	Waiting   bool           `json:"waiting_for_space"` // this peer has none free and asked a peer
	Error     string         `json:"error,omitempty"`   // last refused ring, e.g. another network's
	Peers     []IPAMPeer     `json:"peers"`
	Transfers []IPAMTransfer `json:"transfers"` // rmpeer hand-overs
}

// IPAMPeer is one peer's share of the range.
type IPAMPeer struct {
	Peer      string   `json:"peer"`
	Nickname  string   `json:"nickname,omitempty"`
	Self      bool     `json:"self,omitempty"`
	Reachable bool     `json:"reachable"` // false: shown as unreachable!
	Ranges    []string `json:"ranges"`    // CIDRs
	Size      uint64   `json:"size"`      // addresses owned
	Free      uint64   `json:"free"`      // as last published by the owner
	InUse     uint64   `json:"in_use"`
	Percent   float64  `json:"percent"` // of the whole range
}

// IPAMTransfer is one rmpeer hand-over of a dead peer's space.
type IPAMTransfer struct {
	Dead   string `json:"dead"`
	Issuer string `json:"issuer"`
	State  string `json:"state"` // pending, claimed (issuer says done, not concluded here), done, withdrawn
}

// RmpeerRequest names the dead peer (name, nickname or public key).
type RmpeerRequest struct {
	Peer string `json:"peer"`
}

// RmpeerResult names the peer whose space is being taken over.
type RmpeerResult struct {
	Peer string `json:"peer"`
}

// Paths of the join-token and membership part of the API.
const (
	PathTokens      = "/v1/tokens"        // GET → []TokenInfo; POST TokenRequest → Token
	PathTokenRevoke = "/v1/tokens/revoke" // POST TokenRevokeRequest
	PathReset       = "/v1/reset"         // POST → ResetResult; the daemon then stops
)

// TokenRequest asks for a new join token.
type TokenRequest struct {
	TTL       string   `json:"ttl,omitempty"`       // Go duration; "" means 24h
	Uses      int      `json:"uses,omitempty"`      // 0: any number of hosts
	Endpoints []string `json:"endpoints,omitempty"` // IP[:PORT] of this host; "" means its addresses
}

// Token is a new join token.
type Token struct {
	Token     string     `json:"token"` // the line to paste into weavewg join
	ID        string     `json:"id"`
	Network   string     `json:"network"`
	Expires   *time.Time `json:"expires,omitempty"`
	Uses      int        `json:"uses"` // 0: any number
	Endpoints []string   `json:"endpoints"`
}

// TokenInfo is one token as `token list` shows it. The token text itself is
// not kept: it is shown once, when made.
type TokenInfo struct {
	ID              string     `json:"id"`
	Creator         string     `json:"creator"`
	CreatorNickname string     `json:"creator_nickname,omitempty"`
	Created         *time.Time `json:"created,omitempty"`
	Expires         *time.Time `json:"expires,omitempty"`
	Expired         bool       `json:"expired"`
	Uses            int        `json:"uses"` // 0: any number
	Used            int        `json:"used"` // hosts admitted with it
	Revoked         bool       `json:"revoked"`
}

// TokenRevokeRequest names the token to revoke.
type TokenRevokeRequest struct {
	ID string `json:"id"`
}

// ResetResult says what leaving the network did.
type ResetResult struct {
	Network string `json:"network"`
	Heir    string `json:"heir,omitempty"` // the peer given this host's address space
	Detail  string `json:"detail,omitempty"`
}
