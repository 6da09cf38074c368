package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/attachment"
)

// fakeHost is the daemon side in memory: an attachment service whose
// records survive a plugin restart, as the daemon's file does.
type fakeHost struct {
	mu       sync.Mutex
	next     netip.Addr
	recs     map[string]attachment.Record // id → record
	allocs   map[string]netip.Addr        // id → address
	veths    map[string]string            // host end → peer end
	failVeth bool
	subnets  []netip.Prefix // isolated subnets CheckSubnet accepts
	asked    []netip.Prefix // the subnet of each Reserve
}

func newFakeHost() *fakeHost {
	return &fakeHost{
		next: netip.MustParseAddr("10.32.0.10"),
		recs: map[string]attachment.Record{}, allocs: map[string]netip.Addr{}, veths: map[string]string{},
	}
}

func (h *fakeHost) CheckSubnet(p netip.Prefix) error {
	if slices.Contains(h.subnets, p) {
		return nil
	}
	return fmt.Errorf("subnet %s is not usable", p)
}

func (h *fakeHost) Reserve(ctx context.Context, id string, want netip.Addr, subnet netip.Prefix) (netip.Prefix, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.asked = append(h.asked, subnet)
	if subnet.IsValid() {
		a := subnet.Addr().Next()
		for _, o := range h.allocs {
			if o == a {
				a = a.Next()
			}
		}
		h.allocs[id] = a
		p := netip.PrefixFrom(a, subnet.Bits())
		h.recs[id] = attachment.Record{ID: id, Origin: attachment.OriginDocker, IP: p.String()}
		return p, nil
	}
	if _, ok := h.recs[id]; ok {
		return netip.Prefix{}, fmt.Errorf("%s is attached already", id)
	}
	a := want
	if want.IsValid() {
		for oid, o := range h.allocs {
			if o == want {
				return netip.Prefix{}, fmt.Errorf("address %s is already in use by %s", want, oid)
			}
		}
	} else {
		a = h.next
		h.next = h.next.Next()
	}
	h.allocs[id] = a
	p := netip.PrefixFrom(a, 12)
	h.recs[id] = attachment.Record{ID: id, Origin: attachment.OriginDocker, IP: p.String()}
	return p, nil
}

func (h *fakeHost) Release(id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.recs, id)
	delete(h.allocs, id)
	return nil
}

func (h *fakeHost) Update(id string, f func(*attachment.Record)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.recs[id]
	if !ok {
		return fmt.Errorf("no attachment %s", id)
	}
	f(&r)
	h.recs[id] = r
	return nil
}

func (h *fakeHost) Attachments() []attachment.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Collect(maps.Values(h.recs))
}

func (h *fakeHost) CreateVeth(host, peer string) (net.HardwareAddr, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failVeth {
		return nil, errors.New("no veths today")
	}
	if _, ok := h.veths[host]; ok {
		return nil, fmt.Errorf("%s exists", host)
	}
	h.veths[host] = peer
	return net.HardwareAddr{2, 0, 0, 0, 0, byte(len(h.veths))}, nil
}

func (h *fakeHost) DeleteVeth(host string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.veths, host)
	return nil
}

// names are the names the daemon would register: of plumbed records.
func (h *fakeHost) names() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]string{}
	for id, r := range h.recs {
		if p, ok := r.Prefix(); ok && r.Name != "" && r.Plumbed() {
			out[id] = r.Name + "=" + p.Addr().String()
		}
	}
	return out
}

func (h *fakeHost) HostIP() netip.Prefix { return netip.MustParsePrefix("10.32.0.1/12") }
func (h *fakeHost) Range() netip.Prefix  { return netip.MustParsePrefix("10.32.0.0/12") }

// snapshot is everything a call could change, host and state file.
func (h *fakeHost) snapshot(t *testing.T, stateFile string) string {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	b, _ := os.ReadFile(stateFile)
	return fmt.Sprintf("allocs=%v veths=%v recs=%v state=%s", sortedMap(h.allocs), sortedMap(h.veths), sortedMap(h.recs), b)
}

func sortedMap[V any](m map[string]V) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s:%v", k, m[k]))
	}
	return strings.Join(out, ",")
}

type rig struct {
	t     *testing.T
	host  *fakeHost
	p     *Plugin
	srv   *httptest.Server
	state string
}

func newRig(t *testing.T, dockerSocket string) *rig {
	t.Helper()
	r := &rig{t: t, host: newFakeHost(), state: filepath.Join(t.TempDir(), "docker.json")}
	r.start(dockerSocket)
	return r
}

func (r *rig) start(dockerSocket string) {
	p, err := New(Config{Host: r.host, StateFile: r.state, DockerSocket: dockerSocket, NameTimeout: 5 * time.Second})
	if err != nil {
		r.t.Fatal(err)
	}
	p.Restore(context.Background())
	r.p = p
	r.srv = httptest.NewServer(p.Handler())
	r.t.Cleanup(func() { r.srv.Close(); p.Close() })
}

// call posts body and returns the status and decoded answer.
func (r *rig) call(method, body string) (int, map[string]any) {
	r.t.Helper()
	resp, err := http.Post(r.srv.URL+"/"+method, "application/json", strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusNotFound && ct != MediaType {
		r.t.Errorf("%s: Content-Type %q", method, ct)
	}
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// ok calls and fails the test unless HTTP 200.
func (r *rig) ok(method string, body any) map[string]any {
	r.t.Helper()
	b, _ := json.Marshal(body)
	code, m := r.call(method, string(b))
	if code != http.StatusOK {
		r.t.Fatalf("%s %s: HTTP %d %v", method, b, code, m)
	}
	return m
}

const (
	netID = "n0123456789abcdef"
	epID  = "e0123456789abcdef"
	pool  = "weavewg-10.32.0.0/12"
)

// network makes a network as `docker network create` does.
func (r *rig) network() {
	r.t.Helper()
	r.ok("IpamDriver.GetDefaultAddressSpaces", nil)
	m := r.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": AddressSpace})
	if m["PoolID"] != pool || m["Pool"] != anyPool {
		r.t.Fatalf("RequestPool: %v", m)
	}
	gw := r.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Options": map[string]string{optRequestAddressType: optGateway}})
	if gw["Address"] != "10.32.0.1/12" {
		r.t.Fatalf("gateway: %v", gw)
	}
	r.ok("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": netID, "IPv4Data": []map[string]any{{"Pool": anyPool, "Gateway": "10.32.0.1/12"}}})
}

// container runs one as `docker run` does and returns its address.
func (r *rig) container(ep string) string {
	r.t.Helper()
	a := r.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool})
	addr, _ := a["Address"].(string)
	ce := r.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": ep, "Interface": map[string]any{"Address": addr}})
	iface, _ := ce["Interface"].(map[string]any)
	if iface == nil || iface["MacAddress"] == "" || iface["Address"] != nil {
		r.t.Errorf("CreateEndpoint answer %v: want only the MAC", ce)
	}
	j := r.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x"})
	in, _ := j["InterfaceName"].(map[string]any)
	if in["SrcName"] != "vethwg"+ep[:9] || in["DstPrefix"] != "ethwe" {
		r.t.Errorf("Join: %v", j)
	}
	r.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": ep})
	return addr
}

func (r *rig) remove(ep, addr string) {
	r.t.Helper()
	r.ok("NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": ep})
	r.ok("NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": ep})
	r.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": ep})
	r.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": pool, "Address": strings.Split(addr, "/")[0]})
}

func TestNoArgumentCalls(t *testing.T) {
	r := newRig(t, "")
	for method, want := range map[string]string{
		"Plugin.Activate":                    `{"Implements":["NetworkDriver","IpamDriver"]}`,
		"NetworkDriver.GetCapabilities":      `{"ConnectivityScope":"local","Scope":"local"}`,
		"IpamDriver.GetCapabilities":         `{"RequiresMACAddress":false,"RequiresRequestReplay":false}`,
		"IpamDriver.GetDefaultAddressSpaces": `{"GlobalDefaultAddressSpace":"weavewg","LocalDefaultAddressSpace":"weavewg"}`,
		"NetworkDriver.DiscoverNew":          `{}`,
		"NetworkDriver.DiscoverDelete":       `{}`,
	} {
		for _, body := range []string{"", "{}"} { // Docker sends these with no body
			code, m := r.call(method, body)
			got, _ := json.Marshal(m)
			if code != http.StatusOK || string(got) != want {
				t.Errorf("%s(%q): HTTP %d %s, want %s", method, body, code, got, want)
			}
		}
	}
	if code, _ := r.call("NetworkDriver.Nope", "{}"); code != http.StatusNotFound {
		t.Errorf("unknown method: HTTP %d, want 404", code)
	}
	if code, _ := r.call("Nope", ""); code != http.StatusNotFound {
		t.Errorf("unknown path: HTTP %d, want 404", code)
	}
	resp, err := http.Get(r.srv.URL + "/Plugin.Activate")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("GET answered 200")
	}
}

func TestLifecycle(t *testing.T) {
	r := newRig(t, "")
	r.network()
	a1 := r.container(epID)
	a2 := r.container("f0123456789abcdef")
	if a1 == a2 {
		t.Fatalf("two containers got %s", a1)
	}
	if len(r.host.veths) != 2 || len(r.host.allocs) != 2 {
		t.Fatalf("veths %v allocs %v", r.host.veths, r.host.allocs)
	}
	info := r.ok("NetworkDriver.EndpointOperInfo", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if v, _ := info["Value"].(map[string]any); v["host_veth"] != "vethwl"+epID[:9] {
		t.Errorf("EndpointOperInfo: %v", info)
	}
	// AllocateNetwork gives its options back (swarm passes them on).
	an := r.ok("NetworkDriver.AllocateNetwork", map[string]any{"NetworkID": "x", "Options": map[string]string{"a": "b"}})
	if o, _ := an["Options"].(map[string]any); o["a"] != "b" {
		t.Errorf("AllocateNetwork: %v", an)
	}
	r.ok("NetworkDriver.FreeNetwork", map[string]any{"NetworkID": "x"})

	r.remove(epID, a1)
	r.remove("f0123456789abcdef", a2)
	if len(r.host.veths) != 0 || len(r.host.allocs) != 0 || len(r.host.recs) != 0 {
		t.Fatalf("left behind: %s", r.host.snapshot(t, r.state))
	}
	// Deleting again is idempotent.
	r.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
	r.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": netID})
	r.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": pool, "Address": "10.32.0.1"}) // the gateway
	r.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": pool})
}

func TestExplicitSubnetAndStaticAddress(t *testing.T) {
	r := newRig(t, "")
	m := r.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": AddressSpace, "Pool": "10.32.0.0/12"})
	if m["Pool"] != "10.32.0.0/12" {
		t.Fatalf("RequestPool with the range: %v", m)
	}
	a := r.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Address": "10.32.5.5"})
	if a["Address"] != "10.32.5.5/12" {
		t.Fatalf("static address: %v", a)
	}
	if code, _ := r.call("IpamDriver.RequestAddress", `{"PoolID":"`+pool+`","Address":"10.32.5.5"}`); code != http.StatusInternalServerError {
		// The fake refuses a second id for the same address, as the allocator does.
		t.Errorf("the same static address twice: HTTP %d", code)
	}
}

// An isolated subnet (docker network create --subnet 10.33.1.0/24): its
// own pool, addresses in it with its prefix length, and a route to the
// host's DNS at Join; a subnet the daemon refuses is refused.
func TestIsolatedSubnetPool(t *testing.T) {
	r := newRig(t, "")
	r.host.subnets = []netip.Prefix{netip.MustParsePrefix("10.33.1.0/24")}
	if code, m := r.call("IpamDriver.RequestPool", `{"Pool":"10.33.2.0/24"}`); code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(m), "not usable") {
		t.Fatalf("a refused subnet: HTTP %d %v", code, m)
	}
	m := r.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": AddressSpace, "Pool": "10.33.1.0/24"})
	id, _ := m["PoolID"].(string)
	if m["Pool"] != "10.33.1.0/24" || id == pool {
		t.Fatalf("RequestPool 10.33.1.0/24: %v", m)
	}
	r.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": map[string]string{optRequestAddressType: optGateway}})
	a := r.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id})
	if a["Address"] != "10.33.1.1/24" || len(r.host.asked) != 1 || r.host.asked[0] != netip.MustParsePrefix("10.33.1.0/24") {
		t.Fatalf("address in the subnet: %v (asked %v)", a, r.host.asked)
	}
	r.ok("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": "n1", "IPv4Data": []map[string]any{{"Pool": "10.33.1.0/24", "Gateway": "10.32.0.1/12"}}})
	r.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": "n1", "EndpointID": "e0123456789abcdef", "Interface": map[string]any{"Address": a["Address"]}})
	j := r.ok("NetworkDriver.Join", map[string]any{"NetworkID": "n1", "EndpointID": "e0123456789abcdef", "SandboxKey": "/var/run/docker/netns/x"})
	if !strings.Contains(fmt.Sprint(j["StaticRoutes"]), "10.32.0.1/32") {
		t.Fatalf("Join gave no route to the host's DNS: %v", j)
	}
	// Another network may not overlap n1's subnet: a pool partly over it
	// is refused at once; the same subnet (which a restarted dockerd asks
	// for again, for n1) at CreateNetwork. n1 itself is created again.
	r.host.subnets = append(r.host.subnets, netip.MustParsePrefix("10.33.1.0/25"), netip.MustParsePrefix("10.33.0.0/16"))
	for _, sub := range []string{"10.33.1.0/25", "10.33.0.0/16"} {
		if code, m := r.call("IpamDriver.RequestPool", `{"Pool":"`+sub+`"}`); code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(m), "overlaps 10.33.1.0/24, the subnet of Docker network n1") {
			t.Errorf("RequestPool %s overlapping n1's subnet: HTTP %d %v", sub, code, m)
		}
	}
	r.ok("IpamDriver.RequestPool", map[string]any{"Pool": "10.33.1.0/24"})
	if code, m := r.call("NetworkDriver.CreateNetwork", `{"NetworkID":"n2","IPv4Data":[{"Pool":"10.33.1.0/24"}]}`); code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(m), "overlaps Docker network n1") {
		t.Errorf("CreateNetwork n2 with n1's subnet: HTTP %d %v", code, m)
	}
	r.ok("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": "n1", "IPv4Data": []map[string]any{{"Pool": "10.33.1.0/24"}}})
	r.ok("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": "n3", "IPv4Data": []map[string]any{{"Pool": "0.0.0.0/0"}}})
	r.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": id})
	// Once n1 is gone its subnet is free again.
	r.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "n1", "EndpointID": "e0123456789abcdef"})
	r.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "n1"})
	r.ok("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": "n2", "IPv4Data": []map[string]any{{"Pool": "10.33.1.0/24"}}})
}

// TestMalformed is acceptance 4 at the protocol level: every malformed or
// unknown request gets HTTP 500 with Err, and changes nothing.
func TestMalformed(t *testing.T) {
	r := newRig(t, "")
	r.network()
	addr := r.container(epID)
	// An address allocated but not yet used by an endpoint.
	spare := r.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool})["Address"].(string)
	before := r.host.snapshot(t, r.state)
	cases := []struct{ method, body string }{
		{"NetworkDriver.CreateNetwork", `{`},
		{"NetworkDriver.CreateNetwork", `"x"`},
		{"NetworkDriver.CreateNetwork", `{}`},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"n2"}`},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"n2","IPv4Data":[{"Pool":"172.17.0.0/16"}]}`},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"n2","IPv4Data":[{"Pool":"0.0.0.0/0"}],"IPv6Data":[{"Pool":"fd00::/64"}]}`},
		{"NetworkDriver.DeleteNetwork", ``},
		{"NetworkDriver.DeleteNetwork", `{"NetworkID":"unknown"}`},
		{"NetworkDriver.DeleteNetwork", `{"NetworkID":42}`},
		{"NetworkDriver.AllocateNetwork", `{}`},
		{"NetworkDriver.FreeNetwork", `{}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"x1"}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"x1","Interface":{}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"x1","Interface":{"Address":"bogus"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"x1","Interface":{"Address":"10.32.9.9/12"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"x1","Interface":{"Address":"` + spare + `","AddressIPv6":"fd00::1/64"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"unknown","EndpointID":"x1","Interface":{"Address":"` + spare + `"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","Interface":{"Address":"` + spare + `"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"../../x","Interface":{"Address":"` + spare + `"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"` + epID + `","Interface":{"Address":"` + spare + `"}}`},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID + `","EndpointID":"` + epID[:9] + `zz","Interface":{"Address":"` + spare + `"}}`},
		{"NetworkDriver.DeleteEndpoint", `{"EndpointID":"` + epID + `"}`},
		{"NetworkDriver.DeleteEndpoint", `{"NetworkID":"unknown","EndpointID":"` + epID + `"}`},
		{"NetworkDriver.DeleteEndpoint", `{"NetworkID":"` + netID + `"}`},
		{"NetworkDriver.EndpointOperInfo", `{"NetworkID":"` + netID + `","EndpointID":"nope"}`},
		{"NetworkDriver.EndpointOperInfo", `{"NetworkID":"unknown","EndpointID":"` + epID + `"}`},
		{"NetworkDriver.Join", `{"NetworkID":"` + netID + `","EndpointID":"` + epID + `"}`},
		{"NetworkDriver.Join", `{"NetworkID":"unknown","EndpointID":"` + epID + `","SandboxKey":"/x"}`},
		{"NetworkDriver.Join", `{"NetworkID":"` + netID + `","EndpointID":"nope","SandboxKey":"/x"}`},
		{"NetworkDriver.Join", `[]`},
		{"NetworkDriver.Leave", `{"NetworkID":"unknown","EndpointID":"` + epID + `"}`},
		{"NetworkDriver.Leave", `{"NetworkID":"` + netID + `"}`},
		{"NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"unknown","EndpointID":"` + epID + `"}`},
		{"NetworkDriver.RevokeExternalConnectivity", `{"EndpointID":"` + epID + `"}`},
		{"IpamDriver.RequestPool", `{"Pool":"192.168.0.0/16"}`},
		{"IpamDriver.RequestPool", `{"Pool":"10.32.0.0/16"}`},
		{"IpamDriver.RequestPool", `{"SubPool":"10.32.1.0/24"}`},
		{"IpamDriver.RequestPool", `{"V6":true}`},
		{"IpamDriver.RequestPool", `{"AddressSpace":"other"}`},
		{"IpamDriver.RequestPool", `{"Pool":`},
		{"IpamDriver.ReleasePool", `{"PoolID":"other"}`},
		{"IpamDriver.ReleasePool", ``},
		{"IpamDriver.RequestAddress", ``},
		{"IpamDriver.RequestAddress", `{"PoolID":"other"}`},
		{"IpamDriver.RequestAddress", `{"PoolID":"` + pool + `","Address":"x"}`},
		{"IpamDriver.RequestAddress", `{"PoolID":"` + pool + `","Address":"fd00::1"}`},
		{"IpamDriver.RequestAddress", `{"PoolID":"` + pool + `","Address":"10.32.0.1"}`},
		{"IpamDriver.RequestAddress", `{"PoolID":"` + pool + `","Address":"10.32.0.2","Options":{"RequestAddressType":"com.docker.network.gateway"}}`},
		{"IpamDriver.RequestAddress", `{"PoolID":"` + pool + `","Options":[]}`},
		{"IpamDriver.ReleaseAddress", `{"PoolID":"` + pool + `"}`},
		{"IpamDriver.ReleaseAddress", `{"PoolID":"other","Address":"` + strings.Split(spare, "/")[0] + `"}`},
		{"IpamDriver.ReleaseAddress", `{"PoolID":"` + pool + `","Address":"10.32.7.7"}`},
		{"IpamDriver.ReleaseAddress", `{"PoolID":"` + pool + `","Address":"` + strings.Split(addr, "/")[0] + `"}`}, // in use
	}
	for _, c := range cases {
		code, m := r.call(c.method, c.body)
		if e, _ := m["Err"].(string); code != http.StatusInternalServerError || e == "" {
			t.Errorf("%s %s: HTTP %d %v; want 500 with Err", c.method, c.body, code, m)
		}
		if after := r.host.snapshot(t, r.state); after != before {
			t.Fatalf("%s %s changed something:\nbefore %s\nafter  %s", c.method, c.body, before, after)
		}
	}
	// A failing veth leaves nothing behind either.
	r.host.failVeth = true
	if code, _ := r.call("NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"g0123456789","Interface":{"Address":"`+spare+`"}}`); code != http.StatusInternalServerError {
		t.Errorf("CreateEndpoint with failing veth: HTTP %d", code)
	}
	if after := r.host.snapshot(t, r.state); after != before {
		t.Fatalf("a failed CreateEndpoint changed something:\nbefore %s\nafter  %s", before, after)
	}
}

// TestRestart: a new plugin on the same daemon knows the networks (its
// file) and the endpoints (the daemon's attachments), and removes them.
func TestRestart(t *testing.T) {
	r := newRig(t, "")
	r.network()
	addr := r.container(epID)
	r.srv.Close()
	r.p.Close()
	r.start("")
	info := r.ok("NetworkDriver.EndpointOperInfo", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if v, _ := info["Value"].(map[string]any); v["address"] != addr {
		t.Errorf("EndpointOperInfo after restart: %v, want address %s", info, addr)
	}
	r.remove(epID, addr)
	r.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": netID})
	if len(r.host.veths)+len(r.host.allocs)+len(r.host.recs) != 0 {
		t.Errorf("left behind: %s", r.host.snapshot(t, r.state))
	}
}

// TestContainerName: after Join the plugin asks Docker which container
// owns the endpoint and registers its name; Leave withdraws it.
func TestContainerName(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var calls sync.WaitGroup
	calls.Add(1)
	var once sync.Once
	api := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/networks/"+netID {
			http.NotFound(w, req)
			return
		}
		once.Do(calls.Done)
		json.NewEncoder(w).Encode(map[string]any{
			"Id": netID, "Name": "net1", "Driver": "weavewg",
			"Containers": map[string]any{"c0ffee": map[string]string{"Name": "web", "EndpointID": epID}},
		})
	})}
	go api.Serve(ln)
	t.Cleanup(func() { api.Close() })

	r := newRig(t, sock)
	r.network()
	addr := r.container(epID)
	calls.Wait()
	want := "web=" + strings.Split(addr, "/")[0]
	deadline := time.Now().Add(5 * time.Second)
	for {
		var got string
		for _, n := range r.host.names() {
			got = n
		}
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("name: %q, want %q", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.ok("NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if n := r.host.names(); len(n) != 0 {
		t.Errorf("names after Leave: %v", n)
	}
}

// TestEmptyBodyIsZeroRequest: calls with arguments get an error for the
// missing fields, not a decode failure.
func TestEmptyBodyIsZeroRequest(t *testing.T) {
	r := newRig(t, "")
	code, m := r.call("NetworkDriver.CreateNetwork", "")
	if code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(m["Err"]), "NetworkID") {
		t.Errorf("CreateNetwork with no body: HTTP %d %v", code, m)
	}
	var buf bytes.Buffer
	json.NewEncoder(&buf).Encode(struct{}{})
	if code, _ := r.call("IpamDriver.RequestPool", buf.String()); code != http.StatusOK {
		t.Errorf("RequestPool {}: HTTP %d", code)
	}
}
