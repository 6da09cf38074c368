package ipam

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Upgrading from wire version 2 (unsigned rings). Version-2 and version-3
// peers do not read each other's ring messages (each counts the other's as
// malformed), so during a rolling upgrade IPAM state flows only among
// peers of one version; every peer keeps allocating from the ranges it
// holds. An ipam.db written by version 2 is converted when an upgraded
// peer opens it, rather than set aside:
//
//   - completed transfers are folded into the entries (a dead peer's
//     entries get its heir as owner); pending transfers and votes are
//     dropped (run rmpeer again after the upgrade);
//   - this peer's own entries get a new version written and signed by it,
//     which the other upgraded peers take (it owns them in their rings);
//   - other peers' entries are kept unsigned, as this peer's local
//     knowledge: an upgraded owner sends signed states of its own, and a
//     dead owner's are re-signed by its heir after an rmpeer.
//
// A peer with no ring yet adopts a ring whose entries carry no signature
// (a converted ring): it trusts the first ring it is given anyway.

// parseRingV2 decodes a version-2 ring body (as stored by version 2).
func parseRingV2(b []byte) (*Ring, error) {
	rd := &reader{b: b}
	a4 := [4]byte(rd.bytes(4))
	pfx := netip.PrefixFrom(netip.AddrFrom4(a4), int(rd.u8()))
	if rd.err == nil && (!validRange(pfx) || pfx.Masked() != pfx) {
		rd.fail("bad range")
	}
	r := &Ring{Range: pfx}
	r.Seed.Peer = key.Public(rd.bytes(key.Len))
	r.Seed.ID = rd.u64()
	if f := rd.u8(); f&^ringFlagUsed != 0 {
		rd.fail("unknown ring flags %#x", f)
	} else {
		r.Used = f&ringFlagUsed != 0
	}
	np := rd.count(512, "peers")
	keys := make([]key.Public, np)
	for i := range keys {
		keys[i] = key.Public(rd.bytes(key.Len))
	}
	peer := func() key.Public {
		i := int(rd.u16())
		if i >= np {
			rd.fail("peer index %d out of table", i)
			return key.Public{}
		}
		return keys[i]
	}
	if n := rd.count(2048, "entries"); rd.err == nil {
		for range n {
			e := Entry{Token: rd.u32(), Owner: peer(), Version: rd.u32(), Free: rd.u32()}
			e.Writer = e.Owner
			r.Entries = append(r.Entries, e)
		}
	}
	if n := rd.count(256, "transfers"); rd.err == nil {
		for range n {
			t := Transfer{Dead: peer(), Issuer: peer()}
			f := rd.u8()
			t.Done, t.Withdrawn = f&flagDone != 0, f&flagWithdrawn != 0
			r.Transfers = append(r.Transfers, t)
		}
	}
	if n := rd.count(1024, "votes"); rd.err == nil {
		for range n {
			rd.bytes(2 + 2 + 4 + 2) // dropped by the conversion
		}
	}
	if rd.err != nil {
		return nil, rd.err
	}
	if len(rd.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(rd.b))
	}
	if !slices.IsSortedFunc(r.Transfers, func(a, b Transfer) int { return cmpTransfer(a, b) }) {
		return nil, fmt.Errorf("%w: transfers not sorted", ErrMalformed)
	}
	return r, nil // the caller validates the converted ring
}

// fromV2 converts a version-2 ring for self (see the top of this file). The
// result's own entries are unsigned until signPending.
func fromV2(r *Ring, self key.Public) *Ring {
	for i := range r.Transfers {
		if t := &r.Transfers[i]; t.Done {
			t.Withdrawn, t.Accepted = false, true // heir() follows Accepted
		}
	}
	out := &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used, Entries: slices.Clone(r.Entries)}
	for i := range out.Entries {
		e := &out.Entries[i]
		e.Owner = r.heir(e.Owner)
		e.Writer = e.Owner
		if e.Owner == self {
			e.Version++
			e.Sig = key.Signature{}
		}
	}
	return out
}

// parseStoredRing decodes the stored ring body: version 3, or version 2
// converted for self (converted reports which).
func parseStoredRing(b []byte, self key.Public) (r *Ring, converted bool, err error) {
	r, err = ParseRing(b)
	if err == nil {
		return r, false, nil
	}
	old, err2 := parseRingV2(b)
	if err2 != nil {
		return nil, false, err // the version-3 error says more
	}
	r = fromV2(old, self)
	if err := r.Validate(); err != nil {
		return nil, false, fmt.Errorf("%w: version-2 ring: %v", ErrMalformed, err)
	}
	return r, true, nil
}
