package dns

import "github.com/weavewg/weavewg/types/key"

// Welcomes. A peer that becomes reachable (joined, restarted, or back from
// a partition) is sent at once what it can take rather than left to the
// next anti-entropy round: a restarted peer holds no table, and until it
// gets one its server answers NXDOMAIN for every other peer's names. What
// it takes from us is our own entries, and the copies we hold of its
// entries: a restarted peer knows nothing of its previous run's names, and
// seeing them it buries the stale ones (Table.Merge's replies).
//
// One arrival is sent both in one message. Several at once are sent our
// own state alone, the same for each, as one multicast where the Transport
// can (Multicaster): after a partition heals, every peer on each side sees
// every peer on the other arrive, and a message to each, crossing its
// whole path, was 16,200 messages and 76,680 frames at a heal of a tenth of
// 300 simulated peers, O(N²) for the mesh. The copies then go back only
// where they are stale: each peer sends its arrivals its own state, even
// empty, and a peer taking an owner's state returns the live entries of
// that owner it holds and the state lacks (returnStale). After a heal the
// copies match and nothing goes back; after a restart the stale ones do.
//
// A peer that predates this sends its own state with our copies at every
// arrival; the check holds for it. One case is not covered in a mesh of
// both: a peer of the previous version that restarted with no names, seen
// arrive together with others, sends a state holding only copies of ours,
// which is not taken as its state (returnStale), so its stale names stay
// answered here until it is unreachable for TableOptions.PeerExpiry.

// welcome sends each peer that just became reachable what it can take
// from us (above). One join costs a message per peer, where a broadcast
// of the table from every peer cost N² (issue 18). A transport that
// cannot send to one peer gets the table broadcast.
func (s *Server) welcome(arrived []key.Public) {
	if len(arrived) == 0 {
		return
	}
	tb := s.transport.Load()
	if tb == nil {
		return
	}
	sender, ok := tb.t.(Sender)
	if !ok {
		s.broadcast(MsgState, s.table.All())
		return
	}
	mc, ok := sender.(Multicaster)
	if !ok || len(arrived) == 1 {
		s.c.welcomeSent.Add(uint64(s.sendOwnTo(sender, arrived)))
		return
	}
	for _, m := range stateMessages(s.table.ownEntries()) {
		mc.Multicast(arrived, m)
		s.c.gossipSent.Add(1)
		s.c.welcomeMulticast.Add(1)
	}
	s.c.welcomeSent.Add(uint64(len(arrived)))
}

// stateMessages encodes es as state messages: one with no entries if es
// is empty, so that a peer we have no names for learns that we have none
// (returnStale).
func stateMessages(es []Entry) [][]byte {
	if len(es) == 0 {
		return [][]byte{AppendMessage(nil, MsgState, nil)}
	}
	return AppendMessages(MsgState, es)
}

// returnStale takes entries, the entries of a state message from peer
// from that HandleMessage kept (nonempty: whether it held any), as its
// state: the live entries of from we hold that it lacks, or holds at an
// older version, are sent back to it, which buries them (a previous run's
// names) or keeps its own newer state. A message with entries but none of
// from's own is copies of ours (a peer returning them, or the welcome of
// an older peer with no names), not its state, and is not compared: taking
// it as an empty state would send back all of from's names for each.
//
// An owner with more entries than fit one message (MaxMessageLen: some
// hundreds) sends its state in several; each is compared alone, so such a
// peer is sent back the rest of its names with each part, which its Merge
// finds it holds. That costs messages, not correctness.
func (s *Server) returnStale(from key.Public, entries []Entry, nonempty bool) {
	theirs := make(map[id]uint64, len(entries))
	for i := range entries {
		if entries[i].Owner == from {
			theirs[entries[i].id()] = entries[i].Version
		}
	}
	if nonempty && len(theirs) == 0 {
		return
	}
	held := s.table.entriesOf(map[key.Public]bool{from: true})[from]
	var back []Entry
	for _, e := range held {
		if e.Tombstone {
			continue // not answered: no harm if its owner forgot it
		}
		if v, ok := theirs[e.id()]; !ok || e.Version > v {
			back = append(back, e)
		}
	}
	if len(back) == 0 {
		return
	}
	sender, ok := s.sender()
	if !ok {
		return
	}
	for _, m := range AppendMessages(MsgState, back) {
		if s.sendTo(sender, from, m) {
			s.c.gossipSent.Add(1)
		}
	}
	s.c.staleReturned.Add(uint64(len(back)))
}
