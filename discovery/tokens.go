package discovery

import (
	"bytes"
	cryptorand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// The token registry: what every member knows of the tokens made in the
// network, so any member can admit a joiner and all agree on revocations and
// use counts. It is a CRDT: per token, Revoked is an OR and UsedBy a
// grow-only set; the other fields never change after creation. Records
// travel on the internal "tokens" channel whenever they change and in full
// every anti-entropy round.
//
// A records message:
//
//	+-------+---------+--------------------------------------------------+
//	| ver 1 | count 2 | count × record                                   |
//	+-------+---------+--------------------------------------------------+
//	record: id 8 | expiry 8 | uses 2 | creator 32 | created 8 | flags 1 |
//	        nused 2 | nused × key 32
//
// flags bit 0: revoked. Times are Unix seconds, 0 for none.

const (
	tokensChannel     = "tokens"
	tokensMsgVersion  = 1
	tokenRecordFixed  = 8 + 8 + 2 + key.Len + 8 + 1 + 2
	maxTokenUsedBy    = 1024
	maxTokens         = 4096
	tokenFlagRevoked  = 1
	defaultTokenTTL   = 24 * time.Hour
	maxTokenRecordLen = tokenRecordFixed + maxTokenUsedBy*key.Len
)

// TokenRecord is one token as the registry knows it.
type TokenRecord struct {
	ID      TokenID
	Expiry  time.Time // zero: never
	Uses    uint16    // 0: any number
	Creator key.Public
	Created time.Time
	Revoked bool
	UsedBy  []key.Public // sorted, unique
}

// ErrUnknownToken is returned by RevokeToken for an ID nobody made.
var ErrUnknownToken = errors.New("no such token (see 'weavewg token list')")

// mergeToken folds o into r; it reports whether r changed.
func mergeToken(r *TokenRecord, o TokenRecord) bool {
	changed := false
	if o.Revoked && !r.Revoked {
		r.Revoked, changed = true, true
	}
	for _, k := range o.UsedBy {
		i, found := slices.BinarySearchFunc(r.UsedBy, k, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
		if !found && len(r.UsedBy) < maxTokenUsedBy {
			r.UsedBy = slices.Insert(r.UsedBy, i, k)
			changed = true
		}
	}
	return changed
}

func appendTokenRecord(b []byte, r TokenRecord) []byte {
	b = append(b, r.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, unixOrZero(r.Expiry))
	b = binary.BigEndian.AppendUint16(b, r.Uses)
	b = append(b, r.Creator[:]...)
	b = binary.BigEndian.AppendUint64(b, unixOrZero(r.Created))
	var flags byte
	if r.Revoked {
		flags |= tokenFlagRevoked
	}
	b = append(b, flags)
	used := r.UsedBy
	if len(used) > maxTokenUsedBy {
		used = used[:maxTokenUsedBy]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(used)))
	for _, k := range used {
		b = append(b, k[:]...)
	}
	return b
}

// AppendTokenRecords appends a records message holding recs.
func AppendTokenRecords(b []byte, recs []TokenRecord) []byte {
	b = append(b, tokensMsgVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(recs)))
	for _, r := range recs {
		b = appendTokenRecord(b, r)
	}
	return b
}

func timeOrZero(s uint64) time.Time {
	if s == 0 || s > 1<<40 {
		return time.Time{}
	}
	return time.Unix(int64(s), 0).UTC()
}

// ParseTokenRecords parses a records message.
func ParseTokenRecords(b []byte) ([]TokenRecord, error) {
	if len(b) < 3 {
		return nil, errShort
	}
	if b[0] != tokensMsgVersion {
		return nil, fmt.Errorf("discovery: token records version %d", b[0])
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	b = b[3:]
	if n > maxTokens {
		return nil, fmt.Errorf("discovery: %d token records", n)
	}
	out := make([]TokenRecord, 0, min(n, len(b)/tokenRecordFixed))
	for range n {
		if len(b) < tokenRecordFixed {
			return nil, errShort
		}
		var r TokenRecord
		copy(r.ID[:], b[:8])
		r.Expiry = timeOrZero(binary.BigEndian.Uint64(b[8:16]))
		r.Uses = binary.BigEndian.Uint16(b[16:18])
		copy(r.Creator[:], b[18:50])
		r.Created = timeOrZero(binary.BigEndian.Uint64(b[50:58]))
		flags := b[58]
		if flags&^tokenFlagRevoked != 0 {
			return nil, fmt.Errorf("discovery: unknown token flags %#x", flags)
		}
		r.Revoked = flags&tokenFlagRevoked != 0
		nu := int(binary.BigEndian.Uint16(b[59:61]))
		b = b[tokenRecordFixed:]
		if nu > maxTokenUsedBy || len(b) < nu*key.Len {
			return nil, errShort
		}
		for i := range nu {
			var k key.Public
			copy(k[:], b[i*key.Len:])
			r.UsedBy = append(r.UsedBy, k)
		}
		b = b[nu*key.Len:]
		slices.SortFunc(r.UsedBy, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
		r.UsedBy = slices.Compact(r.UsedBy)
		out = append(out, r)
	}
	if len(b) != 0 {
		return nil, errTrailing
	}
	return out, nil
}

// openTokens registers the internal tokens channel. Called from New.
func (r *Router) openTokens() error {
	ch, err := r.Channel(tokensChannel, r.handleTokens)
	if err != nil {
		return err
	}
	r.tokensCh = ch
	r.tokensUnsynced = r.cfg.TokensLost
	for _, t := range r.cfg.Tokens {
		t := t
		r.tokens[t.ID] = &t
	}
	return nil
}

func (r *Router) handleTokens(from key.Public, msg []byte) {
	recs, err := ParseTokenRecords(msg)
	if err != nil {
		r.ctr.inc(CtrMessageMalformed)
		r.logOnce(slog.LevelWarn, "tokens:"+from.String(), "malformed", "ignoring malformed token records", "peer", from.Name(), "err", err.Error())
		return
	}
	r.mu.Lock()
	if r.tokensUnsynced && from != r.self {
		r.tokensUnsynced = false
		r.log.Info("token registry received from a peer: admitting joiners again", "peer", from.Name())
	}
	var changed []TokenRecord
	for _, o := range recs {
		cur := r.tokens[o.ID]
		if cur == nil {
			if len(r.tokens) >= maxTokens {
				continue
			}
			c := o
			r.tokens[o.ID] = &c
			changed = append(changed, c)
			continue
		}
		if mergeToken(cur, o) {
			changed = append(changed, *cur)
		}
	}
	r.mu.Unlock()
	if len(changed) > 0 {
		r.saveTokens()
	}
}

// tokenSnapshot returns every record, by creation time.
func (r *Router) tokenSnapshot() []TokenRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tokenSnapshotLocked()
}

func (r *Router) tokenSnapshotLocked() []TokenRecord {
	out := make([]TokenRecord, 0, len(r.tokens))
	for _, t := range r.tokens {
		c := *t
		c.UsedBy = slices.Clone(t.UsedBy)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b TokenRecord) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return bytes.Compare(a.ID[:], b.ID[:])
	})
	return out
}

func (r *Router) saveTokens() {
	if r.cfg.SaveTokens == nil {
		return
	}
	if err := r.cfg.SaveTokens(r.tokenSnapshot()); err != nil {
		r.logOnce(slog.LevelError, "tokens:save", err.Error(), "saving the token registry failed", "err", err.Error())
	}
}

// broadcastTokens sends recs to every reachable peer, in messages that
// fit a channel payload; nil is the anti-entropy round: the whole registry
// to one random reachable peer. Changes go to everyone at once, so the
// round only repairs, and with every peer picking one at random each peer
// still hears from about one per round: an idle host sends and receives
// O(1) registry messages a round, not one from every peer (issue 18).
func (r *Router) broadcastTokens(recs []TokenRecord) {
	full := recs == nil
	if full {
		recs = r.tokenSnapshot()
	}
	if r.tokensCh == nil {
		return
	}
	send := r.tokensCh.Broadcast
	if full {
		to, ok := r.randomReachable()
		if !ok {
			return
		}
		send = func(m []byte) { r.tokensCh.Send(to, m) }
	}
	if len(recs) == 0 {
		// An empty registry is not sent in a round. A member that lost
		// its own (tokensUnsynced) refuses only tokens it does not know,
		// and a token that exists is in its maker's registry, whose
		// rounds send it; a token made later reaches every member
		// when it is made. Every member of a mesh without tokens (a
		// password network) signed and sent an empty registry every
		// round, and each recipient checked it: about 13 % of the
		// idle CPU of 100 simulated routers.
		return
	}
	var batch []TokenRecord
	size := 3
	flush := func() {
		if len(batch) > 0 {
			send(AppendTokenRecords(nil, batch))
		}
		batch, size = nil, 3
	}
	for _, t := range recs {
		l := tokenRecordFixed + len(t.UsedBy)*key.Len
		if size+l > MaxChannelPayload {
			flush()
		}
		batch = append(batch, t)
		size += l
	}
	flush()
}

// CreateToken makes a join token admitting uses hosts (0: any number) until
// ttl from now (0: 24 h; negative: never expires), naming endpoints as the
// peers to contact. It is recorded and gossiped so every member honours it.
func (r *Router) CreateToken(ttl time.Duration, uses uint16, endpoints []Bootstrap) (Token, error) {
	if len(endpoints) == 0 {
		return Token{}, errors.New("a token needs at least one endpoint a joiner can reach (--endpoint HOST:PORT)")
	}
	if len(endpoints) > maxTokenEndpoints {
		endpoints = endpoints[:maxTokenEndpoints]
	}
	now := r.now()
	t := Token{Network: r.network, Uses: uses, Endpoints: endpoints}
	if _, err := cryptorand.Read(t.ID[:]); err != nil {
		return Token{}, err
	}
	switch {
	case ttl == 0:
		t.Expiry = now.Add(defaultTokenTTL).Truncate(time.Second)
	case ttl > 0:
		t.Expiry = now.Add(ttl).Truncate(time.Second)
	}
	// The newest epoch's secret: a rotation ends every token made before.
	t.JoinKey = JoinKey(r.currentSecret().Secret, t.Network, t.ID, t.Expiry, t.Uses)
	rec := TokenRecord{ID: t.ID, Expiry: t.Expiry, Uses: uses, Creator: r.self, Created: now.Truncate(time.Second)}
	r.mu.Lock()
	if len(r.tokens) >= maxTokens {
		r.mu.Unlock()
		return Token{}, errors.New("too many tokens in this network; revoke unused ones")
	}
	r.tokens[t.ID] = &rec
	r.mu.Unlock()
	r.saveTokens()
	r.broadcastTokens([]TokenRecord{rec})
	return t, nil
}

// Tokens lists every token the network made, oldest first.
func (r *Router) Tokens() []TokenRecord { return r.tokenSnapshot() }

// RevokeToken stops a token from admitting anyone, on every member.
func (r *Router) RevokeToken(id TokenID) error {
	r.mu.Lock()
	t := r.tokens[id]
	if t == nil {
		r.mu.Unlock()
		return ErrUnknownToken
	}
	t.Revoked = true
	rec := *t
	r.mu.Unlock()
	r.saveTokens()
	r.broadcastTokens([]TokenRecord{rec})
	return nil
}

// randomReachable picks a reachable peer other than us.
func (r *Router) randomReachable() (key.Public, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.rt.count() - 1
	if n <= 0 {
		return key.Public{}, false
	}
	// By index, not by walking the reachable peers: each anti-entropy
	// round (tokens, evictions) picked one, O(N) per router per round.
	return r.rt.keys[r.rt.order[1+rand.N(n)]], true
}
