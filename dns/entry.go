// Package dns is weavewg's micro DNS server: it answers names under the
// overlay's domain (weave.local. by default) from a name table that every peer
// gossips as a CRDT, and forwards every other question to the host's upstream
// resolvers.
//
// The name table's gossip encoding is described in wire.go.
package dns

import (
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/weavewg/weavewg/types/key"
)

// Size bounds of an entry.
const (
	MaxNameLen   = 200 // bytes of a (relative) name; leaves room for the domain in 255
	MaxLabelLen  = 63  // bytes of one label (RFC 1035 2.3.4)
	MaxOriginLen = 128 // bytes of UTF-8
)

// Entry is one row of the name table: Owner's container Origin has Addr and
// answers to Name (relative to the DNS domain, lower case, e.g. "web" or
// "api.prod").
//
// The identity of an entry is (Owner, Name, Addr, Origin); Version and
// Tombstone are its state. Only Owner changes that state, always with a higher
// Version, so merging two copies keeps the one with the higher Version.
type Entry struct {
	Owner     key.Public
	Name      string
	Addr      netip.Addr
	Origin    string // container ID, or "" for names added by hand (dns-add)
	Version   uint64 // the owner's clock in Unix nanoseconds, strictly increasing per owner
	Tombstone bool
}

// id is the identity of an entry: the map key of the table.
type id struct {
	owner  key.Public
	name   string
	addr   netip.Addr
	origin string
}

func (e *Entry) id() id { return id{e.Owner, e.Name, e.Addr, e.Origin} }

// newer reports whether a should replace b (same identity). The tie-break on
// equal versions (which an honest owner never produces) is deterministic so
// that merge stays commutative: a tombstone beats a live entry.
func newer(a, b *Entry) bool {
	if a.Version != b.Version {
		return a.Version > b.Version
	}
	return a.Tombstone && !b.Tombstone
}

// Errors about names and entries.
var (
	ErrBadName   = errors.New("dns: invalid name")
	ErrBadAddr   = errors.New("dns: invalid address")
	ErrBadOrigin = errors.New("dns: origin too long or not UTF-8")
)

// CanonicalName turns what a user typed ("Web", "web.weave.local",
// "web.weave.local.") into the table's form ("web") for the given domain
// (e.g. "weave.local."). It returns ErrBadName for anything that is not a
// valid host name.
func CanonicalName(name, domain string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if d != "" {
		if n == d {
			return "", ErrBadName // the apex has no addresses
		}
		n = strings.TrimSuffix(n, "."+d)
	}
	if !validName(n) {
		return "", ErrBadName
	}
	return n, nil
}

// validName reports whether n is a relative name in the table's form: labels
// of [a-z0-9_-], 1..63 bytes each, separated by single dots, at most
// MaxNameLen bytes in all.
func validName(n string) bool {
	if len(n) == 0 || len(n) > MaxNameLen {
		return false
	}
	label := 0
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > MaxLabelLen {
			return false
		}
	}
	return label > 0
}

func validOrigin(o string) bool { return len(o) <= MaxOriginLen && utf8.ValidString(o) }

// validAddr: an entry's address is IPv4 or IPv6 (not 4-in-6, so that one
// address has one encoding), without a zone, and not unspecified.
func validAddr(a netip.Addr) bool {
	return a.IsValid() && !a.Is4In6() && a.Zone() == "" && !a.IsUnspecified()
}

func (e *Entry) valid() error {
	switch {
	case !validName(e.Name):
		return ErrBadName
	case !validAddr(e.Addr):
		return ErrBadAddr
	case !validOrigin(e.Origin):
		return ErrBadOrigin
	}
	return nil
}
