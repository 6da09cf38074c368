package discovery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/flynn/noise"

	"github.com/weavewg/weavewg/types/key"
)

// Joining with a token. A joiner knows a bootstrap member's address and
// public key and the token's join key, but not the network secret, so it
// runs its own handshake on the control port: Noise_IKpsk2 (the WireGuard
// pattern) with the join key as PSK and prologue "weavewg join v1".
//
//	J -> M: len | e, es, s, ss + request       (message 1, ≥ 96 bytes)
//	M -> J: len | 0x00 | e, ee, se, psk + reply (message 2: authenticated)
//	     or len | 0x01 | reason text              (refusal before message 2)
//
// A member tells a join from a member handshake by the size of message 1: a
// member's is exactly 48 bytes (XXpsk0, empty payload), a joiner's is longer.
// The request (encrypted under es and ss) names the token: network 8 |
// token 8 | expiry 8 | uses 2 | nick len 1 | nick. The member derives the
// join key from its secret and those fields, sets it as PSK, and answers
// with message 2, whose payload is
//
//	status 0 (admitted) | secret 32 | range addr 4 | range bits 1 | epoch 4 | epoch secret 32
//	                      [| default subnet addr 4 | default subnet bits 1]
//	status 1 (refused)  | reason text
//
// secret is the one the network was made with (it names the network and
// keys what never rotates), epoch and epoch secret the newest membership
// secret (secret.go); the join key is made from the latter, so a rotation
// ends every token made before it. A reply without the epoch part (38
// bytes, an older member) means epoch 0. The default subnet
// (--ipalloc-default-subnet) is sent only when it is not the whole range
// (a network with isolated subnets), so joiners of other networks are
// answered as before; without it, the default subnet is the range.
// Only a member that knows the secret can make a message 2 the joiner can
// decrypt, and only a joiner holding the join key can read the secret in it:
// the secret never travels in a token, and a changed field of the token
// makes the keys disagree. The plaintext refusal (0x01) is used only when
// the member cannot derive the key (another network's token); the joiner
// shows it as what the member said, unauthenticated.

const (
	joinPrologue   = "weavewg join v1"
	joinRespNoise  = 0x00
	joinRespRefuse = 0x01
	joinAdmitted   = 0
	joinRefused    = 1
	joinReqFixed   = 8 + 8 + 8 + 2 + 1
	maxJoinReason  = 200
)

// JoinConfig is what Join needs.
type JoinConfig struct {
	Private  key.Private
	Token    Token
	Nickname string
	// Timeout bounds the whole attempt over every endpoint (default 30 s).
	Timeout time.Duration
	// Progress, if set, is told what is happening, one line at a time.
	Progress func(msg string)
	Now      func() time.Time
	Dialer   *net.Dialer
}

// JoinResult is what admission yields.
type JoinResult struct {
	Secret key.Secret // the network's (epoch 0)
	Range  netip.Prefix
	// DefaultSubnet is the network's --ipalloc-default-subnet; invalid
	// when it is the whole range.
	DefaultSubnet netip.Prefix
	// Epoch and EpochSecret are the newest membership secret.
	Epoch       uint32
	EpochSecret key.Secret
	By          Bootstrap // the member that admitted us
}

// ErrJoinRefused wraps a member's refusal; the text says why.
var ErrJoinRefused = errors.New("refused")

// Join contacts the token's bootstrap members in turn, with backoff, until
// one admits this peer or refuses it for good, or the timeout passes.
func Join(ctx context.Context, cfg JoinConfig) (JoinResult, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: 5 * time.Second}
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string) {}
	}
	if cfg.Token.Expired(cfg.Now()) {
		return JoinResult{}, fmt.Errorf("%w (it expired at %s)", ErrTokenExpired, cfg.Token.Expiry.Local().Format(time.RFC1123))
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var lastErrs []string
	backoff := 500 * time.Millisecond
	for attempt := 0; ; attempt++ {
		lastErrs = lastErrs[:0]
		for _, b := range cfg.Token.Endpoints {
			progress(fmt.Sprintf("connecting to %s", b.Addr))
			res, err := joinOnce(ctx, cfg, b)
			if err == nil {
				return res, nil
			}
			if errors.Is(err, ErrJoinRefused) {
				return JoinResult{}, err // a member's word is final
			}
			lastErrs = append(lastErrs, fmt.Sprintf("%s: %v", b.Addr, err))
			progress(fmt.Sprintf("  %s: %v", b.Addr, err))
		}
		select {
		case <-ctx.Done():
			return JoinResult{}, fmt.Errorf("could not reach any member named in the token within %v (%s); check that the network's hosts are running and reachable on their port", cfg.Timeout, joinErrs(lastErrs))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func joinErrs(es []string) string {
	var b bytes.Buffer
	for i, e := range es {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(e)
	}
	return b.String()
}

func joinOnce(ctx context.Context, cfg JoinConfig, b Bootstrap) (JoinResult, error) {
	nc, err := cfg.Dialer.DialContext(ctx, "tcp", b.Addr.String())
	if err != nil {
		return JoinResult{}, err
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	nc.SetDeadline(time.Now().Add(handshakeTimeout))

	pub := cfg.Private.Public()
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Random:                rand.Reader,
		Pattern:               noise.HandshakeIK,
		Initiator:             true,
		Prologue:              []byte(joinPrologue),
		StaticKeypair:         noise.DHKey{Private: append([]byte(nil), cfg.Private[:]...), Public: pub[:]},
		PeerStatic:            b.Key[:],
		PresharedKey:          cfg.Token.JoinKey[:],
		PresharedKeyPlacement: 2,
	})
	if err != nil {
		return JoinResult{}, err
	}
	t := cfg.Token
	req := make([]byte, 0, joinReqFixed+MaxNickname)
	req = append(req, t.Network[:]...)
	req = append(req, t.ID[:]...)
	req = binary.BigEndian.AppendUint64(req, unixOrZero(t.Expiry))
	req = binary.BigEndian.AppendUint16(req, t.Uses)
	nick := truncateNick(cfg.Nickname)
	req = append(req, byte(len(nick)))
	req = append(req, nick...)
	m1, _, _, err := hs.WriteMessage(nil, req)
	if err != nil {
		return JoinResult{}, err
	}
	if err := writeFrame(nc, m1); err != nil {
		return JoinResult{}, err
	}
	resp, err := readFrame(nc, make([]byte, maxHandshakeMsg), maxHandshakeMsg)
	if err != nil {
		if isClosedByPeer(err) {
			return JoinResult{}, errors.New("the member closed the connection: its key is not the one in the token (was it reset?), or it is not a weavewg peer")
		}
		return JoinResult{}, err
	}
	if len(resp) == 0 {
		return JoinResult{}, errShort
	}
	switch resp[0] {
	case joinRespRefuse:
		return JoinResult{}, fmt.Errorf("%w by %s: %s", ErrJoinRefused, b.Addr, printable(resp[1:]))
	case joinRespNoise:
	default:
		return JoinResult{}, errors.New("the member answered something that is not a join reply")
	}
	payload, _, _, err := hs.ReadMessage(nil, resp[1:])
	if err != nil {
		return JoinResult{}, fmt.Errorf("%w by %s: the member's reply does not match the token's key: the token was altered or is not of its network", ErrJoinRefused, b.Addr)
	}
	if len(payload) < 1 {
		return JoinResult{}, errShort
	}
	if payload[0] == joinRefused {
		return JoinResult{}, fmt.Errorf("%w by %s: %s", ErrJoinRefused, b.Addr, printable(payload[1:]))
	}
	const admitV1 = 1 + key.Len + 5
	const admitV2 = admitV1 + 4 + key.Len
	if payload[0] != joinAdmitted || (len(payload) != admitV1 && len(payload) != admitV2 && len(payload) != admitV2+5) {
		return JoinResult{}, errors.New("malformed admission from the member")
	}
	var res JoinResult
	copy(res.Secret[:], payload[1:1+key.Len])
	a, _ := netip.AddrFromSlice(payload[1+key.Len : 1+key.Len+4])
	res.Range = netip.PrefixFrom(a, int(payload[1+key.Len+4]))
	res.EpochSecret = res.Secret
	if len(payload) > admitV1 {
		res.Epoch = binary.BigEndian.Uint32(payload[admitV1:])
		copy(res.EpochSecret[:], payload[admitV1+4:admitV2])
	}
	if !res.Range.IsValid() || IDOf(res.Secret) != t.Network {
		return JoinResult{}, errors.New("the member sent a secret that does not match the token's network")
	}
	if len(payload) > admitV2 {
		a, _ := netip.AddrFromSlice(payload[admitV2 : admitV2+4])
		res.DefaultSubnet = netip.PrefixFrom(a, int(payload[admitV2+4]))
		if !res.DefaultSubnet.IsValid() || res.DefaultSubnet != res.DefaultSubnet.Masked() || !res.Range.Contains(a) || res.DefaultSubnet.Bits() < res.Range.Bits() {
			return JoinResult{}, fmt.Errorf("malformed admission from the member: default subnet %s is not a subnet of the range %s", res.DefaultSubnet, res.Range)
		}
	}
	res.By = b
	return res, nil
}

func printable(b []byte) string {
	if len(b) > maxJoinReason {
		b = b[:maxJoinReason]
	}
	return string(bytes.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, b))
}

// admit answers a join handshake whose message 1 is m1, on a member.
func (r *Router) admit(nc net.Conn, m1 []byte) error {
	refuse := func(reason string) error {
		writeFrame(nc, append([]byte{joinRespRefuse}, reason...))
		return fmt.Errorf("join refused: %s", reason)
	}
	pub := r.self
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Random:                rand.Reader,
		Pattern:               noise.HandshakeIK,
		Initiator:             false,
		Prologue:              []byte(joinPrologue),
		StaticKeypair:         noise.DHKey{Private: append([]byte(nil), r.priv[:]...), Public: pub[:]},
		PresharedKeyPlacement: 2,
	})
	if err != nil {
		return err
	}
	req, _, _, err := hs.ReadMessage(nil, m1)
	if err != nil {
		return errBadSecret // not for our key, or garbage: answer nothing
	}
	if len(req) < joinReqFixed || len(req) != joinReqFixed+int(req[joinReqFixed-1]) {
		return errShort
	}
	var network NetworkID
	var id TokenID
	copy(network[:], req[:8])
	copy(id[:], req[8:16])
	expiry := timeOrZero(binary.BigEndian.Uint64(req[16:24]))
	uses := binary.BigEndian.Uint16(req[24:26])
	nick := string(req[joinReqFixed:])
	var joiner key.Public
	copy(joiner[:], hs.PeerStatic())
	if network != r.network {
		r.ctr.inc(CtrJoinRefused)
		return refuse(fmt.Sprintf("the token is for network %s, this peer is in network %s", network, r.network))
	}
	cur := r.currentSecret()
	jk := JoinKey(cur.Secret, network, id, expiry, uses)
	if err := hs.SetPresharedKey(jk[:]); err != nil {
		return err
	}
	reply := []byte{joinAdmitted}
	var reason string
	var claimed *TokenRecord
	if r.IsEvicted(joiner) {
		r.ctr.inc(CtrJoinEvicted)
		reason = "this host's key was evicted from the network; a member must not let it back in"
	} else {
		reason, claimed = r.claimToken(id, expiry, uses, joiner)
	}
	if reason != "" {
		reply = append([]byte{joinRefused}, reason...)
	} else {
		reply = append(reply, r.cfg.Secret[:]...)
		rng := r.cfg.Range
		if !rng.IsValid() || !rng.Addr().Is4() {
			rng = netip.MustParsePrefix("10.32.0.0/12")
		}
		reply = append(reply, rng.Addr().AsSlice()...)
		reply = append(reply, byte(rng.Bits()))
		reply = binary.BigEndian.AppendUint32(reply, cur.N)
		reply = append(reply, cur.Secret[:]...)
		if def := r.cfg.DefaultSubnet; def.IsValid() && def.Addr().Is4() && def != rng {
			reply = append(reply, def.Addr().AsSlice()...)
			reply = append(reply, byte(def.Bits()))
		}
	}
	m2, _, _, err := hs.WriteMessage(nil, reply)
	if err != nil {
		return err
	}
	if err := writeFrame(nc, append([]byte{joinRespNoise}, m2...)); err != nil {
		return err
	}
	if reason != "" {
		r.ctr.inc(CtrJoinRefused)
		r.log.Warn("refused a joiner", "joiner", joiner.Name(), "nickname", nick, "token", id.String(), "why", reason)
		return nil
	}
	// The use was recorded before the answer (claimToken), so a joiner
	// whose admission was lost on the way (the key check failed on its
	// side) has still used the token: the count errs on the safe side.
	if claimed != nil {
		r.saveTokens()
		r.broadcastTokens([]TokenRecord{*claimed})
	}
	r.ctr.inc(CtrJoinAdmitted)
	r.log.Info("admitted a new peer with a token", "joiner", joiner.Name(), "nickname", nick, "token", id.String())
	return nil
}

// claimToken says why a token may not admit joiner now, or "" and then
// records the use at once, under the same lock as the check, so two
// joiners racing for the last use of a token at this member cannot both
// get it. It returns the changed record, to save and gossip.
func (r *Router) claimToken(id TokenID, expiry time.Time, uses uint16, joiner key.Public) (string, *TokenRecord) {
	if !expiry.IsZero() && !r.now().Before(expiry) {
		return "the token has expired; ask a member for a new one ('weavewg token create')", nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tokens[id]
	if t == nil {
		if r.tokensUnsynced {
			// This member lost its registry: the token may have been
			// revoked or used up, and only the others know.
			r.ctr.inc(CtrJoinUnsynced)
			return "this member lost its token registry and has not received it from the others yet; join through another member", nil
		}
		// Made elsewhere and not gossiped here yet: the key proves a
		// member made it; its record will follow (and the use is then
		// recorded by the member that made it, not here).
		return "", nil
	}
	if t.Revoked {
		return "the token was revoked; ask a member for a new one", nil
	}
	// uses is the token's own count, bound to it by the join key; the
	// registry's copy is gossip any member could have raised.
	if uses > 0 {
		_, known := slices.BinarySearchFunc(t.UsedBy, joiner, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
		if !known && len(t.UsedBy) >= int(uses) {
			return fmt.Sprintf("the token has been used already (it admits %d host(s)); ask a member for a new one", uses), nil
		}
	}
	if !mergeToken(t, TokenRecord{UsedBy: []key.Public{joiner}}) {
		return "", nil
	}
	rec := *t
	rec.UsedBy = slices.Clone(t.UsedBy)
	return "", &rec
}
