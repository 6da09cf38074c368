// Package discovery owns a peer's place in the mesh: control connections
// (TCP, Noise XXpsk0 keyed by the network secret), gossip of peer records,
// the topology and the routes derived from it.
//
// # Control connections
//
// A control connection is TCP to Config.Port (through Config.Network: the
// host's TCP stack, or package sim's in-memory network, network.go). It starts with the Noise
// handshake Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s, static key = the peer's
// key, PSK = the network secret, prologue "weavewg control v2" (handshake.go).
// XXpsk0 rather than IKpsk2: a peer joining with a password knows only
// HOST:PORT, not the responder's key, so IK is impossible; with the PSK at
// position 0 the very first message is already authenticated by the secret,
// so a host without it learns nothing (not even the responder's static key)
// and gets nothing. The handshake and hello must finish within 5 s; each
// handshake message is at most 512 bytes; inbound handshakes are rate
// limited per source IP.
//
// After the handshake every frame is
//
//	+------------+-----------------------------------------+
//	| length (2) | Noise transport message (≤ 65535 bytes) |
//	+------------+-----------------------------------------+
//
// and decrypts to one message: a type byte and a body. Each side first sends
// a hello (its advertised port, record version and nickname), then records
// messages and keepalives. Layouts are drawn in gossip.go. A frame that does
// not decrypt or a message that does not parse closes the connection; it is
// counted and logged once.
//
// Version rule: the prologue carries the major version, so peers of another
// major version fail the handshake (logged like a wrong secret). v2 added
// the owner's signature to every record and the originator's to every
// channel message. Within a major version, new message types may be added:
// receivers ignore unknown types and count them
// (control_message_unknown_type). Known types have fixed layouts, and
// trailing bytes make a message malformed, so extending a message means a
// new type.
//
// # Gossip
//
// Every peer owns one Record about itself, signed with its identity key
// (XEdDSA, types/key): key, nickname, version, host IP,
// port, attached prefixes and neighbors (key, the IP it sees the neighbor at,
// established). The version starts at the current time in unix nanoseconds
// (so a restarted peer's records win over its previous run's) and grows by at
// least one on every change. Merge keeps, per key, the highest version: it is
// commutative, associative and idempotent, so delivery order never matters.
// A record is merged only if its owner's signature checks (so no member can
// speak for another, nor push another's version up) and its version is at
// most MaxVersionAhead (1 h) ahead of the receiver's clock; anything else is
// dropped and counted (gossip_records_bad_signature, gossip_records_future).
// A new connection starts with both sides sending a digest, the (key,
// version) of every record they hold (40 bytes each, digest.go), and each
// answers the other's digest with the records it lacks; a record that is
// new or newer is announced at once to every other established connection
// (a have: key and version; gathered for 200 ms, and not to a neighbour
// that told us lately it holds that version), and a neighbour that lacks
// it asks for it (a want; announce.go); our own record goes whole to
// every neighbour; every
// ~10 s a summary (a hash and count of what the digest would list,
// summary.go) goes to one random neighbour (anti-entropy), which answers,
// only if its own differs, with its digest: then what either lacks goes
// across. A peer that predates summaries is sent the digest instead, and
// one that predates digests starts with its full state and is sent full
// states. Peers unreachable for more than a minute are dropped; their
// last version is remembered for five minutes so that stale copies still
// in flight do not bring them back, while a restarted peer comes back
// with a higher version.
//
// # Topology and routes
//
// An edge A–B exists only when both A's and B's records list each other as
// established. Reachable peers are those a path of edges leads to. Routes are
// shortest in hops with a direction-independent tie-break (topology.go), so
// the route A→C is the reverse of C→A and every relay on it agrees.
//
// # Channels
//
// Other subsystems (ipam, dns) register a named Channel and exchange their own
// messages over the control connections: Send routes a message hop by hop
// along the same routes, Broadcast sends one to every reachable peer
// (channel.go has the format): one multicast message to each next hop,
// listing the peers routed through it, which each relay splits by its own
// next hops, so a broadcast crosses each edge of the sender's tree of best
// paths once (multicast.go; a next hop that predates multicast, which it
// tells by a features message when the connection starts, gets one
// message per peer).
//
// # Dialling
//
// Connect adds a persistent target dialled with exponential backoff (1 s to
// 30 s, jittered) until Forget; for 30 s after a connection of its ends it is
// redialled every 500 ms, so a peer restarted for an upgrade is back within
// half a second of listening. A target whose peer is reachable through the
// mesh while we hold half the connection limit is satisfied without a
// connection of its own. Peers learned through gossip are dialled at their
// Endpoint while we hold fewer than half of Config.ConnLimit connections,
// so meshes up to that size become full meshes and larger ones a random
// graph of bounded degree (connlimit.go). A peer at its limit takes a
// dialler it does not reach (a joiner) by closing a connection of its own
// that the mesh can spare (shedLocked); otherwise it answers a
// handshake with msgBusy, its own record and its neighbours'; the joiner it
// referred dials the referrer's neighbours at the addresses the referrer sees them
// at (conn.learnReferralAddrs), since it reaches nobody yet. When two
// connections to the same peer exist, both ends keep the same one
// (conn.preferredOver).
//
// # Liveness
//
// A silent connection is closed by the kernel: TCP keepalive (5 s idle,
// 5 s interval, 3 probes) and TCP_USER_TIMEOUT 20 s (liveness.go); an
// application keepalive goes out after 30 s with nothing written, and
// nothing read for 95 s closes the connection.
package discovery
