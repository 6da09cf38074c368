package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weavewg/weavewg/pmtu"
	"github.com/weavewg/weavewg/types/key"
)

// mtuTUN is a channel TUN with the tunnel's MTU, which is what wireguard-go
// pads up to (device/send.go calculatePaddingSize reads the TUN's MTU, never
// a route's).
type mtuTUN struct {
	tun.Device
	mtu int
}

func (m mtuTUN) MTU() (int, error) { return m.mtu, nil }

// sizeBind records the length of every WireGuard transport message sent.
type sizeBind struct {
	conn.Bind
	mu    sync.Mutex
	sizes []int
}

func (s *sizeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	s.mu.Lock()
	for _, b := range bufs {
		if len(b) > 32 && b[0] == 4 { // transport data, not a keepalive
			s.sizes = append(s.sizes, len(b))
		}
	}
	s.mu.Unlock()
	return s.Bind.Send(bufs, ep)
}

func (s *sizeBind) take() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.sizes
	s.sizes = nil
	return out
}

// wgPair is two wireguard-go devices joined by channels, the first one's
// TUN at tunMTU; sent records the first one's transport messages.
type wgPair struct {
	tuns [2]*tuntest.ChannelTUN
	sent *sizeBind
}

func newWGPair(t *testing.T, tunMTU int) *wgPair {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	p := &wgPair{sent: &sizeBind{Bind: binds[0]}}
	binds[0] = p.sent
	var privs [2]key.Private
	for i := range privs {
		var err error
		if privs[i], err = key.NewPrivate(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		p.tuns[i] = tuntest.NewChannelTUN()
		dev := device.NewDevice(mtuTUN{p.tuns[i].TUN(), tunMTU}, binds[i], device.NewLogger(device.LogLevelError, fmt.Sprintf("dev%d: ", i)))
		t.Cleanup(dev.Close)
		// bindtest: device 0 reaches device 1 at port 1, device 1 device 0 at port 2.
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=0\nreplace_peers=true\npublic_key=%s\nallowed_ip=10.32.0.%d/32\nendpoint=127.0.0.1:%d\n",
			privs[i].Hex(), privs[1-i].Public().Hex(), 2-i, i+1)
		if err := dev.IpcSet(cfg); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
		if err := dev.Up(); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
	}
	return p
}

// send passes an IPv4 packet of n bytes from device 0 to device 1 and
// returns the length of the transport message(s) that carried it.
func (p *wgPair) send(t *testing.T, n int) []int {
	t.Helper()
	pkt := make([]byte, n)
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(n))
	pkt[8], pkt[9] = 64, 17
	copy(pkt[12:], []byte{10, 32, 0, 1, 10, 32, 0, 2})
	for i := 20; i < n; i++ {
		pkt[i] = byte(i)
	}
	p.sent.take()
	p.tuns[0].Outbound <- pkt
	select {
	case got := <-p.tuns[1].Inbound:
		if !bytes.Equal(got, pkt) {
			t.Fatalf("a %d-byte packet arrived altered", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("a %d-byte packet did not cross", n)
	}
	return p.sent.take()
}

// TestPeerMTUFitsWireGuardPadding: a peer's MTU is only as good as the
// datagrams it makes. wireguard-go pads every packet to a multiple of 16
// bytes, up to the TUN's MTU (1404 here), not up to the peer's smaller
// route MTU; a relayed datagram also carries the 36-byte relay header. So
// every packet up to the peer's MTU, sent through real wireguard-go, must
// make a relayed frame no larger than the payload the probes proved, and
// one no larger than the underlay a route MTU allows. Before, a probe of
// 1352 (a 1380 hop) gave 1284, whose packets were padded to 1296 and left
// the relay as 1364-byte payloads, 1392 bytes on the wire: the relay's
// single datagrams (DF) were dropped at the 1380 hop without a word, while
// its GSO batches (no DF) were fragmented and crossed, so a transfer
// stalled at its tail, when a lost segment's retransmission went alone.
func TestPeerMTUFitsWireGuardPadding(t *testing.T) {
	const tunMTU = pmtu.DefaultMTU // 1404: a 1500 underlay
	p := newWGPair(t, tunMTU)
	for _, probed := range pmtu.Ladder(pmtu.PayloadFor(1500, false), false) {
		m, src := pmtu.Decide(tunMTU, 1500, false, probed)
		// Every size that pads to the same 16-byte unit as m.
	sizes:
		for n := max(m-15, 20); n <= m; n++ {
			for _, z := range p.send(t, n) {
				if z+RelayHeaderLen > probed {
					t.Errorf("probe answered at %d bytes: peer MTU %d (%s), but a %d-byte packet became a %d-byte relayed payload",
						probed, m, src, n, z+RelayHeaderLen)
					break sizes
				}
			}
		}
	}
	for _, route := range []int{1460, 1400, 1380, 1280} {
		m, src := pmtu.Decide(tunMTU, route, false, 0)
	routeSizes:
		for n := max(m-15, 20); n <= m; n++ {
			for _, z := range p.send(t, n) {
				if z+RelayHeaderLen+pmtu.UDPHeader+pmtu.IPv4Header > route {
					t.Errorf("route MTU %d: peer MTU %d (%s), but a %d-byte packet became a %d-byte relayed datagram",
						route, m, src, n, z+RelayHeaderLen+pmtu.UDPHeader+pmtu.IPv4Header)
					break routeSizes
				}
			}
		}
	}
}
