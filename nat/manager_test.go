package nat

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/weavewg/weavewg/types/key"
)

// fakeNet is an in-memory underlay: each Manager has one address; a datagram
// sent to an address is handed to that Manager's HandleSTUN with the
// sender's address, unless drop says otherwise.
type fakeNet struct {
	mu    sync.Mutex
	nodes map[netip.AddrPort]*Manager
	drop  func(src, dst netip.AddrPort) bool
	// dropPkt, if set, sees every datagram too.
	dropPkt func(src, dst netip.AddrPort, pkt []byte) bool
	sent    int
}

func (n *fakeNet) sender(self netip.AddrPort) func([]byte, netip.AddrPort) error {
	return func(pkt []byte, dst netip.AddrPort) error {
		n.mu.Lock()
		m := n.nodes[dst]
		drop := n.drop != nil && n.drop(self, dst)
		if n.dropPkt != nil && n.dropPkt(self, dst, pkt) {
			drop = true
		}
		n.sent++
		n.mu.Unlock()
		if m != nil && !drop {
			m.HandleSTUN(pkt, self)
		}
		return nil
	}
}

type fakePeer struct {
	key  key.Public
	addr netip.AddrPort
	m    *Manager

	mu      sync.Mutex
	relayed bool
}

func newKey(t *testing.T) key.Public {
	t.Helper()
	k, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// twoPeers makes two Managers on a fakeNet that signal to each other
// directly, each seeing the other relayed until told otherwise.
func twoPeers(t *testing.T, n *fakeNet) (a, b *fakePeer) {
	t.Helper()
	return twoPeersWith(t, n, true, nil)
}

// twoPeersWith is twoPeers with setup run on both Managers before they
// start; direct says whether they hold a control connection to each other.
func twoPeersWith(t *testing.T, n *fakeNet, direct bool, setup func(a, b *fakePeer)) (a, b *fakePeer) {
	t.Helper()
	a = &fakePeer{key: newKey(t), addr: netip.MustParseAddrPort("192.0.2.1:6783"), relayed: true}
	b = &fakePeer{key: newKey(t), addr: netip.MustParseAddrPort("192.0.2.2:6783"), relayed: true}
	byKey := map[key.Public]*fakePeer{a.key: a, b.key: b}
	n.nodes = map[netip.AddrPort]*Manager{}
	for _, p := range []*fakePeer{a, b} {
		m, err := New(Config{
			Self: p.key,
			Port: 6783,
			Send: n.sender(p.addr),
			Signal: func(to key.Public, msg []byte) error {
				byKey[to].m.HandleSignal(p.key, msg)
				return nil
			},
			HostAddrs: func() []netip.Addr { return []netip.Addr{p.addr.Addr()} },
			Logger:    nil,
			Tick:      50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		p.m = m
		n.nodes[p.addr] = m
	}
	if setup != nil {
		setup(a, b)
	}
	for _, p := range []*fakePeer{a, b} {
		other := a
		if p == a {
			other = b
		}
		p.m.SetRelayed(map[key.Public]bool{other.key: p.relayed})
		p.m.Start()
		t.Cleanup(func() { p.m.Close() })
		p.m.SetPeers([]PeerInfo{{Key: other.key, Endpoint: other.addr, Direct: direct}})
	}
	return a, b
}

func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestManagersFindDirectPath runs two real pion agents over the fake
// network: each finds the other's host address, and the STUN responder
// answers their server-reflexive lookups.
func TestManagersFindDirectPath(t *testing.T) {
	n := &fakeNet{}
	a, b := twoPeers(t, n)
	waitFor(t, 10*time.Second, "both endpoints", func() bool {
		return a.m.Endpoints()[b.key] == b.addr && b.m.Endpoints()[a.key] == a.addr
	})
	st := a.m.Status()
	if len(st.Peers) != 1 || st.Peers[0].State != "connected" || st.Peers[0].LocalType == "" {
		t.Fatalf("status %+v", st)
	}
	// The tunnel now uses the path; the observed behaviour shows a public
	// address (the mapped address is our own).
	a.m.SetRelayed(map[key.Public]bool{b.key: false})
	b.m.SetRelayed(map[key.Public]bool{a.key: false})
	waitFor(t, 5*time.Second, "NAT behaviour", func() bool {
		bh := a.m.Status().Behaviour
		return len(bh.Mappings) == 1 && bh.Public && !bh.VariesPerDestination
	})
	c := a.m.Counters()
	if c[CounterSessionsConnected] != 1 || c[CounterSTUNAnswered] == 0 || c[CounterSTUNToICE] == 0 {
		t.Fatalf("counters %v", c)
	}
	for _, name := range []string{CounterSTUNMalformed, CounterSTUNBadIntegrity, CounterSTUNUnknownTxn, CounterSTUNWrongSource} {
		if c[name] != 0 {
			t.Errorf("%s = %d, want 0", name, c[name])
		}
	}
}

// TestManagersFailAndRetry: with the underlay cut, sessions fail, back off
// and are retried; once it heals a path is found.
func TestManagersFailAndRetry(t *testing.T) {
	n := &fakeNet{}
	var cut sync.Mutex
	blocked := true
	n.drop = func(src, dst netip.AddrPort) bool { cut.Lock(); defer cut.Unlock(); return blocked }
	a, b := twoPeers(t, n)
	waitFor(t, 30*time.Second, "a failed session", func() bool {
		return a.m.Counters()[CounterSessionsFailed] >= 1
	})
	if len(a.m.Endpoints()) != 0 {
		t.Fatalf("endpoint with the path cut: %v", a.m.Endpoints())
	}
	cut.Lock()
	blocked = false
	cut.Unlock()
	waitFor(t, 30*time.Second, "a path after healing", func() bool {
		return a.m.Endpoints()[b.key] == b.addr && b.m.Endpoints()[a.key] == a.addr
	})
}

// TestManagerHeldPair: while b's path owner holds a off (reach's opening
// turns), b sends a nothing: no session, no STUN, a's offers and requests
// refused and counted. Once the hold ends, the pair finds its path.
func TestManagerHeldPair(t *testing.T) {
	n := &fakeNet{}
	var mu sync.Mutex
	var bToA int
	var bAddr, aAddr netip.AddrPort
	n.dropPkt = func(src, dst netip.AddrPort, pkt []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		if src == bAddr && dst == aAddr && !isSTUNAnswer(pkt) {
			bToA++
		}
		return false
	}
	// Held pairs hold no control connection (reach holds off only peers
	// gossip routes through a relay), so b does not observe its NAT
	// through a either. STUN answers are replies, not counted.
	a, b := twoPeersWith(t, n, false, func(a, b *fakePeer) {
		mu.Lock()
		aAddr, bAddr = a.addr, b.addr
		mu.Unlock()
		b.m.SetHeld(map[key.Public]bool{a.key: true})
	})
	waitFor(t, 10*time.Second, "a's offers or requests refused", func() bool {
		return b.m.Counters()[CounterSignalHeld] >= 1
	})
	mu.Lock()
	sent := bToA
	mu.Unlock()
	if sent != 0 || len(b.m.Endpoints()) != 0 {
		t.Fatalf("held: b sent a %d datagrams, endpoints %v", sent, b.m.Endpoints())
	}
	b.m.SetHeld(nil)
	waitFor(t, 20*time.Second, "both endpoints after the hold", func() bool {
		return a.m.Endpoints()[b.key] == b.addr && b.m.Endpoints()[a.key] == a.addr
	})
}

// isSTUNAnswer reports whether pkt is a STUN success or error response
// (class bit C1 of the message type set).
func isSTUNAnswer(pkt []byte) bool { return len(pkt) >= 2 && pkt[0]&0x01 != 0 }

// stunCheck builds an ICE-style check: USERNAME, MESSAGE-INTEGRITY with
// pwd, FINGERPRINT.
func stunCheck(t *testing.T, username, pwd string) []byte {
	t.Helper()
	m, err := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername(username),
		stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

// TestHandleSTUNDrops: garbage and forged STUN are dropped and counted and
// reach no agent.
func TestHandleSTUNDrops(t *testing.T) {
	var sent [][]byte
	m, err := New(Config{
		Self:      newKey(t),
		Port:      6783,
		Send:      func(p []byte, _ netip.AddrPort) error { sent = append(sent, append([]byte(nil), p...)); return nil },
		Signal:    func(key.Public, []byte) error { return nil },
		HostAddrs: func() []netip.Addr { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	// A live session's credentials, without an agent.
	m.creds.Store(&map[string]creds{"LOCAL": {localPwd: "localpassword0123456789", remotePwd: "remotepassword0123456789"}})
	src := netip.MustParseAddrPort("192.0.2.9:4000")
	other := netip.MustParseAddrPort("192.0.2.10:4000")
	// A request we sent (a check to src), so that answers can be tried.
	ourCheck := stunCheck(t, "REMOTE:LOCAL", "remotepassword0123456789")
	if _, err := m.conn.WriteTo(ourCheck, udpAddr(src)); err != nil {
		t.Fatal(err)
	}
	var txID [12]byte
	copy(txID[:], ourCheck[8:20])
	answer := func(pwd string, tid [12]byte) []byte {
		r, err := stun.Build(stun.NewTransactionIDSetter(tid), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: src.Addr().AsSlice(), Port: 1}, stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
		if err != nil {
			t.Fatal(err)
		}
		return r.Raw
	}
	good := stunCheck(t, "LOCAL:REMOTE", "localpassword0123456789")
	truncated := append([]byte(nil), good...)
	truncated[22], truncated[23] = 0x01, 0x00 // USERNAME claims 256 bytes
	badFinger := append([]byte(nil), good...)
	badFinger[len(badFinger)-1] ^= 1
	indication, _ := stun.Build(stun.NewType(stun.MethodBinding, stun.ClassIndication), stun.TransactionID)
	var otherTx [12]byte
	otherTx[0] = 7

	tests := []struct {
		name string
		pkt  []byte
		src  netip.AddrPort
		ctr  string
	}{
		{"empty", nil, src, CounterSTUNMalformed},
		{"random", []byte("0123456789abcdefghijklmnop"), src, CounterSTUNMalformed},
		{"truncated attribute", truncated, src, CounterSTUNMalformed},
		{"bad fingerprint", badFinger, src, CounterSTUNMalformed},
		{"unknown ufrag", stunCheck(t, "OTHER:REMOTE", "localpassword0123456789"), src, CounterSTUNUnknownUfrag},
		{"wrong password", stunCheck(t, "LOCAL:REMOTE", "guessedpassword"), src, CounterSTUNBadIntegrity},
		{"indication", indication.Raw, src, CounterSTUNUnexpected},
		{"answer to nothing", answer("remotepassword0123456789", otherTx), src, CounterSTUNUnknownTxn},
		{"answer from elsewhere", answer("remotepassword0123456789", txID), other, CounterSTUNWrongSource},
		{"answer signed wrong", answer("localpassword0123456789", txID), src, CounterSTUNBadIntegrity},
		{"good check", good, src, CounterSTUNToICE},
		{"good answer", answer("remotepassword0123456789", txID), src, CounterSTUNToICE},
		{"server request", appendBindingRequest(nil, otherTx), src, CounterSTUNAnswered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.Counters()
			m.HandleSTUN(tt.pkt, tt.src)
			after := m.Counters()
			for name, v := range after {
				want := before[name]
				if name == tt.ctr {
					want++
				}
				if v != want {
					t.Errorf("%s: %d → %d", name, before[name], v)
				}
			}
		})
	}
	if len(sent) != 2 { // our check and the one answer
		t.Errorf("sent %d datagrams, want 2", len(sent))
	}
	m.Close()
}

func udpAddr(a netip.AddrPort) *net.UDPAddr { return net.UDPAddrFromAddrPort(a) }
