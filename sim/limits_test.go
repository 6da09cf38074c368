package sim

import (
	"testing"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/ipam"
)

// TestPeerLimitsAgree: the router keeps at most discovery.MaxPeers records
// and the IPAM ring at most ipam.MaxPeers owners. A network is bounded by
// the smaller, and docs/architecture.md states one figure: if one changes
// without the other, hosts past the smaller limit would get addresses but
// no routes, or routes but no addresses.
func TestPeerLimitsAgree(t *testing.T) {
	if discovery.MaxPeers != ipam.MaxPeers {
		t.Errorf("discovery.MaxPeers = %d, ipam.MaxPeers = %d: one network, one limit", discovery.MaxPeers, ipam.MaxPeers)
	}
}
