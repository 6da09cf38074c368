package testbed

import (
	"path/filepath"
)

// WGUAPIDir is the host's WireGuard UAPI socket directory: what
// /var/run/wireguard is on a real host. The hosts of a bed share the
// machine's file system, and every host's device is weavewg0, so each
// gets a directory of its own (launch --wg-uapi-dir).
func (h *Host) WGUAPIDir() string { return filepath.Join(h.Dir, "wireguard") }

// WG runs wireguard-tools' wg as an operator on the host would: in the
// host's network namespace, and in a mount namespace of its own where the
// host's UAPI directory is /var/run/wireguard (wg has the path built in).
func (h *Host) WG(args ...string) (string, error) {
	script := `mkdir -p /var/run/wireguard && mount --bind "$0" /var/run/wireguard && exec wg "$@"`
	return run("ip", append([]string{"netns", "exec", h.Netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, h.WGUAPIDir()}, args...)...)
}
