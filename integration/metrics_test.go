package integration

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weavewg/weavewg/integration/testbed"
)

// scrape GETs http://addr/metrics from inside ns, as a Prometheus on that
// host would, and returns the text.
func scrape(t *testing.T, ns, addr string) []byte {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, a string) (net.Conn, error) { return testbed.Dial(ns, a, 5*time.Second) },
	}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %d %v\n%s", addr, resp.StatusCode, err, b)
	}
	return b
}

// metricValue parses text with Prometheus's own parser and returns the
// value of the sample of metric name whose labels include want.
func metricValue(t *testing.T, text []byte, name string, want map[string]string) float64 {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	f, ok := families[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		return sampleValue(f.GetType(), m)
	}
	t.Fatalf("no sample of %s with labels %v", name, want)
	return 0
}

func sampleValue(typ dto.MetricType, m *dto.Metric) float64 {
	if typ == dto.MetricType_COUNTER {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestMetricsScrape is issue 19's acceptance 1: a daemon launched with
// --metrics-addr serves /metrics over TCP; promtool (the Prometheus
// project's checker) accepts the text; counters read before and after
// traffic between two hosts' containers grow by at least the traffic.
func TestMetricsScrape(t *testing.T) {
	needTool(t, "promtool")
	b := newBed(t, testbed.Options{})
	const metricsAddr = "127.0.0.1:6782"
	h1 := b.AddHost(testbed.HostOptions{Args: []string{"--metrics-addr", metricsAddr}})
	h2 := b.AddHost(testbed.HostOptions{})
	cs := b.AddContainers(1)
	b.WaitMesh(30*time.Second, h1, h2)
	if err := cs[0].PingEventually(cs[1].Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	before := scrape(t, h1.Netns, metricsAddr)
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(before)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n--- metrics:\n%s", err, out, before)
	}
	peer := map[string]string{"nickname": h2.Name}
	sent0 := metricValue(t, before, "weavewg_peer_sent_bytes_total", peer)
	rcvd0 := metricValue(t, before, "weavewg_peer_received_bytes_total", peer)
	local0 := metricValue(t, before, "weavewg_dns_queries_total", map[string]string{"result": "local"})
	if v := metricValue(t, before, "weavewg_peers", map[string]string{"state": "reachable", "path": "direct"}); v != 1 {
		t.Errorf("weavewg_peers{reachable,direct} = %v, want 1 (h2)", v)
	}
	if v := metricValue(t, before, "weavewg_attachments", nil); v != 1 {
		t.Errorf("weavewg_attachments = %v, want 1", v)
	}
	if v := metricValue(t, before, "weavewg_ipam_owned_addresses", nil); v <= 0 {
		t.Errorf("weavewg_ipam_owned_addresses = %v, want some", v)
	}

	// 1 MB from h1's container to h2's, and one weave.local lookup on h1.
	const size = 1 << 20
	if _, err := testbed.Transfer(cs[0], cs[1], 5001, size, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	st := h1.Status()
	server := strings.Split(st.HostIP, "/")[0] + ":53"
	if r, err := testbed.DNSQuery(cs[0].Netns, server, cs[1].Name+".weave.local.", 1, 5*time.Second); err != nil || len(r.Answer) != 1 {
		t.Fatalf("lookup %s.weave.local: %v %v", cs[1].Name, r, err)
	}

	after := scrape(t, h1.Netns, metricsAddr)
	sent := metricValue(t, after, "weavewg_peer_sent_bytes_total", peer) - sent0
	rcvd := metricValue(t, after, "weavewg_peer_received_bytes_total", peer) - rcvd0
	local := metricValue(t, after, "weavewg_dns_queries_total", map[string]string{"result": "local"}) - local0
	t.Logf("after %d bytes h1→h2: sent to h2 +%.0f bytes, received from h2 +%.0f bytes; DNS local answers +%.0f", size, sent, rcvd, local)
	if sent < size {
		t.Errorf("weavewg_peer_sent_bytes_total{h2} grew by %.0f, want at least the %d bytes sent", sent, size)
	}
	if rcvd <= 0 {
		t.Errorf("weavewg_peer_received_bytes_total{h2} did not grow (the TCP acks come back)")
	}
	if local != 1 {
		t.Errorf("weavewg_dns_queries_total{result=local} grew by %.0f, want 1", local)
	}
	// h2 was launched without --metrics-addr: nothing listens there.
	if c, err := testbed.Dial(h2.Netns, metricsAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("h2 serves metrics on %s without --metrics-addr", metricsAddr)
	}
}
