package discovery

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

func seqKey(start byte) key.Public {
	var k key.Public
	for i := range k {
		k[i] = start + byte(i)
	}
	return k
}

// goldenRecord and goldenRecordHex pin the record encoding. Changing the
// encoding is a protocol change: bump the prologue version.
var goldenRecord = Record{
	Key:      seqKey(0x00),
	Version:  0x0102030405060708,
	Nickname: "host1",
	HostIP:   netip.MustParseAddr("10.32.0.1"),
	Port:     6783,
	Attached: []netip.Prefix{
		netip.MustParsePrefix("10.32.0.0/24"),
		netip.MustParsePrefix("fd00::1/128"),
	},
	Neighbors: []Neighbor{
		{Key: seqKey(0x20), IP: netip.MustParseAddr("192.0.2.7"), Established: true},
		{Key: seqKey(0x40)},
	},
}

var goldenRecordHex = strings.Join([]string{
	// key (32)
	"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
	// version (8)
	"0102030405060708",
	// nick len, "host1"
	"05", "686f737431",
	// host IP: len 4, 10.32.0.1
	"04", "0a200001",
	// port 6783
	"1a7f",
	// 2 attached: 10.32.0.0/24, fd00::1/128
	"0002",
	"04", "0a200000", "18",
	"10", "fd000000000000000000000000000001", "80",
	// 2 neighbors
	"0002",
	"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f", "04", "c0000207", "01",
	"404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f", "00", "00",
}, "")

func TestRecordGolden(t *testing.T) {
	got := hex.EncodeToString(AppendRecord(nil, &goldenRecord))
	if got != goldenRecordHex {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, goldenRecordHex)
	}
	b, _ := hex.DecodeString(goldenRecordHex)
	rec, err := ParseRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec, goldenRecord) {
		t.Errorf("parsed %+v\nwant %+v", rec, goldenRecord)
	}
}

func TestHelloGolden(t *testing.T) {
	h := Hello{Port: 6783, RecordVersion: 0x0102030405060708, Nickname: "n"}
	const want = "01" + "1a7f" + "0102030405060708" + "01" + "6e"
	if got := hex.EncodeToString(AppendHello(nil, &h)); got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

func TestParseRecordRejects(t *testing.T) {
	good := AppendRecord(nil, &goldenRecord)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"truncated", good[:len(good)-1]},
		{"trailing", append(bytes.Clone(good), 0)},
		{"bad addr len", mut(func(b []byte) []byte { b[32+8+1+5] = 5; return b })},
		{"nick too long", mut(func(b []byte) []byte { b[40] = 65; return b })},
		{"prefix bits", mut(func(b []byte) []byte { b[32+8+1+5+5+2+2+5] = 33; return b })},
		{"reserved flag", mut(func(b []byte) []byte { b[len(b)-1] = 2; return b })},
		{"too many attached", mut(func(b []byte) []byte { b[32+8+1+5+5+2] = 0xff; return b })},
		{"bad utf8", mut(func(b []byte) []byte { b[41] = 0xff; return b })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseRecord(tt.b); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestAppendRecordBounds(t *testing.T) {
	rec := Record{Nickname: strings.Repeat("é", 40), Attached: []netip.Prefix{{}, netip.MustParsePrefix("10.0.0.0/8")}}
	for range MaxNeighbors + 10 {
		rec.Neighbors = append(rec.Neighbors, Neighbor{IP: netip.MustParseAddr("2001:db8::1"), Established: true})
	}
	for range MaxAttached + 10 {
		rec.Attached = append(rec.Attached, netip.MustParsePrefix("2001:db8::/64"))
	}
	b := AppendRecord(nil, &rec)
	if len(b) > maxRecordLen {
		t.Errorf("record of %d bytes exceeds maxRecordLen %d", len(b), maxRecordLen)
	}
	got, err := ParseRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Nickname) > MaxNickname || len(got.Attached) != MaxAttached || len(got.Neighbors) != MaxNeighbors {
		t.Errorf("bounds not applied: nick %d attached %d neighbors %d", len(got.Nickname), len(got.Attached), len(got.Neighbors))
	}
	if got.Attached[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("invalid prefix not skipped: %v", got.Attached[0])
	}
	// Many maximal records pack into messages that each fit a frame.
	recs := []*Record{&rec, &rec, &rec, &goldenRecord}
	msgs := packRecords(recs)
	if len(msgs) != 3 { // the small golden record joins the last large one
		t.Errorf("%d messages for 3 large records and a small one", len(msgs))
	}
	n := 0
	for _, m := range msgs {
		if len(m) > maxPlaintext {
			t.Errorf("message of %d bytes", len(m))
		}
		rs, err := ParseRecordsMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		n += len(rs)
	}
	if n != 4 {
		t.Errorf("%d records unpacked", n)
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add(AppendRecord(nil, &goldenRecord))
	f.Add(AppendRecord(nil, &Record{}))
	f.Add(AppendRecord(nil, &Record{HostIP: netip.MustParseAddr("::ffff:1.2.3.4"), Nickname: "ü"}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := ParseRecord(b)
		if err != nil {
			return
		}
		out := AppendRecord(nil, &rec)
		if !bytes.Equal(out, b) {
			t.Fatalf("not canonical:\n in %x\nout %x", b, out)
		}
		rec2, err := ParseRecord(out)
		if err != nil || !reflect.DeepEqual(rec, rec2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, rec, rec2)
		}
	})
}

func FuzzParseRecordsMessage(f *testing.F) {
	f.Add(AppendRecordsMessage(nil, []*Record{&goldenRecord, {}}))
	f.Add(AppendRecordsMessage(nil, nil))
	f.Add([]byte{msgRecords, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := ParseRecordsMessage(b)
		if err != nil {
			return
		}
		ptrs := make([]*Record, len(recs))
		for i := range recs {
			ptrs[i] = &recs[i]
		}
		out := AppendRecordsMessage(nil, ptrs)
		if !bytes.Equal(out, b) {
			t.Fatalf("not canonical:\n in %x\nout %x", b, out)
		}
	})
}

func FuzzParseHello(f *testing.F) {
	f.Add(AppendHello(nil, &Hello{Port: 6783, RecordVersion: 1, Nickname: "host"}))
	f.Add([]byte{msgHello})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHello(b)
		if err != nil {
			return
		}
		if out := AppendHello(nil, &h); !bytes.Equal(out, b) {
			t.Fatalf("not canonical:\n in %x\nout %x", b, out)
		}
	})
}

// FuzzConnHandle feeds decrypted messages to a connection's dispatcher: it
// must never panic, whatever the bytes.
func FuzzConnHandle(f *testing.F) {
	f.Add(AppendRecordsMessage(nil, []*Record{&goldenRecord}))
	f.Add([]byte{msgKeepalive})
	f.Add(AppendDigestMessage(nil, digestReply, []DigestEntry{{Key: seqKey(1), Version: 1}}))
	f.Add([]byte{msgHello, 0})
	f.Add([]byte{99})
	r, err := New(Config{Private: key.Private{1}, Port: 1})
	if err != nil {
		f.Fatal(err)
	}
	c := &conn{r: r, peer: seqKey(7)}
	r.active[c.peer] = c
	f.Fuzz(func(t *testing.T, b []byte) {
		c.handle(b)
	})
}
