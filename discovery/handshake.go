package discovery

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/flynn/noise"

	"github.com/weavewg/weavewg/types/key"
)

// The control handshake is Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s.
//
// Why XXpsk0 and not IKpsk2 (the WireGuard pattern the design first named):
// a peer joining with a password knows only HOST:PORT of its bootstrap peer,
// not that peer's public key, so the initiator cannot start an IK handshake.
// XX transmits both static keys, encrypted. Placing the PSK at position 0
// mixes the network secret into the key schedule before the first message's
// payload, so message 1 is already authenticated by the secret: a responder
// that cannot decrypt it drops the connection and answers nothing. A host
// without the secret therefore learns nothing, not even the responder's static
// key (which XX without psk0 would reveal in message 2), and gets nothing.
// The PSK is the secret of an epoch (secret.go): the dialler tries the
// epochs it holds newest first, the listener every one it holds.
// The cost: the initiator's failure is indistinguishable from "the peer went
// away", so the dialler reports a connection closed right after message 1 as
// "peer does not know our secret".
//
// Handshake messages travel as 2-byte big-endian length + Noise message:
//
//	I -> R: len | psk, e            (msg 1, empty payload: 32 + 16 bytes)
//	R -> I: len | e, ee, s, es      (msg 2, empty payload: 32 + 48 + 16)
//	I -> R: len | s, se             (msg 3, empty payload: 48 + 16)
//
// After it, the same framing carries Noise transport messages (see conn.go).
// Payloads are empty in v1, so message 1 is exactly 48 bytes; a longer one
// is a join handshake (join.go).

// prologue is mixed into the handshake hash. It carries the major version:
// peers that speak another version fail the handshake.
const prologue = "weavewg control v2"

var cipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)

// Handshake bounds.
const (
	handshakeTimeout = 5 * time.Second
	msg1Min          = 32 + 16
	maxHandshakeMsg  = 512
)

// Handshake errors. errBadSecret and errRefused are what a wrong secret looks
// like from each side.
var (
	errBadSecret = errors.New("peer does not know this network's secret")
	errRefused   = errors.New("connection refused by peer: it does not know our network secret (different --password?)")
	errOversized = errors.New("handshake message too large")
	errSelf      = errors.New("this address is our own: connected to ourselves")
	errTimeout   = errors.New("handshake timed out")
)

// joinRequest is returned by handshakeResponder for a join handshake's
// message 1; the router answers it with admit.
type joinRequest struct{ m1 []byte }

func (*joinRequest) Error() string { return "join request" }

// handshakeResult is what a completed handshake yields.
type handshakeResult struct {
	peer       key.Public
	send, recv *noise.CipherState
	// hash is the final handshake hash, the same on both ends and unique
	// to the session: the tie-break between two connections dialled by the
	// same end.
	hash []byte
	// epoch is the secret epoch the handshake was made under (secret.go).
	epoch uint32
}

// newHandshakeState takes our key pair whole: pub is priv.Public(), a
// scalar multiplication that each handshake did two or more times (7 %
// of a simulated build's CPU, where the handshakes' own Diffie-Hellman
// was 26 %).
func newHandshakeState(priv key.Private, pub key.Public, secret key.Secret, initiator bool) (*noise.HandshakeState, error) {
	return noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Random:                rand.Reader,
		Pattern:               noise.HandshakeXX,
		Initiator:             initiator,
		Prologue:              []byte(prologue),
		StaticKeypair:         noise.DHKey{Private: append([]byte(nil), priv[:]...), Public: pub[:]},
		PresharedKey:          secret[:],
		PresharedKeyPlacement: 0,
	})
}

// handshakeInitiator runs the dialler's side on nc. The caller has set the
// deadline.
func handshakeInitiator(nc net.Conn, priv key.Private, pub key.Public, secret key.Secret) (handshakeResult, error) {
	hs, err := newHandshakeState(priv, pub, secret, true)
	if err != nil {
		return handshakeResult{}, err
	}
	m1, _, _, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return handshakeResult{}, err
	}
	if err := writeFrame(nc, m1); err != nil {
		return handshakeResult{}, err
	}
	m2, err := readFrame(nc, make([]byte, maxHandshakeMsg), maxHandshakeMsg)
	if err != nil {
		if isTimeout(err) {
			return handshakeResult{}, errTimeout
		}
		if isClosedByPeer(err) {
			return handshakeResult{}, errRefused
		}
		return handshakeResult{}, err
	}
	if _, _, _, err := hs.ReadMessage(nil, m2); err != nil {
		return handshakeResult{}, fmt.Errorf("peer's handshake reply did not authenticate: %w", err)
	}
	var peer key.Public
	copy(peer[:], hs.PeerStatic())
	if peer == pub {
		return handshakeResult{peer: peer}, errSelf
	}
	m3, cs1, cs2, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return handshakeResult{}, err
	}
	if err := writeFrame(nc, m3); err != nil {
		return handshakeResult{}, err
	}
	return handshakeResult{peer: peer, send: cs1, recv: cs2, hash: bytes.Clone(hs.ChannelBinding())}, nil
}

// handshakeResponder runs the listener's side on nc, trying each of the
// held secrets on message 1 (a fresh handshake state each: one that failed
// has consumed the message). The caller has set the deadline.
func handshakeResponder(nc net.Conn, priv key.Private, pub key.Public, secrets []Epoch) (handshakeResult, error) {
	buf := make([]byte, maxHandshakeMsg)
	m1, err := readFrame(nc, buf, maxHandshakeMsg)
	if err != nil {
		return handshakeResult{}, err
	}
	if len(m1) < msg1Min {
		return handshakeResult{}, errShort
	}
	if len(m1) > msg1Min {
		return handshakeResult{}, &joinRequest{m1: bytes.Clone(m1)}
	}
	var hs *noise.HandshakeState
	var epoch uint32
	for _, e := range secrets {
		h, err := newHandshakeState(priv, pub, e.Secret, false)
		if err != nil {
			return handshakeResult{}, err
		}
		if _, _, _, err := h.ReadMessage(nil, m1); err == nil {
			hs, epoch = h, e.N
			break
		}
	}
	if hs == nil {
		return handshakeResult{}, errBadSecret
	}
	m2, _, _, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return handshakeResult{}, err
	}
	if err := writeFrame(nc, m2); err != nil {
		return handshakeResult{}, err
	}
	m3, err := readFrame(nc, buf, maxHandshakeMsg)
	if err != nil {
		return handshakeResult{}, err
	}
	_, cs1, cs2, err := hs.ReadMessage(nil, m3)
	if err != nil {
		return handshakeResult{}, fmt.Errorf("message 3 did not authenticate: %w", err)
	}
	var peer key.Public
	copy(peer[:], hs.PeerStatic())
	if peer == pub {
		return handshakeResult{peer: peer}, errSelf
	}
	return handshakeResult{peer: peer, send: cs2, recv: cs1, hash: bytes.Clone(hs.ChannelBinding()), epoch: epoch}, nil
}

// writeFrame writes len(msg) as 2 bytes big-endian, then msg, in one write.
func writeFrame(w io.Writer, msg []byte) error {
	if len(msg) > maxFrame {
		return errOversized
	}
	b := make([]byte, 2, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	_, err := w.Write(append(b, msg...))
	return err
}

// readFrame reads one length-prefixed frame into buf, or into a buffer of
// its own if it does not fit, and returns it. A length above limit is errOversized; nothing more is read.
func readFrame(r io.Reader, buf []byte, limit int) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > limit {
		return nil, errOversized
	}
	if n > len(buf) {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:n], nil
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// isClosedByPeer reports whether err is the peer closing or resetting the
// connection.
func isClosedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// failureClass names the kind of a connection failure, without addresses or
// ports, so that log-once can tell a new condition from a repeat.
func failureClass(err error) string {
	switch {
	case errors.Is(err, errBadSecret):
		return "bad secret"
	case errors.Is(err, errRefused):
		return "refused"
	case errors.Is(err, errSelf):
		return "self"
	case errors.Is(err, errTimeout), isTimeout(err):
		return "timeout"
	case errors.Is(err, errOversized):
		return "oversized"
	case errors.Is(err, errShort), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "truncated"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "dns: " + dnsErr.Err
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Op + ": " + opErr.Err.Error()
	}
	return err.Error()
}
