package dns

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// goldenMessage is an update holding one live IPv4 entry and one IPv6
// tombstone, byte by byte.
var goldenMessage = []byte{
	0x01,       // version 1
	0x01,       // type: update
	0x00, 0x02, // 2 entries
	// entry 1
	0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // owner key (32)
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, // version 258
	0x00,               // flags: live
	0x04, 10, 32, 0, 5, // addr 10.32.0.5
	0x03, 'w', 'e', 'b', // name "web"
	0x02, 'c', '1', // origin "c1"
	// entry 2
	0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // owner key (32)
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // version 2^64-1
	0x01,                                                       // flags: tombstone
	0x10, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // addr fd00::1
	0x06, 'a', 'p', 'i', '.', 'p', 'r', // name "api.pr"
	0x00, // origin ""
}

var goldenEntries = []Entry{
	{Owner: peerKey(1), Name: "web", Addr: netip.MustParseAddr("10.32.0.5"), Origin: "c1", Version: 258},
	{Owner: peerKey(2), Name: "api.pr", Addr: netip.MustParseAddr("fd00::1"), Version: ^uint64(0), Tombstone: true},
}

func TestGolden(t *testing.T) {
	got := AppendMessage(nil, MsgUpdate, goldenEntries)
	if !bytes.Equal(got, goldenMessage) {
		t.Fatalf("encoding:\n got %x\nwant %x", got, goldenMessage)
	}
	typ, es, err := ParseMessage(goldenMessage)
	if err != nil || typ != MsgUpdate || !slices.Equal(es, goldenEntries) {
		t.Fatalf("parse: %d %v %v", typ, es, err)
	}
}

func TestParseErrors(t *testing.T) {
	mut := func(f func(b []byte) []byte) []byte { return f(slices.Clone(goldenMessage)) }
	tests := []struct {
		name string
		msg  []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"header only short", []byte{1, 1, 0}, ErrMalformed},
		{"version 2", mut(func(b []byte) []byte { b[0] = 2; return b }), ErrVersion},
		{"type 9", mut(func(b []byte) []byte { b[1] = 9; return b }), ErrUnknownType},
		{"count too high", mut(func(b []byte) []byte { b[3] = 3; return b }), ErrMalformed},
		{"count too low", mut(func(b []byte) []byte { b[3] = 1; return b }), ErrMalformed},
		{"trailing byte", append(slices.Clone(goldenMessage), 0), ErrMalformed},
		{"truncated", goldenMessage[:len(goldenMessage)-1], ErrMalformed},
		{"reserved flag", mut(func(b []byte) []byte { b[4+40] = 2; return b }), ErrMalformed},
		{"addr len 5", mut(func(b []byte) []byte { b[4+41] = 5; return b }), ErrMalformed},
		{"upper-case name", mut(func(b []byte) []byte { b[4+47] = 'W'; return b }), ErrMalformed},
		{"unspecified addr", mut(func(b []byte) []byte { copy(b[4+42:], []byte{0, 0, 0, 0}); return b }), ErrMalformed},
		{"too long", append(slices.Clone(goldenMessage), make([]byte, MaxMessageLen)...), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := ParseMessage(tt.msg); !errors.Is(err, tt.want) {
				t.Errorf("err %v, want %v", err, tt.want)
			}
		})
	}
}

func TestAppendMessagesSplits(t *testing.T) {
	var es []Entry
	long := string(bytes.Repeat([]byte("o"), MaxOriginLen))
	for i := range 1000 {
		es = append(es, Entry{Owner: peerKey(1), Name: "n" + string(rune('a'+i%26)), Addr: netip.AddrFrom16([16]byte{0xfd, byte(i >> 8), byte(i)}), Origin: long, Version: uint64(i + 1)})
	}
	msgs := AppendMessages(MsgState, es)
	if len(msgs) < 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	var back []Entry
	for _, m := range msgs {
		if len(m) > MaxMessageLen {
			t.Fatalf("message of %d bytes", len(m))
		}
		typ, got, err := ParseMessage(m)
		if err != nil || typ != MsgState {
			t.Fatal(err)
		}
		back = append(back, got...)
	}
	if !slices.Equal(back, es) {
		t.Fatalf("round trip through %d messages lost entries", len(msgs))
	}
}

func FuzzParseMessage(f *testing.F) {
	f.Add(goldenMessage)
	f.Add(AppendMessage(nil, MsgState, nil))
	f.Add([]byte{1, 2, 0, 1})
	f.Add([]byte{2, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, es, err := ParseMessage(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to the same bytes.
		if again := AppendMessage(nil, typ, es); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
		// And merges without panicking.
		NewTable(selfKey, TableOptions{}).Merge(es, t0)
	})
}

// chanTransport delivers broadcasts to other servers synchronously through a
// queue drained by the test (Broadcast must not call back into a Server).
type chanTransport struct {
	from key.Public
	net  *fakeNet
}

type fakeNet struct {
	mu      sync.Mutex
	servers map[key.Public]*Server
	queue   []pending
}

type pending struct {
	from key.Public
	msg  []byte
}

func (c *chanTransport) Broadcast(msg []byte) {
	c.net.mu.Lock()
	c.net.queue = append(c.net.queue, pending{c.from, msg})
	c.net.mu.Unlock()
}

func (n *fakeNet) run(t *testing.T) {
	for {
		n.mu.Lock()
		if len(n.queue) == 0 {
			n.mu.Unlock()
			return
		}
		p := n.queue[0]
		n.queue = n.queue[1:]
		n.mu.Unlock()
		for k, s := range n.servers {
			if k != p.from {
				if err := s.HandleMessage(p.from, p.msg); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func TestGossipBetweenServers(t *testing.T) {
	n := &fakeNet{servers: map[key.Public]*Server{}}
	var keys []key.Public
	for i := range 3 {
		k := peerKey(byte(i + 1))
		keys = append(keys, k)
		s, err := New(Config{Self: k, GossipInterval: -1, Transport: &chanTransport{k, n}})
		must(t, err)
		n.servers[k] = s
	}
	s1, s2, s3 := n.servers[keys[0]], n.servers[keys[1]], n.servers[keys[2]]
	must(t, s1.AddEntry("web", netip.MustParseAddr("10.32.0.1"), "a"))
	must(t, s2.AddEntry("web", netip.MustParseAddr("10.40.0.1"), "b"))
	must(t, s3.AddEntry("db", netip.MustParseAddr("10.48.0.1"), "c"))
	n.run(t)
	for _, s := range n.servers {
		if got, _ := s.Lookup("web"); len(got) != 2 {
			t.Fatalf("web %v", got)
		}
	}
	s2.RemoveEntries("", netip.Addr{}, "b")
	n.run(t)
	if got, _ := s1.Lookup("web"); len(got) != 1 {
		t.Fatalf("web after detach %v", got)
	}
	// A newcomer takes from each peer's state only that peer's own names:
	// s1 relaying s3's "db" is not s3 speaking (issue 14).
	k4 := peerKey(4)
	s4, _ := New(Config{Self: k4, GossipInterval: -1})
	for _, m := range s1.StateMessages() {
		must(t, s4.HandleMessage(keys[0], m))
	}
	if got, _ := s4.Lookup("db"); len(got) != 0 {
		t.Fatalf("newcomer took s3's db from s1: %v", got)
	}
	if c := s4.Counters(); c["dns_gossip_not_owner"] == 0 {
		t.Errorf("relayed entries not counted: %v", c)
	}
	// Each owner's own state message (sent when the newcomer becomes
	// reachable) brings its names.
	for _, k := range keys {
		for _, m := range n.servers[k].StateMessages() {
			must(t, s4.HandleMessage(k, m))
		}
	}
	if got, _ := s4.Lookup("db"); len(got) != 1 {
		t.Fatalf("newcomer db %v", got)
	}
	if got, _ := s4.Lookup("web"); len(got) != 1 {
		t.Fatalf("newcomer web %v", got)
	}
	// Malformed gossip: an error and a counter, no panic.
	if err := s4.HandleMessage(keys[0], []byte{1, 1, 0, 9, 1}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err %v", err)
	}
	if err := s4.HandleMessage(keys[0], []byte{7}); err == nil {
		t.Fatal("no error")
	}
	if c := s4.Counters(); c["dns_gossip_malformed"] != 2 || c["dns_gossip_state_in"] == 0 {
		t.Errorf("counters %v", c)
	}
}
