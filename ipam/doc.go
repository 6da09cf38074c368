// Package ipam allocates overlay addresses without a cluster store: a ring
// CRDT of owned ranges gossiped between peers, and a per-peer allocator that
// hands out addresses from its own ranges and persists them in bbolt.
//
// # The ring
//
// The overlay range (an IPv4 prefix) is cut by tokens. Each Entry owns the
// addresses from its token to the next. Only an entry's owner changes it, and
// each change bumps its version, so a merge is a per-token maximum: it is
// commutative, associative and idempotent, and gossip order never matters.
// Tokens are never removed. A peer gives space away by splitting one of its
// entries (Ring.Grant): it inserts tokens and hands the new entry to the
// other peer. The ring carries its Seed (creating peer and random ID); rings
// of different seeds never merge. When two networks meet, one that holds
// no container's address gives way: its peers drop their rings and join
// the other (giveway.go says which and why every order of meetings ends
// in one network); two used networks refuse each other
// (SeedMismatchError names both) and neither is touched.
//
// Who seeds: the start that creates the network (launch with nobody to join
// and no network in its state dir) calls Allocator.Seed and owns the whole
// range at once; never a later start, even of that peer with its ring lost
// (recover.go: a corrupt state file is set aside and the ring comes back by
// gossip). Every other peer
// starts with an empty ring, adopts the first ring gossip brings, and when
// it needs an address asks a donor (the control neighbour with the most
// free space published in the ring, or with none the reachable peer with
// the most: SetNeighbours) with a request message; the donor grants the
// upper half of its largest aligned free block, so ranges stay CIDR-shaped.
// No consensus round, so nothing can get stuck awaiting one.
//
// # Who may change what (issue 14)
//
// Ring state is relayed, so every item carries its author's signature
// (XEdDSA on the identity key, sign.go): an entry state its writer's (the
// owner, the peer that granted it, or a removed owner's heir), a vote its
// voter's, a transfer state its issuer's. A receiver takes an entry state
// only if the writer, or the peer that sent it, is the effective owner of
// that token in the receiver's own ring (authority.go), so a member can
// neither take nor split another peer's space; it counts every refusal.
// A joiner (no ring yet) takes the first ring whose signatures verify, and
// while it owns nothing, the rings of the donors it asked for space; space
// granted to a peer it takes from the granter only (authority.go).
//
// # rmpeer
//
// RemovePeer(X) on peer I records Transfer{X, I} in the ring; I votes for
// itself. Every peer that learns of transfers of X votes for the smallest
// live issuer, and keeps that vote (sticky) unless that transfer is
// withdrawn or another issuer claims Done. An issuer that sees a smaller
// live competitor withdraws (and then never completes). An issuer
// completes (Done, and then never withdraws) when every elector votes for
// it: the electors are every live owner in its ring (an owner that is
// neither X nor itself being removed) and every peer it can reach, plus
// itself; when its ring holds no live owner, also the issuer of every
// live transfer (of any peer). Once Done, X's entries belong to I (through
// Ring.heir, so X entries that arrive late map to I too).
//
// Why two issuers never both complete: both need the votes of every live
// owner they know; any owner O known to both votes for one transfer at a
// time and moves its vote only after that transfer is withdrawn (or to a
// Done claim, which then completed without O's vote, so O was no elector
// of it), and an issuer never withdraws after completing. So if I1
// completed, no vote ever left I1 for a transfer that could still
// complete, and I2 cannot have collected O's vote, in or across
// partitions. A partition only delays completion (an owner on the other
// side has not voted yet); competing issuers resolve deterministically
// (smallest key wins) on heal. If an issuer dies with its transfer
// pending, rmpeer the issuer too: its pending transfers then count as
// withdrawn (while no live owner is left, every other transfer waits for
// that too: the issuer is their elector; --reclaim-after removes only
// owners).
//
// The argument needs a live owner known to both. Until Dec 2026 an issuer
// whose ring held none (every owner dead or itself being removed: the
// seed died before its grants, or before its own transfer completed)
// counted only the peers it reached, so the two parts of a partition each
// completed, once on a certificate of the issuer's own vote alone
// (TestRmpeerPartitionsWithoutCommonOwner; the simulation found it with
// quick rounds to every reachable peer). Now such an issuer also needs
// the issuers of the live transfers, the peers that will own the space of
// the dead owners: known to both parts when their transfers were issued
// before the split, so one part waits. A receiver checks a Done claim's
// signatures (issuer's and every certificate vote's, authority.go), not
// its size: the certificate holds the votes of the electors its issuer
// counted, and a receiver cannot tell an owner the issuer ignored from
// one that got its space after the claim (a receiver that refused
// certificates missing an owner it knows refused the sole owner's honest
// claim once that owner had granted space: simulated, Dec 2026).
//
// What stays unsafe, as rmpeer on a live peer is misuse: an owner that is
// only partitioned away but being removed on one side (--reclaim-after
// shorter than the partition, or two parts each removing the other's
// owners) is no elector there, so if every live owner of one part is
// being removed in the other, both parts complete; so do two parts that
// each issued their own transfer of the last owners, or of the dead
// issuer that was to inherit them, unknown to the other (no live owner is
// left to arbitrate: the simulation with quick rounds to every reachable
// peer found 2 such sequences in 2,000 after the fix). An issuer that completed and died
// before its claim left any peer counts as withdrawn once it is removed,
// so another issuer may complete too: its claim is lost as its grants
// are in the known hole below (the simulation delivers a dying peer's
// last ring to everyone, and Check finds a dead peer handed over twice).
//
// Why a vote, not Weave Net's rmpeer (the host that runs it takes the
// space at once): there two hosts that run it for the same peer both own
// the space, and a peer that was only partitioned comes back owning it
// too; Weave Net's documentation forbids both ("do not invoke weave rmpeer
// for the same peer on more than one host"). Here completion needs every
// owner's vote and no peer votes while it reaches X, so a completed
// transfer means no owner reached X, and concurrent rmpeers end in one
// owner. The price is O(N) votes per rmpeer, each broadcast: O(N^2)
// messages (about 40,000 messages, 13 MB, at 200 owners and 160,000,
// 53 MB, at 400 in the simulation, TestRmpeerAtScale).
//
// At scale (issue 18): votes and a certificate of a thousand voters do not
// fit one message, so they travel in parts of bounded size (parts.go:
// votesParts), a certificate in slices that each verify on their own (the
// Done claim's signature does not cover the certificate; sign.go) and
// that a receiver unions. A peer that concludes a transfer of X forgets
// the votes on X and the transfers of X that are not Done (forget), and
// drops them unread when gossip brings them again: the vote table holds
// only pending rmpeers' votes (MaxVotes bounds those pending at once, not
// the network's life). A change's broadcast carries only the votes and
// transfers that changed, not the table.
//
// Known hole: if X grants space to a new peer J and dies before that grant
// leaves the part of the network J is in, while I's part (which never heard
// of J) completes the transfer, then after the heal J's newer entry beats
// X's old one and I loses that piece. I then drops the allocations it made
// there (Allocator.Conflicts returns them) and the daemon must re-address
// those containers. Using rmpeer on a live peer is misuse, as in Weave Net.
//
// Other limits: a completed transfer is kept for the network's life, with
// its certificate (a returning dead peer concludes from it), so a network
// sees at most MaxTransfers completed rmpeers and MaxCertVotes
// certificate votes in its life (32 rmpeers at 1,000 owners); rmpeer is
// refused (ErrTooManyElectors) when the votes it needs do not fit besides
// those of the rmpeers pending, or its certificate besides those kept. A
// ring holds at most MaxEntries entries and MaxPeers keys (a ring larger
// than one message travels in parts, parts.go); a peer whose own transfer was withdrawn
// cannot issue another for the same dead peer (another peer must, if the
// winner itself died); every peer must be given the same Reserved list.
//
// # What the daemon does
//
//   - Open at startup with the state dir's ipam.db and the identity key
//     pair (Config.Self, Config.Private: this peer signs its ring items). Creating a network
//     (the start that makes it): Seed once, when Status().Seed is zero.
//     Re-adopted containers: ClaimAfterRestart.
//     Joining: nothing; the first ring gossip makes the peer a member.
//   - Carry messages: Transport.Broadcast/Send out, HandleMessage in (a
//     returned error is logged once and counted; a seed mismatch also shows
//     in Status().Err). NewNeighbour(peer) to a new control neighbour (a relay digest);
//     SendDigest to one random reachable peer every 10 s (anti-entropy).
//   - SetPeers whenever reachability changes, SetNeighbours with the
//     peers it has control connections to (Tick sends them the quick
//     digest rounds that follow a change of the ring, digest.go); Tick
//     about once a second;
//     Reclaim from that loop when --reclaim-after is set.
//   - Attach: Claim existing addresses first after a restart, then Allocate
//     (on ErrWaitingForSpace wait on Updated() and retry). Detach: Free.
//   - Routes and AllowedIPs: Prefixes(peer) / AllPrefixes after Updated().
//
// # Files
//
// ring.go and transfer.go are the CRDT (pure data); wire.go its encoding
// and parts.go the parts it travels in;
// sign.go the signatures; authority.go what a received ring may change;
// alloc.go the Allocator's state, Open and Seed; addresses.go allocating
// and freeing; messages.go ring gossip and the donor's side of a grant;
// giveway.go which of two networks that meet gives way; digest.go
// anti-entropy and new neighbours; grant.go what a grant's requester is
// sent; answers.go which parts are answered;
// space.go reachability and the requester's side; rmpeer.go rmpeer,
// reclaim and leave; recover.go a lost or corrupt state file; store.go
// bbolt; undo.go merging a received ring in place, and undoing it;
// own.go the index of this peer's own entries (per-change work in
// proportion to them, not to the ring). Logs go to Config.Logger (slog,
// named fields).
//
// # Wire format
//
// See wire.go: one version byte, one type byte, a fixed layout per type.
// Ring state goes as parts (parts.go): a change by Broadcast, as the
// entries that changed with their bounds (nobody answers it); the whole
// ring by Send to a peer with no ring yet; a peer just granted space gets
// the stretches its digest (sent with the request) showed differ and the
// grant (grant.go). A new control neighbour gets a digest with relay set
// (NewNeighbour, digest.go): it answers what differs, and each side floods
// what is news to it (a healed partition). After a change of the ring a
// peer sends a control neighbour a digest each Tick for a few seconds
// (quick rounds, digest.go), so a broadcast lost on the way is repaired
// within seconds. Anti-entropy sends a random peer a digest (digest.go), answered
// with the stretches of the ring that differ, as an ask: a part whose
// receiver answers with what its sender lacks of it (answers.go). Space
// requests go by Send to the donor. A peer that refuses a state for lack of authority holds
// it for a later merge and, if it is still held a second later, asks the
// owner in its own view for that span, again every few seconds while it
// stays held, for at most two minutes (authority.go): the whole ring
// carries only each token's latest state, not the grant that made its
// writer the owner.
package ipam
