package main

import "fmt"

// What a change's frames were. At N=1,000 with IPAM and DNS (lead, fc682d6)
// the 1,000th join cost 178 frames/N until agreement, where the routers
// alone cost about 37 at N = 40 to 300: read as "a join's frames per peer
// grow 5x from 300 to 1,000", it was other things. 142 of the 178 were
// channel messages (IPAM and DNS broadcasts and digests, each copy a
// relay forwarded counted again), and a still mesh of 1,000 sent 4.3
// frames a peer a second (DNS and IPAM rounds), 74 frames/N over the
// 17 s the join took: frames until agreement grow with the change's
// time, whatever its cause. So each change's line splits its frames
// until agreement into gossip (records, haves, wants, digests,
// summaries) and channel messages (gossip_channel_sent, own and
// forwarded), each less its background: the idle window's rate of that
// kind for as long as the change took.

// background is the frames/N a still mesh of peers sends at rate frames
// a peer a second over secs: the part of a change's frames that is not
// the change's.
func background(rate, peers, secs float64, n int) float64 {
	if n <= 0 || secs <= 0 {
		return 0
	}
	return rate * peers * secs / float64(n)
}

// ownGossipOverN is the change's own gossip frames/N until agreement:
// neither channel messages nor the background's gossip.
func (c change) ownGossipOverN() float64 {
	gossip := c.MsgsOverN - c.ChannelMsgsOverN
	bg := c.BackgroundMsgsOverN - c.BackgroundChannelMsgsOverN
	return max(0, gossip-bg)
}

// ownChannelOverN is the change's own channel messages/N until
// agreement, less the background's.
func (c change) ownChannelOverN() float64 {
	return max(0, c.ChannelMsgsOverN-c.BackgroundChannelMsgsOverN)
}

// frameParts says what the frames until agreement were.
func (c change) frameParts() string {
	return fmt.Sprintf("gossip %.1f and channel %.1f of the change's own, background %.1f", c.ownGossipOverN(), c.ownChannelOverN(), c.BackgroundMsgsOverN)
}
