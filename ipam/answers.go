package ipam

// Who answers what (issue 18). A peer that receives ring state and holds
// newer states of what it covers can answer with them, so one round trip
// repairs both sides. It used to answer every part, broadcasts of changes
// included: a donor whose view lagged (it was busy granting while a batch
// of peers joined) sent each change with a stale bound, and every one of
// N peers answered it, N messages to one peer per change. At 50 peers
// joining a mesh of 100 that was half of all IPAM messages (23,073
// answers of 46,711 messages, 46 MB) and the donor, busy with them, fell
// further behind: requests timed out, joiners asked other donors, each
// grant was more changes, and at 150 peers joiners went minutes without
// an address (the simulated mesh did not form).
//
// So a part is answered only when its sender asks: msgRingAsk, the same
// body as msgRingPart under its own type, goes from a peer that refused
// states for lack of authority to the owner it asks (authority.go), and
// from the receiver of a digest that differs back to the digest's sender
// (digest.go), which answers with what the receiver lacks. A whole ring in
// one message (a ring under one part's bound, or a version-4 peer before
// this change sending its ring for anti-entropy) is answered too, as
// before. A change broadcast, a new control neighbour's relayed ring (both
// sides send theirs) and our own entries sent to an arrival (SendOwn) are
// not: what they leave out, anti-entropy repairs.
//
// Peers of wire version 4 before digests and asks count both types as
// malformed: they take every change and ring from newer peers, but their
// authority asks to newer peers (plain parts) go unanswered above one
// part's worth of ring, and newer peers' digests and asks to them go
// unanswered, so their rings are repaired only by changes and relayed
// rings. Upgrade every peer.

// wantsAnswer reports whether p's sender wants what it lacks of it.
func wantsAnswer(p *RingPart) bool { return p.Ask || p.Whole() }

// askParts marks encoded parts (ringParts) as asking for an answer.
func askParts(msgs [][]byte) [][]byte {
	for _, m := range msgs {
		m[1] = msgRingAsk
	}
	return msgs
}
