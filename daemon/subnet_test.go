package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/api"
)

// With a default subnet, addresses come from it with its prefix length;
// --net gives an isolated subnet's with that one; bad subnets and
// addresses are refused with a reason.
func TestAttachSubnets(t *testing.T) {
	cfg := testConfig(t)
	cfg.HostIP = netip.Prefix{}
	cfg.DefaultSubnet = netip.MustParsePrefix("10.32.0.0/16")
	d := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	if hp := d.hostPrefix(); !cfg.DefaultSubnet.Contains(hp.Addr()) {
		t.Fatalf("host address %v outside the default subnet", hp)
	}
	nsN := 0
	ns := func() string {
		nsN++
		p := filepath.Join(t.TempDir(), "ns")
		os.WriteFile(p, nil, 0o600)
		return p
	}
	ok := []struct{ name, ip, net, want string }{
		{"default", "", "", "10.32.0.0/16"},
		{"isolated", "", "10.33.1.0/24", "10.33.1.0/24"},
		{"address in isolated", "10.33.1.9", "10.33.1.0/24", "10.33.1.9/24"},
		{"CIDR names its subnet", "10.33.2.9/24", "", "10.33.2.9/24"},
	}
	for _, tc := range ok {
		a, err := d.attach(context.Background(), api.AttachRequest{Netns: ns(), IP: tc.ip, Net: tc.net})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		p := netip.MustParsePrefix(a.IP)
		if want := netip.MustParsePrefix(tc.want); (want.Addr() == want.Masked().Addr() && p.Masked() != want) || (want.Addr() != want.Masked().Addr() && p != want) {
			t.Errorf("%s: got %s, want %s", tc.name, a.IP, tc.want)
		}
	}
	bad := []struct{ name, ip, net, want string }{
		{"overlaps default", "", "10.32.5.0/24", "overlaps the default subnet"},
		{"outside range", "", "10.99.0.0/24", "not inside the overlay range"},
		{"host bits", "", "10.33.1.1/24", "host bits"},
		{"too small", "", "10.33.1.0/31", "too small"},
		{"range prefix", "10.33.1.10/12", "", "range's prefix length"},
		{"address outside its net", "10.33.2.10", "10.33.1.0/24", "not in subnet"},
		{"bare address outside default", "10.33.1.11", "", "outside the default subnet"},
		{"subnet broadcast", "10.33.1.255/24", "", "network or broadcast"},
	}
	for _, tc := range bad {
		_, err := d.attach(context.Background(), api.AttachRequest{Netns: ns(), IP: tc.ip, Net: tc.net})
		if err == nil || !errors.Is(err, errBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: attach(ip %q, net %q) = %v, want a bad request containing %q", tc.name, tc.ip, tc.net, err, tc.want)
		}
	}
	// expose on an isolated subnet allocates the host an address there.
	res, err := d.expose(api.ExposeRequest{Subnet: "10.33.1.0/24"})
	if err != nil || !netip.MustParsePrefix("10.33.1.0/24").Contains(netip.MustParseAddr(res.Address)) {
		t.Fatalf("expose 10.33.1.0/24 = %+v, %v", res, err)
	}
	if res, err := d.hide(api.ExposeRequest{Subnet: "10.33.1.0/24"}); err != nil || !res.Changed || len(res.Exposed) != 0 {
		t.Fatalf("hide 10.33.1.0/24 = %+v, %v", res, err)
	}
	if got := d.ipam.AddressesOf(exposeID(netip.MustParsePrefix("10.33.1.0/24"))); len(got) != 0 {
		t.Fatalf("hide kept the subnet address %v", got)
	}
}

// Without a default subnet there are no isolated subnets, and the error
// says how to get them.
func TestNoSubnetsWithoutDefault(t *testing.T) {
	d := newTestDaemon(t, testConfig(t), newFakeRouter(), newFakeTunnel())
	p := filepath.Join(t.TempDir(), "ns")
	os.WriteFile(p, nil, 0o600)
	_, err := d.attach(context.Background(), api.AttachRequest{Netns: p, Net: "10.33.1.0/24"})
	if err == nil || !strings.Contains(err.Error(), "--ipalloc-default-subnet") {
		t.Fatalf("attach --net without a default subnet: %v", err)
	}
}

// The network's default subnet (network.json) is this start's: taken when
// no flag is given, a different flag refused, recorded from the flag when
// the network has none yet.
func TestResolveDefaultSubnet(t *testing.T) {
	p := netip.MustParsePrefix
	rng, def := p("10.32.0.0/12"), p("10.32.0.0/16")
	for _, tc := range []struct {
		name      string
		stored    string
		flag      netip.Prefix
		want      netip.Prefix
		wantSaved string
		err       string
	}{
		{name: "taken without the flag", stored: "10.32.0.0/16", want: def, wantSaved: "10.32.0.0/16"},
		{name: "the same flag", stored: "10.32.0.0/16", flag: def, want: def, wantSaved: "10.32.0.0/16"},
		{name: "another flag refused", stored: "10.32.0.0/16", flag: p("10.34.0.0/16"), err: "default subnet 10.32.0.0/16"},
		{name: "none stored: the flag's recorded", flag: def, want: def, wantSaved: "10.32.0.0/16"},
		{name: "none at all", want: netip.Prefix{}, wantSaved: ""},
		{name: "the range is none", flag: rng, want: rng, wantSaved: ""},
		{name: "corrupt", stored: "10.32.0.0/99", err: "corrupt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{Range: rng, DefaultSubnet: tc.flag}
			n := &networkState{DefaultSubnet: tc.stored}
			err := resolveDefaultSubnet(cfg, n)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil || cfg.DefaultSubnet != tc.want || n.DefaultSubnet != tc.wantSaved {
				t.Fatalf("default subnet %v, saved %q, err %v; want %v, %q", cfg.DefaultSubnet, n.DefaultSubnet, err, tc.want, tc.wantSaved)
			}
		})
	}
}
