package tunnel

import "testing"

// TestUAPIWithoutRelayEndpoints: wg parses every endpoint line as
// host:port and fails on "relay:ID", so relayed peers' lines go.
func TestUAPIWithoutRelayEndpoints(t *testing.T) {
	in := "private_key=aa\npublic_key=bb\nendpoint=192.0.2.1:6783\nallowed_ip=10.32.0.2/32\npublic_key=cc\nendpoint=relay:deadbeef00010203\nallowed_ip=10.32.0.3/32\n"
	want := "private_key=aa\npublic_key=bb\nendpoint=192.0.2.1:6783\nallowed_ip=10.32.0.2/32\npublic_key=cc\nallowed_ip=10.32.0.3/32\n"
	if got := string(withoutRelayEndpoints([]byte(in))); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
