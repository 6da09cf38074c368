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
// which is not taken as its state (noteState), so its stale names stay
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

// takenState is a peer's state as taken since the last DigestTick
// (noteState), for returnStale to compare.
type takenState struct {
	// held is the version of each live entry of the peer we held when
	// its state came: only these can be stale by it. An entry that came
	// after (its update following its state within the second) is not.
	held map[id]uint64
	// has is the version of each of its entries in the state's messages.
	has map[id]uint64
}

// noteState takes entries, the entries of a state message from peer
// from that HandleMessage kept (nonempty: whether it held any), as part of
// its state, which returnStale compares with what we hold at the next
// DigestTick. A message with entries but none of from's own is copies of
// ours (a peer returning them, or the welcome of an older peer with no
// names), not its state, and is not taken: taking it as an empty state
// would send back all of from's names for each.
//
// The comparison waits for the tick because a state with more entries
// than one message holds (MaxMessageLen: some hundreds) comes in several,
// each sent at once: compared alone, each would have the rest of the
// owner's names sent back, by every peer at each of its periodic rounds
// (Tick broadcasts an owner's state when it is that large). Gathered for
// up to a second, the parts are one state; a state also taken twice in
// that second (a welcome and a pull's answer) is compared once. Only what
// we held when the first part came is compared: a joiner's state (none)
// followed within the second by its name's update had every peer send
// the name back (892 and 1,000 entries at two joins at N=1,000). Parts
// split by a tick, or one lost, cost the owner names it holds: messages,
// not harm.
func (s *Server) noteState(from key.Public, entries []Entry, nonempty bool) {
	has := make(map[id]uint64)
	for i := range entries {
		e := &entries[i]
		if v, ok := has[e.id()]; e.Owner == from && (!ok || e.Version > v) {
			has[e.id()] = e.Version
		}
	}
	if len(has) == 0 && nonempty {
		return
	}
	s.mu.Lock()
	_, pending := s.states[from]
	s.mu.Unlock()
	var held map[id]uint64
	if !pending {
		held = make(map[id]uint64)
		for _, e := range s.table.entriesOf(map[key.Public]bool{from: true})[from] {
			if !e.Tombstone {
				held[e.id()] = e.Version
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.states[from]
	if ts == nil {
		if held == nil {
			return // a tick took the first part meanwhile: the next state is compared
		}
		ts = &takenState{held: held, has: has}
		if s.states == nil {
			s.states = make(map[key.Public]*takenState)
		}
		s.states[from] = ts
		return
	}
	for k, v := range has {
		if w, ok := ts.has[k]; !ok || v > w {
			ts.has[k] = v
		}
	}
}

// returnStale compares the states taken since the last call (noteState)
// with what we hold: the live entries of each peer we held when its state
// came, still at that version, that its state lacks or holds at an older
// version, are sent back to it, which buries them (a previous run's names)
// or keeps its own newer state.
func (s *Server) returnStale() {
	s.mu.Lock()
	states := s.states
	s.states = nil
	s.mu.Unlock()
	if len(states) == 0 {
		return
	}
	owners := make(map[key.Public]bool, len(states))
	for from := range states {
		owners[from] = true
	}
	held := s.table.entriesOf(owners)
	var sender Sender
	for from, ts := range states {
		var back []Entry
		for _, e := range held[from] {
			if v, ok := ts.held[e.id()]; e.Tombstone || !ok || v != e.Version {
				continue // not answered, or not held when its state came
			}
			if v, ok := ts.has[e.id()]; !ok || e.Version > v {
				back = append(back, e)
			}
		}
		if len(back) == 0 {
			continue
		}
		if sender == nil {
			var ok bool
			if sender, ok = s.sender(); !ok {
				return
			}
		}
		for _, m := range AppendMessages(MsgState, back) {
			if s.sendTo(sender, from, m) {
				s.c.gossipSent.Add(1)
			}
		}
		s.c.staleReturned.Add(uint64(len(back)))
	}
}
