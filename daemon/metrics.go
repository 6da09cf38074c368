package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weavewg/weavewg/types/api"
)

// metricsCollector exposes what status shows to Prometheus, computed at
// scrape time, so the packet path keeps its plain atomics and pays nothing
// for metrics. Names follow the Prometheus conventions: a weavewg_ prefix,
// base units in the name (_bytes, _seconds), _total on counters, and one
// metric with a label where the parts count outcomes of one thing (drops
// by reason, DNS queries by result).
type metricsCollector struct{ d *Daemon }

// counterFamily places one of the parts' flat counters (status's counters
// map) in a labelled metric.
type counterFamily struct {
	metric, label, value string
}

// counterFamilies lists the counters that belong to a labelled family; any
// other counter NAME is exported as weavewg_NAME_total.
var counterFamilies = func() map[string]counterFamily {
	m := map[string]counterFamily{}
	add := func(metric, label string, pairs ...string) {
		for i := 0; i < len(pairs); i += 2 {
			m[pairs[i]] = counterFamily{metric, label, pairs[i+1]}
		}
	}
	add("weavewg_udp_received_datagrams_total", "kind",
		"udp_wireguard", "wireguard", "udp_stun", "stun", "udp_relay", "relay")
	add("weavewg_udp_dropped_datagrams_total", "reason",
		"udp_junk_dropped", "junk",
		"udp_stun_unhandled", "stun_unhandled",
		"udp_relay_unhandled", "relay_unhandled",
		"udp_relay_dropped_unknown_source", "relay_unknown_source",
		"udp_relay_dropped_unknown_peer", "relay_unknown_peer",
		"udp_relay_dropped_malformed", "relay_malformed",
		"udp_relay_dropped_hop_limit", "relay_hop_limit",
		"udp_relay_dropped_rate_limited", "relay_rate_limited",
		"udp_relay_dropped_no_route", "relay_no_route",
		"udp_relay_dropped_bad_probe", "relay_bad_probe")
	add("weavewg_relay_frames_total", "outcome",
		"udp_relay_delivered", "delivered", "udp_relay_forwarded", "forwarded", "udp_relay_sent", "sent")
	add("weavewg_relay_bytes_total", "outcome",
		"udp_relay_delivered_bytes", "delivered", "udp_relay_forwarded_bytes", "forwarded", "udp_relay_sent_bytes", "sent")
	add("weavewg_control_dropped_total", "reason",
		"control_handshake_ratelimited", "handshake_rate_limited",
		"control_handshake_busy", "handshake_busy",
		"control_send_dropped", "send_queue_full",
		"control_send_discarded", "connection_closed",
		"control_frame_oversized", "frame_oversized",
		"control_frame_decrypt_failed", "frame_decrypt_failed",
		"control_message_malformed", "message_malformed",
		"control_message_unknown_type", "message_unknown_type")
	// Ring items an honest peer refused (issue 14): a bad signature, a
	// well signed state its writer had no authority for, a Done claim for a
	// live peer, or no room left in the ring.
	add("weavewg_ipam_ring_items_refused_total", "reason",
		"ipam_forged_entry", "forged_entry",
		"ipam_forged_vote", "forged_vote",
		"ipam_forged_transfer", "forged_transfer",
		"ipam_forged_certificate", "forged_certificate",
		"ipam_entry_unauthorized", "entry_unauthorized",
		"ipam_done_refused_live", "done_for_live_peer",
		"ipam_ring_full", "ring_full")
	add("weavewg_gossip_dropped_total", "reason",
		"gossip_records_table_full", "records_table_full",
		"gossip_channel_unknown", "channel_unknown",
		"gossip_channel_expired", "channel_hop_limit",
		"gossip_channel_no_route", "channel_no_route",
		"gossip_channel_dropped", "channel_queue_full",
		"gossip_channel_send_dropped", "channel_send_queue_full")
	add("weavewg_dns_queries_total", "result",
		"dns_answered_local", "local",
		"dns_nodata", "nodata",
		"dns_nxdomain", "nxdomain",
		"dns_refused", "refused",
		"dns_notimp", "notimp",
		"dns_formerr", "formerr",
		"dns_malformed", "malformed",
		"dns_forwarded", "forwarded",
		"dns_forward_failed", "servfail",
		"dns_forward_dropped_busy", "servfail_busy",
		"dns_forward_dropped_rate", "dropped_rate_limited",
		"dns_dropped_not_client", "dropped_not_client")
	add("weavewg_nat_stun_datagrams_total", "outcome",
		"nat_stun_answered", "answered",
		"nat_stun_rate_limited", "rate_limited",
		"nat_stun_malformed", "malformed",
		"nat_stun_unknown_ufrag", "unknown_ufrag",
		"nat_stun_bad_integrity", "bad_integrity",
		"nat_stun_unknown_transaction", "unknown_transaction",
		"nat_stun_wrong_source", "wrong_source",
		"nat_stun_unexpected", "unexpected",
		"nat_stun_to_ice", "to_ice",
		"nat_stun_queue_dropped", "queue_dropped")
	m["dns_queries"] = counterFamily{metric: "weavewg_dns_received_queries_total"}
	m["control_handshake_failed"] = counterFamily{metric: "weavewg_control_handshake_failures_total"}
	return m
}()

var (
	buildInfoDesc = prometheus.NewDesc("weavewg_build_info", "The running binary's version, commit and Go version (always 1).", []string{"version", "commit", "go_version"}, nil)
	peersDesc     = prometheus.NewDesc("weavewg_peers", "Peers known by gossip (this host excluded), by reachability and by the path status shows: direct, relayed, vxlan (trusted fast path) or none.", []string{"state", "path"}, nil)
	connsDesc     = prometheus.NewDesc("weavewg_control_connections", "Control connections and dial targets, by state.", []string{"state"}, nil)
	attachedDesc  = prometheus.NewDesc("weavewg_attachments", "Namespaces attached on this host.", nil, nil)
	peerRxDesc    = prometheus.NewDesc("weavewg_peer_received_bytes_total", "WireGuard bytes received from a peer.", []string{"peer", "nickname"}, nil)
	peerTxDesc    = prometheus.NewDesc("weavewg_peer_sent_bytes_total", "WireGuard bytes sent to a peer.", []string{"peer", "nickname"}, nil)
	peerHSDesc    = prometheus.NewDesc("weavewg_peer_last_handshake_timestamp_seconds", "Unix time of the last completed WireGuard handshake with a peer (absent: none yet).", []string{"peer", "nickname"}, nil)
	peerRTTDesc   = prometheus.NewDesc("weavewg_peer_rtt_seconds", "Last probe round trip to a peer on the path in use.", []string{"peer", "nickname"}, nil)
	peerPathDesc  = prometheus.NewDesc("weavewg_peer_path_info", "The path to a peer, as status shows it: direct, relayed or vxlan (always 1).", []string{"peer", "nickname", "path"}, nil)
	ipamOwnedDesc = prometheus.NewDesc("weavewg_ipam_owned_addresses", "Addresses of the range this host owns.", nil, nil)
	ipamUsedDesc  = prometheus.NewDesc("weavewg_ipam_used_addresses", "Addresses this host has handed out.", nil, nil)
	ipamFreeDesc  = prometheus.NewDesc("weavewg_ipam_free_addresses", "Addresses this host owns and has not handed out.", nil, nil)
	ipamRangeDesc = prometheus.NewDesc("weavewg_ipam_range_addresses", "Addresses in the whole overlay range.", nil, nil)
	dnsNamesDesc  = prometheus.NewDesc("weavewg_dns_names", "Entries in the gossiped DNS table, by whether their owner is reachable.", []string{"reachable"}, nil)
	natMapDesc    = prometheus.NewDesc("weavewg_nat_observed_mappings", "STUN servers (other peers) that have reported the address they see this host at.", nil, nil)
	natInfoDesc   = prometheus.NewDesc("weavewg_nat_info", "This host's NAT as observed through STUN (always 1).", []string{"mapping", "public_address"}, nil)
	natICEDesc    = prometheus.NewDesc("weavewg_nat_ice_peers", "Peers with a NAT traversal session, by ICE state.", []string{"state"}, nil)
)

func (metricsCollector) Describe(chan<- *prometheus.Desc) {
	// Unchecked collector: the counter names come from the parts at scrape
	// time. The registry still refuses duplicates when it gathers.
}

func (m metricsCollector) Collect(ch chan<- prometheus.Metric) {
	d := m.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	st := d.status()

	b := d.cfg.Build
	gauge(buildInfoDesc, 1, b.Version, b.Commit, b.GoVersion)

	// Counters, grouped into families. Descs of a family are shared so the
	// family gets one HELP line.
	descs := map[string]*prometheus.Desc{}
	for _, name := range slices.Sorted(maps.Keys(st.Counters)) {
		f, ok := counterFamilies[name]
		if !ok {
			f = counterFamily{metric: "weavewg_" + sanitizeMetric(name) + "_total"}
		}
		desc := descs[f.metric]
		if desc == nil {
			var labels []string
			if f.label != "" {
				labels = []string{f.label}
			}
			desc = prometheus.NewDesc(f.metric, counterHelp(f, name), labels, nil)
			descs[f.metric] = desc
		}
		if f.label != "" {
			counter(desc, float64(st.Counters[name]), f.value)
		} else {
			counter(desc, float64(st.Counters[name]))
		}
	}

	// Peers by reachability and path, every combination present so that a
	// dashboard's series do not come and go. The path is what status
	// shows for the peer's connection row.
	paths := map[string]string{} // by peer name
	for _, c := range st.Conns {
		if c.Peer != "" && paths[c.Peer] == "" {
			if k := pathKind(c); k != "none" {
				paths[c.Peer] = k
			}
		}
	}
	byState := map[[2]string]int{}
	nick := map[string]string{}
	for _, p := range st.Peers {
		nick[p.Name] = p.Nickname
		if p.Self {
			continue
		}
		state := "unreachable"
		if p.Reachable {
			state = "reachable"
		}
		path := paths[p.Name]
		if path == "" {
			path = "none"
		}
		byState[[2]string{state, path}]++
	}
	for _, state := range []string{"reachable", "unreachable"} {
		for _, path := range []string{"direct", "relayed", "vxlan", "none"} {
			gauge(peersDesc, float64(byState[[2]string{state, path}]), state, path)
		}
	}
	conns := map[string]int{}
	ice := map[string]int{}
	for _, c := range st.Conns {
		conns[c.State]++
		if c.ICE != "" {
			ice[c.ICE]++
		}
	}
	for _, s := range []string{api.StateEstablished, api.StateConnecting, api.StateFailed} {
		gauge(connsDesc, float64(conns[s]), s)
	}
	gauge(attachedDesc, float64(len(st.Attached)))

	for k, s := range d.tun.PeerStats() {
		name := k.Name()
		counter(peerRxDesc, float64(s.RxBytes), name, nick[name])
		counter(peerTxDesc, float64(s.TxBytes), name, nick[name])
		if !s.LastHandshake.IsZero() {
			gauge(peerHSDesc, float64(s.LastHandshake.UnixNano())/1e9, name, nick[name])
		}
		if s.RTT > 0 {
			gauge(peerRTTDesc, s.RTT.Seconds(), name, nick[name])
		}
	}
	for name, path := range paths {
		gauge(peerPathDesc, 1, name, nick[name], path)
	}

	for _, p := range st.IPAM.Peers {
		if p.Self {
			gauge(ipamOwnedDesc, float64(p.Size))
			gauge(ipamUsedDesc, float64(st.IPAM.Allocated))
			gauge(ipamFreeDesc, float64(p.Free))
		}
	}
	gauge(ipamRangeDesc, float64(uint64(1)<<(32-d.cfg.Range.Bits())))

	if d.dns != nil {
		var up, down int
		for _, e := range d.dns.Entries() {
			if e.Reachable {
				up++
			} else {
				down++
			}
		}
		gauge(dnsNamesDesc, float64(up), "true")
		gauge(dnsNamesDesc, float64(down), "false")
	}

	if st.NAT != nil {
		gauge(natMapDesc, float64(len(st.NAT.Mappings)))
		gauge(natInfoDesc, 1, st.NAT.Mapping, st.NAT.PublicAddress)
		for _, s := range []string{"checking", "connected", "backoff"} {
			gauge(natICEDesc, float64(ice[s]), s)
		}
	}
}

// pathKind is the path of a status connection row: vxlan (the trusted
// fast path), relayed, direct, or none (no data path figures on the row).
func pathKind(c api.Connection) string {
	switch {
	case c.Datapath == datapathVXLAN:
		return "vxlan"
	case c.Via != "" || c.Endpoint == "relayed":
		return "relayed"
	case c.Direct && c.Endpoint != "":
		return "direct"
	}
	return "none"
}

func counterHelp(f counterFamily, name string) string {
	if f.label == "" {
		return "weavewg counter " + name + " (status counters)."
	}
	return fmt.Sprintf("weavewg counters by %s (status counters %s and the rest of its family).", f.label, name)
}

func sanitizeMetric(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// metricsRegistry is what both /metrics endpoints serve: the API socket's
// and --metrics-addr's.
func (d *Daemon) metricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{d})
	return reg
}

// serveMetrics serves /metrics over TCP on --metrics-addr, for a stock
// Prometheus (which cannot scrape a unix socket). Nothing else is served
// there: the API stays on its root-only socket.
func (d *Daemon) serveMetrics(reg *prometheus.Registry) (stop func() error, err error) {
	addr := d.cfg.MetricsAddr
	if addr == "" {
		return func() error { return nil }, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "weavewg serves only GET /metrics here", http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped", "addr", addr, "err", err)
		}
	}()
	d.log.Info("serving metrics", "addr", ln.Addr().String())
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(ctx)
	}, nil
}
