package tunnel

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/types/key"
)

// # Relay header, version 2
//
// A peer with no working direct path is reached through other peers. The
// WireGuard datagram (already encrypted end to end; relays cannot read it)
// is wrapped in a relay header and sent to the first hop of the route; every
// hop forwards it by its own routes; the destination takes the header off
// and hands the datagram to wireguard-go. All integers are big-endian.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| magic 0xF7    | version 2     | type          |F| hop limit   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+               destination peer ID (8 bytes)                   +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+                  source peer ID (8 bytes)                     +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+        hop counter: the hop sender's, for this hop (8)        +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+        hop MAC (8 bytes), see hop.go                          +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| payload: a WireGuard message (type data), or a probe body      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// A peer ID is the first 8 bytes of BLAKE2s-256 of the peer's public key
// (PeerIDOf); receivers map it back to a key through their peer table, and
// frames naming an ID that is not in the table are dropped. 64 bits make a
// collision between two members of one network (2⁻⁶⁴ per pair) negligible.
//
// Every hop proves itself (hop.go): the sender of each hop (the source
// peer on the first hop; the relay on the next ones, which then sets the
// F(orwarded) bit) writes its counter for the pair (hop sender, hop
// receiver) and a MAC over the 28 bytes before it keyed for that pair and
// direction. So a frame is accepted from whatever address it comes from
// when it verifies, and a first-hop frame moves its sender's endpoint there,
// as WireGuard's roaming does; the payload is not covered (WireGuard
// authenticates it end to end).
//
// Types: 0 data, 1 probe, 2 probe reply (probe.go), 3 MTU probe, 4 MTU
// reply (mtuprobe.go). Any other type, and any other version, is dropped: a
// version-2 receiver does not guess (version 1 had no hop counter and MAC;
// a mesh upgrades all its members). A new field means a new version. The
// hop limit (7 bits) is decremented by every relay; a frame that would be
// forwarded with a hop limit of 1 or less is dropped.
//
// Size: the header is RelayHeaderLen = 36 bytes. The tunnel MTU reserves it
// on every path (pmtu): 1404 on a 1500-byte IPv4 underlay, where a full
// WireGuard transport message is 16 (header) + 1404 (payload, padding never
// takes it past the MTU) + 16 (tag) = 1436 bytes; with the relay header
// 1472, plus UDP (8) and IPv4 (20): exactly 1500, so relayed traffic fits
// without fragmenting.
const (
	RelayHeaderLen = 36

	RelayTypeData       = 0
	RelayTypeProbe      = 1
	RelayTypeProbeReply = 2
	// Path MTU probes (mtuprobe.go).
	RelayTypeMTUProbe = 3
	RelayTypeMTUReply = 4

	// DefaultHopLimit is the hop limit of frames we originate: the longest
	// route a frame may take, counting the last hop.
	DefaultHopLimit = 16

	relayOffType     = 2
	relayOffHopLimit = 3
	relayOffDst      = 4
	relayOffSrc      = 12
	relayOffCtr      = 20
	relayOffMAC      = 28

	relayHopMask   = 0x7f // hop limit bits of byte 3
	relayForwarded = 0x80 // F bit of byte 3: a relay sent this hop, not the source
)

// PeerID names a peer in relay frames.
type PeerID [8]byte

// PeerIDOf is the relay ID of a public key: BLAKE2s-256(key)[:8].
func PeerIDOf(k key.Public) PeerID {
	sum := blake2s.Sum256(k[:])
	var id PeerID
	copy(id[:], sum[:8])
	return id
}

func (id PeerID) String() string { return hex.EncodeToString(id[:]) }

// RelayHeader is a parsed relay header.
type RelayHeader struct {
	Type      uint8
	HopLimit  uint8 // 0–127
	Forwarded bool  // a relay sent this hop (the F bit)
	Dst, Src  PeerID
	Counter   uint64  // the hop sender's counter
	MAC       [8]byte // the hop MAC (hop.go)
}

// Relay header parse errors.
var (
	ErrRelayShort   = errors.New("relay: frame shorter than the header")
	ErrRelayMagic   = errors.New("relay: not a relay frame")
	ErrRelayVersion = errors.New("relay: unknown version")
	ErrRelayType    = errors.New("relay: unknown frame type")
)

// AppendRelayHeader appends the 36-byte header h to b.
func AppendRelayHeader(b []byte, h RelayHeader) []byte {
	b = append(b, RelayMagic, RelayVersion, h.Type, hopByte(h))
	b = append(b, h.Dst[:]...)
	b = append(b, h.Src[:]...)
	b = binary.BigEndian.AppendUint64(b, h.Counter)
	return append(b, h.MAC[:]...)
}

func hopByte(h RelayHeader) byte {
	v := h.HopLimit & relayHopMask
	if h.Forwarded {
		v |= relayForwarded
	}
	return v
}

// ParseRelayHeader parses the header at the start of b and returns it with
// the payload (aliasing b). It does not allocate.
func ParseRelayHeader(b []byte) (RelayHeader, []byte, error) {
	var h RelayHeader
	if len(b) < RelayHeaderLen {
		return h, nil, ErrRelayShort
	}
	if b[0] != RelayMagic {
		return h, nil, ErrRelayMagic
	}
	if b[1] != RelayVersion {
		return h, nil, ErrRelayVersion
	}
	h.Type = b[relayOffType]
	h.HopLimit, h.Forwarded = b[relayOffHopLimit]&relayHopMask, b[relayOffHopLimit]&relayForwarded != 0
	if h.Type > RelayTypeMTUReply {
		return h, nil, ErrRelayType
	}
	copy(h.Dst[:], b[relayOffDst:relayOffSrc])
	copy(h.Src[:], b[relayOffSrc:relayOffCtr])
	h.Counter = beUint64(b[relayOffCtr:relayOffMAC])
	copy(h.MAC[:], b[relayOffMAC:RelayHeaderLen])
	return h, b[RelayHeaderLen:], nil
}

// putRelayHeader writes h over the first RelayHeaderLen bytes of b.
func putRelayHeader(b []byte, h RelayHeader) {
	b[0], b[1], b[relayOffType], b[relayOffHopLimit] = RelayMagic, RelayVersion, h.Type, hopByte(h)
	copy(b[relayOffDst:relayOffSrc], h.Dst[:])
	copy(b[relayOffSrc:relayOffCtr], h.Src[:])
	putBeUint64(b[relayOffCtr:relayOffMAC], h.Counter)
	copy(b[relayOffMAC:RelayHeaderLen], h.MAC[:])
}

// relayEndpointPrefix starts the text form of a relay endpoint,
// "relay:<16 hex digits of the destination peer ID>". wireguard-go passes a
// UAPI "endpoint=" value to Bind.ParseEndpoint as it is, so setting a peer's
// endpoint to this text makes the Bind relay its datagrams; wireguard-go also
// prints it back in IpcGet.
const relayEndpointPrefix = "relay:"

// RelayEndpoint is the conn.Endpoint of a peer reached through relays: Send
// wraps datagrams for it in a relay header and sends them to the current
// next hop towards it.
type RelayEndpoint struct {
	id  PeerID
	str string
	ip  netip.Addr // synthetic, unique per peer: see DstIP
	raw [len(relayEndpointPrefix) + 8]byte
}

var _ conn.Endpoint = (*RelayEndpoint)(nil)

func newRelayEndpoint(id PeerID) *RelayEndpoint {
	e := &RelayEndpoint{id: id, str: relayEndpointPrefix + id.String()}
	var a [16]byte
	a[0], a[1] = 0xfd, 0xf7 // fdf7::/16, a unique-local prefix, + the ID
	copy(a[8:], id[:])
	e.ip = netip.AddrFrom16(a)
	copy(e.raw[:], relayEndpointPrefix)
	copy(e.raw[len(relayEndpointPrefix):], id[:])
	return e
}

// ParseRelayEndpoint parses "relay:<16 hex digits>".
func ParseRelayEndpoint(s string) (*RelayEndpoint, error) {
	h, ok := strings.CutPrefix(s, relayEndpointPrefix)
	if !ok {
		return nil, fmt.Errorf("relay endpoint %q: no %q prefix", s, relayEndpointPrefix)
	}
	var id PeerID
	if len(h) != 2*len(id) {
		return nil, fmt.Errorf("relay endpoint %q: want %d hex digits", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return nil, fmt.Errorf("relay endpoint %q: %w", s, err)
	}
	return newRelayEndpoint(id), nil
}

// ID is the destination peer's relay ID.
func (e *RelayEndpoint) ID() PeerID { return e.id }

func (e *RelayEndpoint) ClearSrc()           {}
func (e *RelayEndpoint) SrcToString() string { return "" }
func (e *RelayEndpoint) DstToString() string { return e.str }

// DstToBytes keys wireguard-go's cookie MACs (mac2) by the relayed peer.
func (e *RelayEndpoint) DstToBytes() []byte { return e.raw[:] }

// DstIP is a synthetic address in fdf7::/16 made from the peer ID. wireguard-go
// uses it only to rate-limit handshakes under load, per source; a real address
// would be the relay's and lump every relayed peer together.
func (e *RelayEndpoint) DstIP() netip.Addr { return e.ip }
func (e *RelayEndpoint) SrcIP() netip.Addr { return netip.Addr{} }

// relayHeaderFor is the header of a data frame we originate.
func relayHeaderFor(typ uint8, dst, src PeerID) RelayHeader {
	return RelayHeader{Type: typ, HopLimit: DefaultHopLimit, Dst: dst, Src: src}
}

func beUint64(b []byte) uint64       { return binary.BigEndian.Uint64(b) }
func putBeUint64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }
