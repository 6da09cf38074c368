package daemon

import (
	"time"

	"github.com/weavewg/weavewg/types/api"
)

// report is the diagnostic bundle of `weavewg report`. It is built from the
// same views as status, ipam and dns, which carry no secret; a test greps
// it for the network secret.
func (d *Daemon) report() api.Report {
	st := d.status()
	r := api.Report{
		GeneratedAt: time.Now().UTC().Truncate(time.Second),
		Versions:    api.ReportVersions{Daemon: d.cfg.Build},
		Peers:       st.Peers,
		Connections: st.Conns,
		Counters:    st.Counters,
		Ring:        d.ipamStatus(),
		DNS:         d.dnsStatus(true),
		Warnings:    d.recent.snapshot(),
	}
	st.Peers, st.Conns, st.Counters = nil, nil, nil
	r.Status = st
	return r
}
