package ipam

import (
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Networks meeting: which of two networks gives way when a ring of
// another one arrives.
//
// Hosts launched alone each create a network; connected, they must end in
// one. Two networks never merge (each holds the whole range), so one gives
// way: each of its peers drops its ring (and host address) and adopts the
// other's, then asks for space there like a joiner. Only a network that
// holds no container's address may give way (nothing depends on it); of
// two such, an order every peer computes alike from the rings decides:
//
//  1. a used network (Ring.Used: an allocation other than a host address,
//     a claim, or an rmpeer, ever) beats an unused one; two used networks
//     refuse each other (both log why) and stay apart;
//  2. then the smaller seed.
//
// Both are in every part of a ring message (parts.go), so each part
// decides alike; a peer that gives way puts the other ring together from
// its parts first, as a joiner does.
//
// Each peer decides alone, on its own view: it gives way when its network
// is unused as far as it knows (its ring says unused and it holds no
// allocation but its host address) and the incoming ring ranks higher.
// The winner's peers answer a loser's ring with their own, so one message
// from either side settles a pair (besides anti-entropy).
//
// Why it converges: a network's rank only grows (Used is an OR; seeds
// never change), so a peer's view of a rank is a lower bound that gossip
// brings up to date, and ranks are finitely many. A peer moves only to a
// network that ranks higher in its view than the one it leaves (it may
// come back to a network it left before knowing it was used), so the rank
// of its own network in its view rises with every move, and it moves
// finitely often. Once nobody moves, any two networks still held would
// exchange rings (anti-entropy, the answers above), and unless both are
// used the lower one's peers would move: so if at most one of the
// networks that meet holds a container, all end in one. A peer holding a
// container's address never gives way, so no allocation is lost.
//
// What no rule here can settle: containers attached in two networks
// before they meet (both used: they stay apart, as two used networks
// always do), including a host of an unused network that was cut off
// when its network gave way and attached containers before it heard.
// The rings of networks given up are kept in ipam.db too (bucket
// "left"), so a restart between leaving and coming back changes nothing.

// ringUsed reports whether a ring shows its network used. An rmpeer
// marks the ring Used too; transfers and votes are counted for rings
// that carry them without the flag.
func ringUsed(r *Ring) bool {
	return r.Used || len(r.Transfers) > 0 || len(r.Votes) > 0
}

// netRank is what decides which of two networks gives way.
type netRank struct {
	used bool
	seed Seed
}

// less reports whether network x gives way to network y, if x is unused.
func (x netRank) less(y netRank) bool {
	if x.used != y.used {
		return y.used
	}
	return seedLess(y.seed, x.seed)
}

func seedLess(x, y Seed) bool {
	if x.Peer != y.Peer {
		return x.Peer.Less(y.Peer)
	}
	return x.ID < y.ID
}

// meeting is the outcome of a ring of another network arriving.
type meeting int

const (
	bothStay    meeting = iota // two used networks: refuse
	weGiveWay                  // drop ours, adopt theirs
	theyGiveWay                // keep ours; its peers come to us
)

// meetLocked decides what a ring of another network means for ours.
func (a *Allocator) meetLocked(in *Ring) meeting {
	ours := netRank{used: ringUsed(a.ring) || a.usesLocked() > 0, seed: a.ring.Seed}
	theirs := netRank{used: ringUsed(in), seed: in.Seed}
	switch {
	case !ours.used && ours.less(theirs):
		return weGiveWay
	case !theirs.used && theirs.less(ours):
		return theyGiveWay
	}
	return bothStay
}

// maxLeft bounds the rings of networks this peer gave up that it keeps.
const maxLeft = 4

// giveWayLocked drops our network for the one p belongs to: the host
// address goes (the daemon allocates another), and what this peer was
// doing in the old network (a space request, states held for authority,
// a ring being put together) is forgotten. A network new to this peer is
// adopted as a joiner adopts its first ring: once its parts cover the
// range and their signatures verify (until then nothing changes and
// changed is false). A network this peer gave up before (it left before
// knowing the network was used) is merged into the ring it kept then, as
// if it had been cut off meanwhile: a copy sent now may be older in this
// peer's own entries than what it signed before leaving (a grant it
// made), and acting on it would give the same space away twice.
func (a *Allocator) giveWayLocked(p *RingPart, from key.Public) (next *Ring, changed bool, err error) {
	in := p.Ring
	old, rejoin := a.left[in.Seed]
	if rejoin {
		clear(a.held)
		clear(a.askAuth)
		next = old.Clone()
		a.mergeCheckedLocked(next, in, from, p.Bound, &mergeUndo{})
		a.asm, a.asmCover, a.asmEnds = nil, nil, nil
	} else {
		next, _ = NewRing(a.ring.Range)
		if changed, err = a.adoptPartLocked(next, p); err != nil || !changed {
			return nil, false, err
		}
		clear(a.held)
		clear(a.askAuth)
	}
	a.log.Warn("joining another network; this peer's network holds no container and gives way",
		"network", in.Seed.String(), "dropped", a.ring.Seed.String(), "their_used", ringUsed(in), "rejoined", rejoin)
	a.count("ipam_seed_abandoned")
	delete(a.left, in.Seed)
	if len(a.left) >= maxLeft {
		clear(a.left)
	}
	a.left[a.ring.Seed] = a.ring
	a.saveLeftLocked()
	a.dropHostLocked()
	a.lastErr = nil
	a.reqDonor, a.silent = key.Public{}, nil
	return next, true, nil
}

// answerLoserLocked sends our ring to a peer of a network that gives way
// to ours, so it need not wait for anti-entropy; at most once a second
// per peer (it may relay its old ring a while longer).
func (a *Allocator) answerLoserLocked(from key.Public) outbox {
	a.count("ipam_ring_other_network_gives_way")
	now := a.now()
	if last, ok := a.lastReply[from]; ok && now.Sub(last) < time.Second {
		return outbox{}
	}
	if len(a.lastReply) >= MaxPeers {
		clear(a.lastReply)
	}
	a.lastReply[from] = now
	msgs, err := ringParts(a.ring, nil, true, false)
	if err != nil {
		return outbox{}
	}
	return outbox{replyTo: from, reply: msgs}
}

// saveLeftLocked writes the rings of the networks given up to the state
// file. A failure is logged: the ring in memory still serves until a
// restart.
func (a *Allocator) saveLeftLocked() {
	var bodies [][]byte
	for _, r := range a.left {
		b, err := AppendRing(nil, r)
		if err != nil {
			continue
		}
		bodies = append(bodies, b)
	}
	if err := a.st.saveLeft(bodies); err != nil {
		a.log.Error("saving the rings of networks given up", "err", err)
	}
}

// loadLeftLocked reads them back at Open. One that does not parse is
// dropped with a count (it only guards a return to that network).
func (a *Allocator) loadLeftLocked() {
	bodies, err := a.st.loadLeft()
	if err != nil {
		a.log.Error("loading the rings of networks given up", "err", err)
		return
	}
	for _, b := range bodies {
		r, _, err := parseStoredRing(b, a.self)
		if err != nil || r.Range != a.ring.Range || r.Validate() != nil || len(a.left) >= maxLeft {
			a.count("ipam_left_ring_dropped")
			continue
		}
		r.conclude(a.self)
		a.left[r.Seed] = r
	}
}
