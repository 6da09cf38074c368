package tunnel

import "github.com/weavewg/weavewg/types/key"

// # Idle pairs
//
// The path owner (package reach) decides when a pair is idle: no WireGuard
// data for a while. An idle peer gets no path probes, no MTU probes and no
// keepalives, and NAT traversal runs no ICE for it, so a host's idle cost
// does not grow with the mesh. The packet path tells the path loop what
// carried data: every WireGuard data message sent or received (not
// keepalives, which are empty, nor handshakes) stamps its peer's
// pathState.lastActive with the Bind's coarse clock, which the path loop
// advances once per probeInterval, so a busy peer costs one atomic load per
// batch. Data for a peer marked idle also wakes the path loop at once
// (Bind.woke): the pair is probed and decided again without waiting for
// the next tick. The packet itself goes the way the idle path was left:
// reach parks an idle pair on its relay when its direct endpoint was a NAT
// mapping that may have expired meanwhile.

// wireGuardKeepaliveLen is the size of a WireGuard data message with no
// payload: a keepalive.
const wireGuardKeepaliveLen = 32

// isWireGuardData reports whether pkt is a WireGuard data message that
// carries a packet (type 4, longer than a keepalive).
func isWireGuardData(pkt []byte) bool {
	return len(pkt) > wireGuardKeepaliveLen && pkt[0] == 4 && pkt[1] == 0 && pkt[2] == 0 && pkt[3] == 0
}

// anyWireGuardData reports whether some buffer of a send batch is data.
func anyWireGuardData(bufs [][]byte) bool {
	for _, b := range bufs {
		if isWireGuardData(b) {
			return true
		}
	}
	return false
}

// markActive records that peer i of t carried data now.
func (b *Bind) markActive(t *relayTable, i int32) {
	ps := t.peers[i].path
	now := b.coarse.Load()
	if ps.lastActive.Load() >= now {
		return
	}
	ps.lastActive.Store(now)
	if ps.idle.Load() {
		select {
		case b.woke <- struct{}{}:
		default:
		}
	}
}

// MarkActive records that the peers in keys carried data just now through
// another device (kernel WireGuard, which the packet path never sees), so
// that their pairs do not go idle (or wake if they are): the path owner
// keeps probing their paths and moves them off that device when the
// direct path fails.
func (t *Tunnel) MarkActive(keys map[key.Public]bool) {
	tbl := t.bind.table.Load()
	if tbl == nil || len(keys) == 0 {
		return
	}
	for i := range tbl.peers {
		if keys[tbl.peers[i].key] {
			t.bind.markActive(tbl, int32(i))
		}
	}
}
