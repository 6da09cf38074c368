// Package attachment defines the one record weavewg keeps per container
// interface on the overlay, whoever asked for it (the CLI, the Docker plugin
// or a CNI runtime), and the file the daemon keeps them in.
//
// The file (attachments.json in the state dir) is a JSON object:
//
//	{"version": 2, "attachments": [Record, ...]}
//
// Version 1 was a bare JSON array of the CLI's attachments; the daemon
// migrates it (and the Docker plugin's docker.json of the same era) when it
// starts. A record is written before its address is allocated (IP empty,
// the "intent"), so a crash between allocating and recording leaves a record
// whose IPAM id the next start frees: nothing leaks.
package attachment

import (
	"fmt"
	"net/netip"
	"os"
	"syscall"
)

// Origins: who asked for an attachment, and who ends it.
const (
	OriginCLI    = "cli"    // weavewg attach; ended by detach or the namespace vanishing
	OriginDocker = "docker" // the Docker plugin; ended by Docker's ReleaseAddress
	OriginCNI    = "cni"    // a CNI runtime; ended by DEL or GC
)

// FileVersion is the version of the attachments file this code writes.
const FileVersion = 2

// Record is one attachment.
type Record struct {
	// ID is unique on this host and is the IPAM allocation id: the
	// namespace path for the CLI (as before version 2), "docker:…" for
	// Docker, "cni:CONTAINERID/IFNAME" for CNI.
	ID     string `json:"id"`
	Origin string `json:"origin"`
	// IP is the address with its subnet's prefix length (the overlay's,
	// or an isolated subnet's); "" while the address is being allocated.
	IP   string `json:"ip,omitempty"`
	Name string `json:"name,omitempty"` // registered in weave.local when set
	// Netns is the namespace path as given; NetnsDev and NetnsIno name the
	// namespace itself (the device and inode of its nsfs file), so a path
	// re-used by another namespace is not mistaken for this one. Docker
	// records get them at Join.
	Netns    string `json:"netns,omitempty"`
	NetnsDev uint64 `json:"netns_dev,omitempty"`
	NetnsIno uint64 `json:"netns_ino,omitempty"`
	IfName   string `json:"ifname,omitempty"`    // inside the namespace
	HostVeth string `json:"host_veth,omitempty"` // the end on the bridge; "" until plumbed
	MTU      int    `json:"mtu,omitempty"`
	// Egress: the namespace's default route goes through the host, which
	// masquerades its traffic out of its own uplink (attach --egress).
	Egress bool `json:"egress,omitempty"`

	// ContainerID is the runtime's container ID (Docker, CNI).
	ContainerID string `json:"container_id,omitempty"`
	// Docker only: the endpoint and network IDs, the veth end handed to
	// Docker, and whether the endpoint has joined a sandbox.
	Endpoint string `json:"endpoint,omitempty"`
	Network  string `json:"network,omitempty"`
	PeerVeth string `json:"peer_veth,omitempty"`
	Joined   bool   `json:"joined,omitempty"`
}

// Prefix is the record's address, or false while it has none.
func (r Record) Prefix() (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(r.IP)
	return p, err == nil
}

// Plumbed reports whether the record has an interface on the bridge, so
// its address is published to the mesh.
func (r Record) Plumbed() bool {
	_, ok := r.Prefix()
	return ok && r.HostVeth != ""
}

// NetnsIdentity is the device and inode of the namespace file at path
// (/proc/PID/ns/net or a bind mount of it under /var/run/netns).
func NetnsIdentity(path string) (dev, ino uint64, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("%s: no device and inode", path)
	}
	return uint64(st.Dev), st.Ino, nil
}

// SameNetns reports whether the namespace at r.Netns is still the one the
// record was made for. A record made without an identity (before version
// 2) matches any namespace at its path.
func (r Record) SameNetns() bool {
	dev, ino, err := NetnsIdentity(r.Netns)
	if err != nil {
		return false
	}
	return r.NetnsIno == 0 || (dev == r.NetnsDev && ino == r.NetnsIno)
}
