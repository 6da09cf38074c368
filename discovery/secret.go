package discovery

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"

	"github.com/weavewg/weavewg/types/key"
)

// Secret epochs (weavewg rotate-secret). The secret the network was made
// with (Config.Secret) names the network for good (IDOf), and keys what
// must not change under running peers (the tunnel's probe MACs, the VXLAN
// fast path's VNI). Membership is the secret of an epoch: epoch 0 is that
// same secret; each rotation makes epoch N+1 with a fresh random one. The
// epoch secrets key the control handshake (Noise PSK), the WireGuard
// preshared key of each pair and the join keys of tokens.
//
// A rotation is signed by the member that made it (the rotator) and
// carries the new secret sealed to each member's Curve25519 key, because
// relays see channel payloads:
//
//	seal key = BLAKE2s-256(key: X25519(rotator, recipient);
//	           "weavewg seal v1" | network 8 | epoch 4 | time 8 | rotator 32 | recipient 32)
//	sealed   = ChaCha20-Poly1305(seal key, nonce 0, secret 32)   (48 bytes)
//
// Each (rotator, recipient, epoch, time) has its own key, so the zero
// nonce is never reused. The recipients are every member this peer knows
// of and that is not evicted: the peers in its table, the ones the daemon
// adds (address-space owners, hosts admitted with tokens) and the
// recipients of the previous rotation, so a member that was down is
// still among them. A rotation too big for one channel message is cut in
// parts, each signed:
//
//	+------------+---------+------------+--------+--------+---------+-----------+
//	| type 2 (1) | ver 1   | epoch 4    | time 8 | part 1 | parts 1 | rotator 32 |
//	+------------+---------+------------+--------+--------+---------+-----------+
//	| n 2 | n × ( recipient 32 | sealed 48 ) | signature 64                       |
//	+-----+-------------------------------------+-----------------------------+
//
// The signature is the rotator's (domain "weavewg rotation v1") over
// network ID 8 and everything before it. Two rotations of the same epoch
// (two members at once): the earlier (time, then rotator key) wins
// everywhere, and a peer that took the other switches.
//
// Each peer advertises the newest epoch it holds, on the same channel (the
// channel message is signed by its sender):
//
//	+------------+---------+----------+---------------------------------+
//	| type 1 (1) | ver 1   | epoch 4  | secret ID 8 (a hash, safe to show) |
//	+------------+---------+----------+---------------------------------+
//
// when it changes, to each peer that connects, and every anti-entropy
// round. A pair uses the newest epoch both hold (same epoch, same ID) for
// its WireGuard preshared key (PairSecret), so it switches when both
// advertise the new one; WireGuard keeps the session it has until its
// next handshake, so no packet is lost. Control connections are dialled
// with the newest secret first and older held ones after a refusal; a
// listener accepts every active epoch. Once every reachable recipient of
// the newest rotation advertises it, the older epochs stop being active:
// tokens were already made with the newest only, connections of peers
// that are not recipients and still use an older secret are closed, and
// no new connection with an older secret is a full member's.
//
// An older secret is still kept, so that a member that was down during a
// rotation can come back: a control handshake under an inactive epoch is
// completed only to learn the dialler's key; if that key is a recipient of
// a newer rotation and not evicted, the listener sends it those rotation
// parts (which it alone can unseal) on that connection and closes it
// (control_catchup_served), and the member redials with the new secret.
// Any other dialler with an old secret is closed after the handshake
// (control_handshake_stale_secret): an evicted host, or one with a copy of
// an old secret and a key of its own, gets nothing.

const (
	secretChannel    = "secret"
	secretMsgVersion = 1
	secretMsgAd      = 1
	secretMsgRotate  = 2
	secretAdLen      = 1 + 1 + 4 + 8

	rotationDomain = "weavewg rotation v1"
	sealDomain     = "weavewg seal v1"
	sealedLen      = key.Len + chacha20poly1305.Overhead
	recipientLen   = key.Len + sealedLen
	rotationHdrLen = 1 + 1 + 4 + 8 + 1 + 1 + key.Len + 2
	// maxRecipientsPerPart keeps a part within one channel payload.
	maxRecipientsPerPart = (MaxChannelPayload - rotationHdrLen - key.SigLen) / recipientLen
	// maxRotationParts bounds a rotation: 255 parts of ~800 recipients.
	maxRotationParts = 255
	// keepEpochs bounds how many epochs' secrets (and rotations) are kept.
	keepEpochs = 16
)

// SecretID names an epoch's secret without revealing it.
type SecretID [8]byte

func (s SecretID) String() string { return fmt.Sprintf("%x", s[:]) }

// SecretIDOf hashes s.
func SecretIDOf(s key.Secret) SecretID {
	h := blake2s.Sum256(append([]byte("weavewg secret id v1\x00"), s[:]...))
	var id SecretID
	copy(id[:], h[:8])
	return id
}

// Epoch is one held secret.
type Epoch struct {
	N      uint32
	Secret key.Secret
}

// SecretState is what a peer keeps of the secret epochs (Config.Secrets,
// SaveSecrets): the epochs it holds, the first one still active, and the
// rotation parts it knows (to forward to members that were down).
type SecretState struct {
	Epochs    []Epoch // ascending by N; the last is the newest
	Active    uint32  // epochs below this are kept only for catch-up
	Rotations [][]byte
}

// Rotation is one part of a rotation, parsed.
type Rotation struct {
	Epoch      uint32
	Time       int64 // unix nanoseconds
	Part       uint8
	Parts      uint8
	Rotator    key.Public
	Recipients []SealedSecret
	Sig        key.Signature
	raw        []byte // the whole wire form
}

// SealedSecret is the new secret sealed to one recipient.
type SealedSecret struct {
	To     key.Public
	Sealed [sealedLen]byte
}

// Errors of the secret channel.
var (
	errSecretMsg      = errors.New("discovery: malformed secret message")
	ErrNotRecipient   = errors.New("this peer is not among the rotation's recipients")
	errRotationUnseal = errors.New("discovery: sealed secret does not open")
)

// AppendRotation appends the wire form of rot (Sig included).
func AppendRotation(b []byte, rot *Rotation) []byte {
	b = rot.appendUnsigned(b)
	return append(b, rot.Sig[:]...)
}

func (rot *Rotation) appendUnsigned(b []byte) []byte {
	b = append(b, secretMsgRotate, secretMsgVersion)
	b = binary.BigEndian.AppendUint32(b, rot.Epoch)
	b = binary.BigEndian.AppendUint64(b, uint64(rot.Time))
	b = append(b, rot.Part, rot.Parts)
	b = append(b, rot.Rotator[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rot.Recipients)))
	for _, r := range rot.Recipients {
		b = append(b, r.To[:]...)
		b = append(b, r.Sealed[:]...)
	}
	return b
}

func (rot *Rotation) signedBytes(network NetworkID) []byte {
	return rot.appendUnsigned(append([]byte(nil), network[:]...))
}

// ParseRotation parses a whole rotation part; the signature is not checked.
func ParseRotation(b []byte) (*Rotation, error) {
	if len(b) < rotationHdrLen+key.SigLen || b[0] != secretMsgRotate || b[1] != secretMsgVersion {
		return nil, errSecretMsg
	}
	rot := &Rotation{
		Epoch: binary.BigEndian.Uint32(b[2:6]),
		Time:  int64(binary.BigEndian.Uint64(b[6:14])),
		Part:  b[14],
		Parts: b[15],
	}
	copy(rot.Rotator[:], b[16:16+key.Len])
	n := int(binary.BigEndian.Uint16(b[16+key.Len:]))
	if rot.Parts == 0 || rot.Part >= rot.Parts || rot.Time < 0 || n > maxRecipientsPerPart ||
		len(b) != rotationHdrLen+n*recipientLen+key.SigLen {
		return nil, errSecretMsg
	}
	p := b[rotationHdrLen:]
	rot.Recipients = make([]SealedSecret, n)
	for i := range rot.Recipients {
		copy(rot.Recipients[i].To[:], p[:key.Len])
		copy(rot.Recipients[i].Sealed[:], p[key.Len:recipientLen])
		p = p[recipientLen:]
	}
	copy(rot.Sig[:], p)
	rot.raw = bytes.Clone(b)
	return rot, nil
}

// sealKey is the key sealing epoch's secret from rotator to recipient;
// dh is X25519 of one's private key and the other's public key.
func sealKey(dh []byte, network NetworkID, epoch uint32, t int64, rotator, recipient key.Public) []byte {
	mac, _ := blake2s.New256(dh)
	mac.Write([]byte(sealDomain))
	mac.Write(network[:])
	var b [12]byte
	binary.BigEndian.PutUint32(b[:4], epoch)
	binary.BigEndian.PutUint64(b[4:], uint64(t))
	mac.Write(b[:])
	mac.Write(rotator[:])
	mac.Write(recipient[:])
	return mac.Sum(nil)
}

func sealSecret(priv key.Private, to key.Public, network NetworkID, epoch uint32, t int64, s key.Secret) ([sealedLen]byte, error) {
	var out [sealedLen]byte
	dh, err := curve25519.X25519(priv[:], to[:])
	if err != nil {
		return out, err // a low-order key: no such member can be sealed to
	}
	aead, _ := chacha20poly1305.New(sealKey(dh, network, epoch, t, priv.Public(), to))
	copy(out[:], aead.Seal(nil, make([]byte, chacha20poly1305.NonceSize), s[:], nil))
	return out, nil
}

// open finds the secret sealed to priv's key in rot.
func (rot *Rotation) open(priv key.Private, network NetworkID) (key.Secret, error) {
	self := priv.Public()
	for _, r := range rot.Recipients {
		if r.To != self {
			continue
		}
		dh, err := curve25519.X25519(priv[:], rot.Rotator[:])
		if err != nil {
			return key.Secret{}, errRotationUnseal
		}
		aead, _ := chacha20poly1305.New(sealKey(dh, network, rot.Epoch, rot.Time, rot.Rotator, self))
		pt, err := aead.Open(nil, make([]byte, chacha20poly1305.NonceSize), r.Sealed[:], nil)
		if err != nil {
			return key.Secret{}, errRotationUnseal
		}
		var s key.Secret
		copy(s[:], pt)
		return s, nil
	}
	return key.Secret{}, ErrNotRecipient
}

func (rot *Rotation) hasRecipient(k key.Public) bool {
	for _, r := range rot.Recipients {
		if r.To == k {
			return true
		}
	}
	return false
}

// before orders two rotations of one epoch: the earlier wins.
func (rot *Rotation) before(o *Rotation) bool {
	if rot.Time != o.Time {
		return rot.Time < o.Time
	}
	return rot.Rotator.Less(o.Rotator)
}

// makeRotation seals s for epoch to every recipient, in signed parts.
func makeRotation(priv key.Private, network NetworkID, epoch uint32, t int64, s key.Secret, recipients []key.Public) ([]*Rotation, error) {
	var sealed []SealedSecret
	for _, k := range recipients {
		box, err := sealSecret(priv, k, network, epoch, t, s)
		if err != nil {
			continue
		}
		sealed = append(sealed, SealedSecret{To: k, Sealed: box})
	}
	parts := (len(sealed) + maxRecipientsPerPart - 1) / maxRecipientsPerPart
	if parts == 0 {
		parts = 1
	}
	if parts > maxRotationParts {
		return nil, fmt.Errorf("%d members are more than one rotation can seal to (%d)", len(sealed), maxRotationParts*maxRecipientsPerPart)
	}
	out := make([]*Rotation, 0, parts)
	for i := range parts {
		end := min(len(sealed), (i+1)*maxRecipientsPerPart)
		rot := &Rotation{Epoch: epoch, Time: t, Part: uint8(i), Parts: uint8(parts), Rotator: priv.Public(),
			Recipients: sealed[i*maxRecipientsPerPart : end]}
		rot.Sig = key.Sign(priv, rotationDomain, rot.signedBytes(network))
		rot.raw = AppendRotation(nil, rot)
		out = append(out, rot)
	}
	return out, nil
}

// appendSecretAd appends an advertisement of (epoch, id).
func appendSecretAd(b []byte, epoch uint32, id SecretID) []byte {
	b = append(b, secretMsgAd, secretMsgVersion)
	b = binary.BigEndian.AppendUint32(b, epoch)
	return append(b, id[:]...)
}

func parseSecretAd(b []byte) (epochAd, error) {
	if len(b) != secretAdLen || b[0] != secretMsgAd || b[1] != secretMsgVersion {
		return epochAd{}, errSecretMsg
	}
	var ad epochAd
	ad.n = binary.BigEndian.Uint32(b[2:6])
	copy(ad.id[:], b[6:])
	return ad, nil
}

// epochAd is what a peer advertised: the newest epoch it holds.
type epochAd struct {
	n  uint32
	id SecretID
}

// newSecret draws a random secret.
func newSecret() (key.Secret, error) {
	var s key.Secret
	_, err := rand.Read(s[:])
	return s, err
}

// sortEpochs orders epochs ascending and keeps the newest keepEpochs.
func sortEpochs(es []Epoch) []Epoch {
	slices.SortFunc(es, func(a, b Epoch) int {
		switch {
		case a.N < b.N:
			return -1
		case a.N > b.N:
			return 1
		}
		return 0
	})
	es = slices.CompactFunc(es, func(a, b Epoch) bool { return a.N == b.N })
	if len(es) > keepEpochs {
		es = es[len(es)-keepEpochs:]
	}
	return es
}
