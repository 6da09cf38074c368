package tunnel

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
)

// fakeBind is a conn.Bind test double: each receive returns the next batch
// queued with deliver, from the endpoint src; after Close every receive
// function of the last Open returns net.ErrClosed, as the contract demands.
type fakeBind struct {
	mu      sync.Mutex
	open    bool
	gen     int // incremented by every Open; a receive func knows its own
	batches chan [][]byte
	sent    [][]byte
	src     netip.AddrPort
}

var _ conn.Bind = (*fakeBind)(nil)

func newFakeBind() *fakeBind {
	return &fakeBind{batches: make(chan [][]byte, 16), src: netip.MustParseAddrPort("192.0.2.7:6783")}
}

func (f *fakeBind) deliver(pkts ...[]byte) { f.batches <- pkts }

func (f *fakeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	f.open = true
	f.gen++
	gen := f.gen
	fn := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		f.mu.Lock()
		closed := !f.open || f.gen != gen
		f.mu.Unlock()
		if closed {
			return 0, net.ErrClosed
		}
		batch := <-f.batches
		for i, p := range batch {
			sizes[i] = copy(packets[i], p)
			eps[i] = &conn.StdNetEndpoint{AddrPort: f.src}
		}
		return len(batch), nil
	}
	return []conn.ReceiveFunc{fn}, port, nil
}

func (f *fakeBind) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.open = false
	return nil
}

func (f *fakeBind) SetMark(uint32) error { return nil }

func (f *fakeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bufs {
		f.sent = append(f.sent, append([]byte(nil), b...))
	}
	return nil
}

func (f *fakeBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &conn.StdNetEndpoint{AddrPort: ap}, nil
}

func (f *fakeBind) BatchSize() int { return conn.IdealBatchSize }

// receive calls fn with fresh buffers of the batch size.
func receive(t *testing.T, fn conn.ReceiveFunc) ([]int, int, error) {
	t.Helper()
	bufs := make([][]byte, conn.IdealBatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, conn.IdealBatchSize)
	eps := make([]conn.Endpoint, conn.IdealBatchSize)
	n, err := fn(bufs, sizes, eps)
	return sizes, n, err
}

func TestBindSortsBatch(t *testing.T) {
	inner := newFakeBind()
	b := NewBind(inner, netns.None())
	fns, _, err := b.Open(6783)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	b.SetRelayHandler(func(pkt []byte, src netip.AddrPort) {
		if src != inner.src {
			t.Errorf("relay handler: src = %v, want %v", src, inner.src)
		}
		got = append(got, "relay")
	})

	batch := [][]byte{
		wgMsg(1, 148, [4]byte{}),  // 0 wireguard
		{0xde, 0xad, 0xbe, 0xef},  // 1 junk
		stunMsg(0x0001, 0),        // 2 stun, no handler
		relayMsg(40),              // 3 relay, handler
		wgMsg(4, 100, stunCookie), // 4 wireguard
		{},                        // 5 empty
	}
	inner.deliver(batch...)
	sizes, n, err := receive(t, fns[0])
	if err != nil || n != len(batch) {
		t.Fatalf("receive = %d, %v; want %d, nil", n, err, len(batch))
	}
	wantSizes := []int{148, 0, 0, 0, 100, 0}
	for i, w := range wantSizes {
		if sizes[i] != w {
			t.Errorf("sizes[%d] = %d, want %d", i, sizes[i], w)
		}
	}
	if len(got) != 1 {
		t.Errorf("relay handler called %d times, want 1", len(got))
	}

	// A STUN handler set now gets the next STUN datagram.
	var stunGot int
	b.SetSTUNHandler(func(pkt []byte, src netip.AddrPort) { stunGot = len(pkt) })
	inner.deliver(stunMsg(0x0101, 12))
	sizes, n, err = receive(t, fns[0])
	if err != nil || n != 1 || sizes[0] != 0 || stunGot != 32 {
		t.Errorf("stun with handler: n=%d err=%v size=%d handler saw %d bytes; want 1, nil, 0, 32", n, err, sizes[0], stunGot)
	}

	want := map[string]uint64{
		CounterUDPWireGuard:             2,
		CounterUDPSTUN:                  2,
		CounterUDPRelay:                 1,
		CounterUDPJunkDropped:           1,
		CounterUDPSTUNUnhandled:         1,
		CounterUDPRelayUnhandled:        0,
		CounterUDPReceiveBatches:        2,
		CounterHandshakeRetransmits:     0,
		CounterHandshakeCrossedDropped:  0,
		CounterHandshakeToKernelDropped: 0,
		CounterNATPortUnreachable:       0,
	}
	c := b.Counters()
	for k, w := range want {
		if c[k] != w {
			t.Errorf("counter %s = %d, want %d", k, c[k], w)
		}
	}
	if len(c) != len(want)+int(numRelayCounters)+int(numMTUCounters) {
		t.Errorf("Counters() has %d names, want %d: %v", len(c), len(want), c)
	}
}

// wireguard-go closes and reopens the Bind on every Up: the old receive
// functions must then report net.ErrClosed and the new ones work.
func TestBindCloseThenOpen(t *testing.T) {
	inner := newFakeBind()
	b := NewBind(inner, netns.None())
	old, _, err := b.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(1); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Errorf("second Open = %v, want ErrBindAlreadyOpen", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := receive(t, old[0]); !errors.Is(err, net.ErrClosed) {
		t.Errorf("receive after Close = %v, want net.ErrClosed", err)
	}
	fns, _, err := b.Open(1)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if _, _, err := receive(t, old[0]); !errors.Is(err, net.ErrClosed) {
		t.Errorf("old receive after reopen = %v, want net.ErrClosed", err)
	}
	inner.deliver(wgMsg(4, 32, [4]byte{}))
	if sizes, n, err := receive(t, fns[0]); err != nil || n != 1 || sizes[0] != 32 {
		t.Errorf("receive after reopen = %d, %v, size %d", n, err, sizes[0])
	}
	b.Close()
	b.Close() // twice is fine
}

func TestBindSendDelegates(t *testing.T) {
	inner := newFakeBind()
	b := NewBind(inner, netns.None())
	if err := b.SendTo([]byte("stun answer"), netip.MustParseAddrPort("192.0.2.9:1")); err != nil {
		t.Fatal(err)
	}
	ep, _ := b.ParseEndpoint("192.0.2.9:2")
	if err := b.Send([][]byte{[]byte("a"), []byte("b")}, ep); err != nil {
		t.Fatal(err)
	}
	if len(inner.sent) != 3 || string(inner.sent[0]) != "stun answer" {
		t.Errorf("sent = %q", inner.sent)
	}
	if b.BatchSize() != conn.IdealBatchSize {
		t.Errorf("BatchSize = %d", b.BatchSize())
	}
}

// The sorting loop runs for every datagram: it must not allocate.
func TestSortBatchAllocs(t *testing.T) {
	b := NewBind(newFakeBind(), netns.None())
	kinds := [][]byte{wgMsg(4, 1400, [4]byte{}), stunMsg(1, 8), relayMsg(64), {1, 2, 3}}
	packets := make([][]byte, conn.IdealBatchSize)
	sizes := make([]int, conn.IdealBatchSize)
	eps := make([]conn.Endpoint, conn.IdealBatchSize)
	ep := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.1:1")}
	for i := range packets {
		packets[i] = make([]byte, 2048)
		eps[i] = ep
	}
	fill := func() {
		for i := range packets {
			sizes[i] = copy(packets[i], kinds[i%len(kinds)])
		}
	}
	if a := testing.AllocsPerRun(100, func() { fill(); b.sortBatch(packets, sizes, eps) }); a != 0 {
		t.Errorf("sortBatch allocates %v times per batch, want 0", a)
	}
	// With handlers set, the Bind itself still allocates nothing.
	b.SetSTUNHandler(func([]byte, netip.AddrPort) {})
	b.SetRelayHandler(func([]byte, netip.AddrPort) {})
	if a := testing.AllocsPerRun(100, func() { fill(); b.sortBatch(packets, sizes, eps) }); a != 0 {
		t.Errorf("sortBatch with handlers allocates %v times per batch, want 0", a)
	}
}

func BenchmarkSortBatch(b *testing.B) {
	bd := NewBind(newFakeBind(), netns.None())
	packets := make([][]byte, conn.IdealBatchSize)
	sizes := make([]int, conn.IdealBatchSize)
	eps := make([]conn.Endpoint, conn.IdealBatchSize)
	for i := range packets {
		packets[i] = wgMsg(4, 1400, [4]byte{})
	}
	b.ReportAllocs()
	for b.Loop() {
		for i := range sizes {
			sizes[i] = 1400
		}
		bd.sortBatch(packets, sizes, eps)
	}
}
