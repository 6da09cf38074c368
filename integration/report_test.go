package integration

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// TestReport is issue 19's acceptance 4: `weavewg report` writes one JSON
// document with every section (checked with jq, as a user would), the
// warning the daemon just logged among its recent warnings, and no secret:
// neither the network secret nor the password nor the private key, in raw,
// base64 or hex form.
func TestReport(t *testing.T) {
	needTool(t, "jq")
	b := newBed(t, testbed.Options{})
	const deadUpstream = "192.0.2.250"
	h1 := b.AddHost(testbed.HostOptions{Args: []string{"--dns-upstream", deadUpstream}})
	h2 := b.AddHost(testbed.HostOptions{})
	b.WaitMesh(30*time.Second, h1, h2)
	c := h1.AddContainer()
	h2.AddContainer()
	// A warning to find in the report: the upstream does not answer.
	server := strings.Split(h1.Status().HostIP, "/")[0] + ":53"
	if r, err := testbed.DNSQuery(c.Netns, server, "example.org.", mdns.TypeA, 10*time.Second); err != nil || r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("example.org with the upstream down: %v %v, want SERVFAIL", r, err)
	}

	out := h1.CLI("report")
	jq := exec.Command("jq", "-e", `has("status") and has("peers") and has("connections") and has("ring") and has("dns") and has("counters") and has("recent_warnings") and has("versions") and (.peers | length) == 2 and (.dns.entries | length) == 2 and (.ring.peers | length) >= 1 and (.versions.daemon.version | length) > 0 and (.versions.cli.version | length) > 0`)
	jq.Stdin = strings.NewReader(out)
	if jout, err := jq.CombinedOutput(); err != nil {
		t.Errorf("jq: report lacks a section: %v %s\n%s", err, jout, out)
	}
	var r api.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("report is not one JSON document: %v", err)
	}
	found := false
	for _, w := range r.Warnings {
		if strings.Contains(w.Message, "upstream DNS server not answering") && w.Fields["upstream"] == deadUpstream+":53" && w.Fields["part"] == "dns" {
			found = true
		}
	}
	if !found {
		t.Errorf("recent warnings lack the dead upstream: %+v", r.Warnings)
	}
	if r.Counters["dns_forward_failed"] == 0 || len(r.Connections) == 0 {
		t.Errorf("report counters %v, %d connections", r.Counters, len(r.Connections))
	}

	// The secrets as this host holds them.
	var nw struct {
		Secret string `json:"secret"`
	}
	data, err := os.ReadFile(filepath.Join(h1.StateDir, "network.json"))
	if err != nil || json.Unmarshal(data, &nw) != nil || nw.Secret == "" {
		t.Fatalf("network.json: %v %s", err, data)
	}
	secret, _ := base64.StdEncoding.DecodeString(nw.Secret)
	keyText, err := os.ReadFile(filepath.Join(h1.StateDir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := key.ParsePrivate(strings.TrimSpace(string(keyText)))
	if err != nil {
		t.Fatal(err)
	}
	forms := func(name string, raw []byte) map[string]string {
		return map[string]string{
			name + " raw":          string(raw),
			name + " base64":       base64.StdEncoding.EncodeToString(raw),
			name + " base64 (url)": base64.RawURLEncoding.EncodeToString(raw),
			name + " hex":          hex.EncodeToString(raw),
			name + " HEX":          strings.ToUpper(hex.EncodeToString(raw)),
		}
	}
	checks := forms("network secret", secret)
	for k, v := range forms("private key", priv[:]) {
		checks[k] = v
	}
	checks["password"] = b.Password()
	for what, s := range checks {
		if len(s) < 8 {
			t.Fatalf("%s is too short to grep for", what)
		}
		if strings.Contains(out, s) {
			t.Errorf("the report contains the %s", what)
		}
	}
	t.Logf("report: %d bytes, %d peers, %d connections, %d counters, %d recent warnings, %d DNS entries",
		len(out), len(r.Peers), len(r.Connections), len(r.Counters), len(r.Warnings), len(r.DNS.Entries))
}
