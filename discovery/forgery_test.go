package discovery

import (
	"encoding/hex"
	"math"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// TestRecordsMessageGolden pins the v2 records message: each record is
// followed by its owner's signature.
func TestRecordsMessageGolden(t *testing.T) {
	rec := goldenRecord
	for i := range rec.Sig {
		rec.Sig[i] = byte(i)
	}
	want := "02" + "0001" + goldenRecordHex +
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" +
		"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
	b := AppendRecordsMessage(nil, []*Record{&rec})
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, want)
	}
	recs, err := ParseRecordsMessage(b)
	if err != nil || len(recs) != 1 || recs[0].Sig != rec.Sig {
		t.Fatalf("parsed %+v, %v", recs, err)
	}
	if _, err := ParseRecordsMessage(b[:len(b)-1]); err == nil {
		t.Error("a record without its whole signature parsed")
	}
}

func TestRecordSignature(t *testing.T) {
	priv := newKey(t)
	rec := goldenRecord
	rec.Key = priv.Public()
	rec.Sign(priv)
	if err := rec.Verify(); err != nil {
		t.Fatal(err)
	}
	forged := rec
	forged.Version++
	if forged.Verify() == nil {
		t.Error("a record with its version changed still verifies")
	}
	other := rec
	other.Key = newKey(t).Public()
	if other.Verify() == nil {
		t.Error("a record verifies for another key")
	}
}

// TestForgedGossipChangesNothing is issue 14 acceptance 1 for discovery: a
// member (a raw-protocol client with its own key and the network secret)
// sends records of another peer and of the receiver, versions far in the
// future, and channel messages claiming another sender. The honest peer
// keeps what it had and counts each forgery; the member's own signed record
// is taken.
func TestForgedGossipChangesNothing(t *testing.T) {
	r := newTestRouter(t, "r")
	b := newTestRouter(t, "b")
	var box inbox
	if _, err := r.Channel("ipam", box.handle); err != nil {
		t.Fatal(err)
	}
	if err := r.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "r sees b", func() bool { p, ok := r.peer(b.Self()); return ok && p.Reachable })
	bBefore, _ := r.peer(b.Self())

	mPriv := newKey(t)
	m := rawPeer(t, r, mPriv)
	send := func(msg []byte) {
		t.Helper()
		if err := m.writeMsg(msg, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	counter := func(name string) uint64 { return r.Counters()[name] }

	// b's record, taken over by m: version up, nickname and host IP
	// changed, signed by m.
	fake := Record{Key: b.Self(), Version: bBefore.Version + 1, Nickname: "evil", HostIP: bBefore.HostIP, Port: 9}
	fake.Sign(mPriv)
	send(AppendRecordsMessage(nil, []*Record{&fake}))
	waitFor(t, 2*time.Second, "forged record of b counted", func() bool { return counter(CtrRecordsBadSig) >= 1 })

	// r's own record at the largest version (the wrap attack), unsigned.
	self := Record{Key: r.Self(), Version: math.MaxUint64, Nickname: "r"}
	send(AppendRecordsMessage(nil, []*Record{&self}))
	waitFor(t, 2*time.Second, "far-future record counted", func() bool { return counter(CtrRecordsFuture) >= 1 })

	// m's own record, signed, but two hours ahead of r's clock.
	ahead := Record{Key: mPriv.Public(), Version: uint64(time.Now().Add(2 * time.Hour).UnixNano()), Nickname: "raw", Port: 1}
	ahead.Sign(mPriv)
	send(AppendRecordsMessage(nil, []*Record{&ahead}))
	waitFor(t, 2*time.Second, "m's future record counted", func() bool { return counter(CtrRecordsFuture) >= 2 })

	// A channel message to r claiming to come from b, signed by m; and one
	// with b's name and no valid signature at all.
	cm := ChannelMessage{Name: "ipam", Src: b.Self(), Dst: r.Self(), Hops: maxHops, Payload: []byte("give me b's range")}
	cm.Sign(mPriv)
	wire, _ := AppendChannelMessage(nil, cm)
	send(wire)
	cm.Sig = key.Signature{}
	wire, _ = AppendChannelMessage(nil, cm)
	send(wire)
	waitFor(t, 2*time.Second, "forged channel senders counted", func() bool { return counter(CtrChannelBadSig) >= 2 })

	// m's honest record and message are taken, so the forgeries above were
	// not dropped for some other reason.
	own := Record{Key: mPriv.Public(), Version: uint64(time.Now().UnixNano()), Nickname: "raw", Port: 1}
	own.Sign(mPriv)
	send(AppendRecordsMessage(nil, []*Record{&own}))
	good := ChannelMessage{Name: "ipam", Src: mPriv.Public(), Dst: r.Self(), Hops: maxHops, Payload: []byte("hello")}
	good.Sign(mPriv)
	wire, _ = AppendChannelMessage(nil, good)
	send(wire)
	waitFor(t, 2*time.Second, "m's own message delivered", func() bool { return box.has(mPriv.Public(), []byte("hello")) })
	waitFor(t, 2*time.Second, "m's own record taken", func() bool { p, ok := r.peer(mPriv.Public()); return ok && p.Version == own.Version })

	if box.len() != 1 {
		t.Errorf("handler got %d messages, want only m's own", box.len())
	}
	bAfter, _ := r.peer(b.Self())
	if bAfter.Nickname != "b" || bAfter.Version != bBefore.Version || bAfter.Port == 9 {
		t.Errorf("b's record changed by a forgery: %+v", bAfter)
	}
	r.mu.Lock()
	selfV := r.selfRec.Version
	r.mu.Unlock()
	if selfV == math.MaxUint64 || selfV > uint64(time.Now().Add(time.Minute).UnixNano()) {
		t.Errorf("r's own version pushed to %d", selfV)
	}
	if c := r.Counters(); c[CtrRecordsBadSig] != 1 || c[CtrRecordsFuture] != 2 || c[CtrChannelBadSig] != 2 {
		t.Errorf("counters: bad sig %d, future %d, channel bad sig %d", c[CtrRecordsBadSig], c[CtrRecordsFuture], c[CtrChannelBadSig])
	}
}
