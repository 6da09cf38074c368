package discovery

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/types/key"
)

// The router's side of secret epochs (secret.go has the rules and formats).

// secretsState is part of Router; every field is guarded by Router.mu.
type secretsState struct {
	epochs     []Epoch // ascending; never empty after New
	activeFrom uint32  // epochs below are kept for catch-up only
	// rotations holds the winning rotation of each kept epoch, by part
	// (nil where a part is not known here).
	rotations map[uint32][]*Rotation
	peerAds   map[key.Public]epochAd
	secretCh  *Channel // constant after New
}

// SecretStatus is what status shows of the epochs.
type SecretStatus struct {
	Epoch  uint32
	ID     SecretID
	Active []uint32     // ascending
	Behind []key.Public // reachable peers that do not advertise Epoch
}

// ErrRotationTooSoon is returned by RotateSecret while the previous
// rotation has not reached every reachable member.
var ErrRotationTooSoon = errors.New("the previous rotation has not reached every reachable member yet; wait until 'weavewg status' shows one active epoch")

// openSecrets loads the saved epochs (or starts with epoch 0 = the
// network's secret) and registers the secret channel. Called from New.
func (r *Router) openSecrets() error {
	st := r.cfg.Secrets
	r.epochs = sortEpochs(slices.Clone(st.Epochs))
	if len(r.epochs) == 0 {
		r.epochs = []Epoch{{N: 0, Secret: r.cfg.Secret}}
	}
	r.activeFrom = min(st.Active, r.newestLocked().N)
	r.rotations = map[uint32][]*Rotation{}
	r.peerAds = map[key.Public]epochAd{}
	for _, b := range st.Rotations {
		rot, err := ParseRotation(b)
		if err != nil || r.verifyRotation(rot) != nil {
			continue
		}
		r.storeRotationLocked(rot)
	}
	ch, err := r.Channel(secretChannel, r.handleSecret)
	if err != nil {
		return err
	}
	r.secretCh = ch
	return nil
}

func (r *Router) newestLocked() Epoch { return r.epochs[len(r.epochs)-1] }

func (r *Router) epochLocked(n uint32) (Epoch, bool) {
	for _, e := range r.epochs {
		if e.N == n {
			return e, true
		}
	}
	return Epoch{}, false
}

// currentSecret is the newest epoch's secret: join keys are made with it.
func (r *Router) currentSecret() Epoch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.newestLocked()
}

// acceptSecretsLocked lists every held epoch, newest first: a listener
// tries them all (inactive ones lead to catch-up only).
func (r *Router) acceptSecretsLocked() []Epoch {
	out := slices.Clone(r.epochs)
	slices.Reverse(out)
	return out
}

// dialSecrets lists the epochs to dial peer with (zero: unknown), in the
// order to try: the pair's epoch first when peer advertised one, then the
// other active epochs, newest first.
func (r *Router) dialSecrets(peer key.Public) []Epoch {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Epoch
	if !peer.IsZero() {
		if e, ok := r.pairEpochLocked(peer); ok {
			out = append(out, e)
		}
	}
	for i := len(r.epochs) - 1; i >= 0; i-- {
		e := r.epochs[i]
		if e.N >= r.activeFrom && !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out
}

// pairEpochLocked is the newest epoch both we and peer hold: the
// advertised one if we hold it (same ID), else our newest if the peer is
// ahead; false when the peer advertised nothing.
func (r *Router) pairEpochLocked(peer key.Public) (Epoch, bool) {
	ad, ok := r.peerAds[peer]
	if !ok {
		return Epoch{}, false
	}
	newest := r.newestLocked()
	if ad.n > newest.N {
		return newest, true
	}
	for i := len(r.epochs) - 1; i >= 0; i-- {
		e := r.epochs[i]
		if e.N > ad.n {
			continue
		}
		if e.N == ad.n && SecretIDOf(e.Secret) != ad.id {
			continue // two rotations of one epoch; the older epoch is common
		}
		if e.N < r.activeFrom {
			break
		}
		return e, true
	}
	return Epoch{}, false
}

// PairSecret is the WireGuard preshared key of the pair (us, peer): the
// newest epoch both hold, or the oldest active one while the peer has
// advertised nothing.
func (r *Router) PairSecret(peer key.Public) key.Secret {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.pairEpochLocked(peer); ok {
		return e.Secret
	}
	for _, e := range r.epochs {
		if e.N >= r.activeFrom {
			return e.Secret
		}
	}
	return r.newestLocked().Secret
}

// Secrets reports the epochs held.
func (r *Router) Secrets() SecretStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.newestLocked()
	st := SecretStatus{Epoch: n.N, ID: SecretIDOf(n.Secret)}
	for _, e := range r.epochs {
		if e.N >= r.activeFrom {
			st.Active = append(st.Active, e.N)
		}
	}
	for k := range r.rt.others() {
		ad, ok := r.peerAds[k]
		if !ok && n.N == 0 {
			continue // a network never rotated advertises nothing: all hold epoch 0
		}
		if !ok || ad.n != n.N || ad.id != st.ID {
			st.Behind = append(st.Behind, k)
		}
	}
	slices.SortFunc(st.Behind, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	return st
}

// SecretState returns what is to be saved.
func (r *Router) secretStateLocked() SecretState {
	st := SecretState{Epochs: slices.Clone(r.epochs), Active: r.activeFrom}
	for _, n := range slices.Sorted(mapKeys(r.rotations)) {
		for _, p := range r.rotations[n] {
			if p != nil {
				st.Rotations = append(st.Rotations, p.raw)
			}
		}
	}
	return st
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (r *Router) saveSecrets() {
	if r.cfg.SaveSecrets == nil {
		return
	}
	r.mu.Lock()
	st := r.secretStateLocked()
	r.mu.Unlock()
	if err := r.cfg.SaveSecrets(st); err != nil {
		r.logOnce(slog.LevelError, "secrets:save", err.Error(), "saving the network secret's epochs failed", "err", err.Error())
	}
}

// RotateSecret makes a new epoch with a random secret, sealed to this
// peer, every peer in the table, extra (the daemon's: address-space
// owners, token users) and the previous rotation's recipients, less the
// evicted. It reports the new status and how many members it sealed to.
func (r *Router) RotateSecret(extra []key.Public) (SecretStatus, int, error) {
	s, err := newSecret()
	if err != nil {
		return SecretStatus{}, 0, err
	}
	r.mu.Lock()
	if r.isEvictedLocked(r.self) {
		r.mu.Unlock()
		return SecretStatus{}, 0, ErrSelfEvicted
	}
	newest := r.newestLocked()
	if r.activeFrom < newest.N {
		r.mu.Unlock()
		return SecretStatus{}, 0, ErrRotationTooSoon
	}
	set := map[key.Public]bool{r.self: true}
	for k, e := range r.recs {
		if e.rec.Version != 0 || r.active[k] != nil {
			set[k] = true
		}
	}
	for _, k := range extra {
		set[k] = true
	}
	for _, p := range r.rotations[newest.N] {
		if p != nil {
			for _, rc := range p.Recipients {
				set[rc.To] = true
			}
		}
	}
	recips := make([]key.Public, 0, len(set))
	for k := range set {
		if !k.IsZero() && !r.isEvictedLocked(k) {
			recips = append(recips, k)
		}
	}
	slices.SortFunc(recips, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	epoch := newest.N + 1
	t := r.now().UnixNano()
	parts, err := makeRotation(r.priv, r.network, epoch, t, s, recips)
	if err != nil {
		r.mu.Unlock()
		return SecretStatus{}, 0, err
	}
	for _, p := range parts {
		r.storeRotationLocked(p)
	}
	r.adoptLocked(Epoch{N: epoch, Secret: s})
	r.mu.Unlock()
	r.log.Warn("rotated the network secret: sealed the new one to every member not evicted", "epoch", epoch, "recipients", len(recips))
	r.saveSecrets()
	for _, p := range parts {
		r.secretCh.Broadcast(p.raw)
	}
	r.broadcastSecretAd()
	r.nudge()
	return r.Secrets(), len(recips), nil
}

// adoptLocked makes e the newest epoch held (replacing a held epoch of
// the same number: the other rotation of it lost).
func (r *Router) adoptLocked(e Epoch) {
	for i := range r.epochs {
		if r.epochs[i].N == e.N {
			r.epochs[i] = e
			return
		}
	}
	r.epochs = sortEpochs(append(r.epochs, e))
	r.activeFrom = min(r.activeFrom, e.N)
	if r.activeFrom < r.epochs[0].N {
		r.activeFrom = r.epochs[0].N
	}
}

// storeRotationLocked keeps rot if its rotation is the winner of its
// epoch; it reports whether rot was new here.
func (r *Router) storeRotationLocked(rot *Rotation) bool {
	if n := len(r.epochs); n > 0 && rot.Epoch+keepEpochs <= r.newestLocked().N {
		return false // too old to matter
	}
	cur := r.rotations[rot.Epoch]
	var first *Rotation
	for _, p := range cur {
		if p != nil {
			first = p
			break
		}
	}
	switch {
	case first == nil:
	case first.Time == rot.Time && first.Rotator == rot.Rotator:
		if int(rot.Part) < len(cur) && cur[rot.Part] != nil {
			return false
		}
	case rot.before(first):
		cur = nil // the other rotation of this epoch lost
	default:
		return false
	}
	if len(cur) != int(rot.Parts) {
		cur = make([]*Rotation, rot.Parts)
	}
	cur[rot.Part] = rot
	r.rotations[rot.Epoch] = cur
	for n := range r.rotations {
		if n+keepEpochs <= rot.Epoch {
			delete(r.rotations, n)
		}
	}
	return true
}

func (r *Router) verifyRotation(rot *Rotation) error {
	if rot.Epoch == 0 {
		return errSecretMsg
	}
	return r.cfg.Verify(rot.Rotator, rotationDomain, rot.signedBytes(r.network), &rot.Sig)
}

func (r *Router) handleSecret(from key.Public, msg []byte) {
	if len(msg) == 0 {
		r.ctr.inc(CtrMessageMalformed)
		return
	}
	switch msg[0] {
	case secretMsgAd:
		ad, err := parseSecretAd(msg)
		if err != nil {
			r.ctr.inc(CtrMessageMalformed)
			return
		}
		r.mu.Lock()
		old, had := r.peerAds[from]
		r.peerAds[from] = ad
		parts := r.partsForLocked(from, ad.n)
		changed := r.checkDropLocked()
		r.mu.Unlock()
		for _, p := range parts {
			r.secretCh.Send(from, p)
		}
		if changed {
			r.saveSecrets()
		}
		if !had || old != ad || changed {
			r.nudge() // the pair's preshared key may change
		}
	case secretMsgRotate:
		rot, err := ParseRotation(msg)
		if err != nil {
			r.ctr.inc(CtrMessageMalformed)
			return
		}
		r.applyRotation(from, rot)
	default:
		r.ctr.inc(CtrMessageUnknownType)
	}
}

// applyRotation takes a rotation part received from a peer.
func (r *Router) applyRotation(from key.Public, rot *Rotation) {
	r.mu.Lock()
	// An epoch more than keepEpochs ahead is refused: no member keeps an
	// epoch that old to let such a peer catch up anyway, and a forged
	// epoch near 2^32 would make the next rotation wrap.
	if rot.Epoch > r.newestLocked().N+keepEpochs || r.isEvictedLocked(rot.Rotator) || r.verifyRotation(rot) != nil {
		r.mu.Unlock()
		r.ctr.inc(CtrRotationBad)
		r.logOnce(slog.LevelWarn, "rotbad:"+rot.Rotator.String(), "", "dropping a secret rotation that does not check (bad signature, its rotator was evicted, or its epoch is far ahead)",
			"claimed_rotator", rot.Rotator.Name(), "via", from.Name())
		return
	}
	if !r.storeRotationLocked(rot) {
		r.mu.Unlock()
		return
	}
	adopted := false
	if s, err := rot.open(r.priv, r.network); err == nil {
		cur, held := r.epochLocked(rot.Epoch)
		if (!held || cur.Secret != s) && rot.Epoch+keepEpochs > r.newestLocked().N {
			r.adoptLocked(Epoch{N: rot.Epoch, Secret: s})
			adopted = true
		}
	} else if !errors.Is(err, ErrNotRecipient) {
		r.ctr.inc(CtrRotationBad)
	}
	r.checkDropLocked()
	r.mu.Unlock()
	r.saveSecrets()
	if adopted {
		r.ctr.inc(CtrRotationsAdopted)
		r.log.Warn("the network secret was rotated: using the new one", "epoch", rot.Epoch, "rotator", rot.Rotator.Name())
		r.broadcastSecretAd()
		r.nudge()
	}
}

// partsForLocked returns the rotation parts a peer advertising epoch n
// needs: those of newer epochs that name it, newest epoch only.
func (r *Router) partsForLocked(peer key.Public, n uint32) [][]byte {
	newest := r.newestLocked().N
	for e := newest; e > n; e-- {
		for _, p := range r.rotations[e] {
			if p != nil && p.hasRecipient(peer) {
				return [][]byte{p.raw}
			}
		}
	}
	return nil
}

// recipientsLocked is the set the newest rotation sealed to, or nil when
// its parts are not all known here (a host admitted after it).
func (r *Router) recipientsLocked(n uint32) map[key.Public]bool {
	parts := r.rotations[n]
	if len(parts) == 0 {
		return nil
	}
	set := map[key.Public]bool{}
	for _, p := range parts {
		if p == nil {
			return nil
		}
		for _, rc := range p.Recipients {
			set[rc.To] = true
		}
	}
	return set
}

// checkDropLocked makes the newest epoch the only active one once every
// reachable recipient of its rotation (every reachable peer, if the
// recipients are not known here) advertises it. Connections still under
// an older secret whose peer is no recipient are closed then. It reports
// whether anything changed.
func (r *Router) checkDropLocked() bool {
	newest := r.newestLocked()
	if r.activeFrom >= newest.N {
		return false
	}
	id := SecretIDOf(newest.Secret)
	recips := r.recipientsLocked(newest.N)
	for k := range r.rt.others() {
		if recips != nil && !recips[k] {
			continue
		}
		if ad, ok := r.peerAds[k]; !ok || ad.n != newest.N || ad.id != id {
			return false
		}
	}
	r.activeFrom = newest.N
	r.log.Info("every reachable member holds the new network secret: older ones now only let members that were away catch up", "epoch", newest.N)
	for c := range r.conns {
		if recips != nil && c.epoch < newest.N && !recips[c.peer] {
			r.ctr.inc(CtrConnStaleSecret)
			c.close()
		}
	}
	return true
}

// broadcastSecretAd tells every reachable peer the newest epoch held.
func (r *Router) broadcastSecretAd() {
	if r.secretCh == nil {
		return
	}
	n := r.currentSecret()
	r.secretCh.Broadcast(appendSecretAd(nil, n.N, SecretIDOf(n.Secret)))
}

// secretAntiEntropy runs every anti-entropy round: the advertisement to
// everyone, the rotation to each reachable member still behind, and the
// drop check (a peer that became unreachable no longer holds it up).
func (r *Router) secretAntiEntropy() {
	r.mu.Lock()
	rotated := r.newestLocked().N > 0 || len(r.rotations) > 0
	r.mu.Unlock()
	if !rotated {
		return // no advertisement needed: a pair that hears none uses epoch 0
	}
	// The advertisement goes to every peer: past beat.SpreadPeers peers,
	// not every round (issue 18); a rotation advertises at once.
	r.mu.Lock()
	now := r.now()
	ad := !now.Before(r.nextSecretAd)
	if ad {
		r.nextSecretAd = now.Add(beat.Spread(r.tun.antiEntropy, r.rt.count()) - r.tun.antiEntropy/2)
	}
	r.mu.Unlock()
	if ad {
		r.broadcastSecretAd()
	}
	r.mu.Lock()
	type send struct {
		to    key.Public
		parts [][]byte
	}
	var sends []send
	for k := range r.rt.others() {
		n := uint32(0)
		if ad, ok := r.peerAds[k]; ok {
			n = ad.n
		} else {
			continue
		}
		if ps := r.partsForLocked(k, n); len(ps) > 0 {
			sends = append(sends, send{k, ps})
		}
	}
	changed := r.checkDropLocked()
	r.mu.Unlock()
	for _, s := range sends {
		for _, p := range s.parts {
			r.secretCh.Send(s.to, p)
		}
	}
	if changed {
		r.saveSecrets()
		r.nudge()
	}
}

// catchUpLocked returns what a member dialling with the inactive epoch m
// is sent: the part of the newest rotation naming it, or nil.
func (r *Router) catchUpLocked(peer key.Public, m uint32) [][]byte {
	if r.isEvictedLocked(peer) {
		return nil
	}
	return r.partsForLocked(peer, m)
}

// serveCatchUp sends a member that dialled with an inactive secret the
// rotation sealed to it, on that connection, and closes it.
func (r *Router) serveCatchUp(c *conn) {
	defer c.close()
	r.mu.Lock()
	parts := r.catchUpLocked(c.peer, c.epoch)
	r.mu.Unlock()
	if len(parts) == 0 {
		r.ctr.inc(CtrConnStaleSecret)
		r.logOnce(slog.LevelWarn, "stale:"+c.peer.String(), "",
			"closed a control connection under an old network secret: the dialler is no member the new secret was sealed to",
			"peer", c.peer.Name(), "addr", c.addr)
		return
	}
	for _, p := range parts {
		m := ChannelMessage{Name: secretChannel, Src: r.self, Dst: c.peer, Hops: 1, Payload: p}
		m.Sign(r.priv)
		b, err := AppendChannelMessage(nil, m)
		if err != nil {
			return
		}
		if err := c.writeMsg(b, r.tun.writeTimeout); err != nil {
			return
		}
	}
	r.ctr.inc(CtrCatchUpServed)
	r.log.Info("sent the new network secret to a member that was away", "peer", c.peer.Name(), "nickname", c.hello.Nickname)
	// Half-close, so the frames arrive before the end of the stream, then
	// read until the member hangs up (it redials with the new secret), at
	// most 5 s: closing with its data unread would reset the connection
	// and could lose the frames.
	if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := c.nc.Read(buf); err != nil {
			return
		}
	}
}
