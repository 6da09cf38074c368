//go:build forgetest

package daemon

import (
	"net/http"

	"github.com/weavewg/weavewg/types/api"
)

// PathTestForgeIPAMDone makes this daemon forge a Done transfer of a live
// peer's range to itself (ipam.Allocator.ForgeDone). Only a binary built
// with -tags forgetest serves it: the misbehaving member of
// integration's TestForgedDoneTransferIgnored.
const PathTestForgeIPAMDone = "/v1/test/forge-ipam-done"

func init() {
	testRoutes = append(testRoutes, func(rt *routes) {
		post(rt, PathTestForgeIPAMDone, func(_ *http.Request, req api.RmpeerRequest) (any, error) {
			k, err := rt.d.findPeer(req.Peer)
			if err != nil {
				return nil, err
			}
			return nil, rt.d.ipam.ForgeDone(k)
		})
	})
}
