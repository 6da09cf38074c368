package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/weavewg/weavewg/types/atomicfile"
	"github.com/weavewg/weavewg/types/attachment"
)

// attachmentsFile is the attachment service's file in the state dir.
const attachmentsFile = "attachments.json"

// legacyDockerState is docker.json as the Docker plugin kept it before the
// attachment service: its networks, its endpoints and the addresses it
// handed out (address → IPAM id).
type legacyDockerState struct {
	Networks  json.RawMessage `json:"networks"`
	Endpoints map[string]struct {
		NetworkID   string `json:"network_id"`
		Address     string `json:"address"`
		HostVeth    string `json:"host_veth"`
		PeerVeth    string `json:"peer_veth"`
		Joined      bool   `json:"joined"`
		Name        string `json:"name"`
		ContainerID string `json:"container_id"`
	} `json:"endpoints"`
	Addresses map[string]string `json:"addresses"`
}

// loadAttachments reads the attachments file. A state dir of the versions
// before the attachment service (attachments.json a bare array, docker.json
// with endpoints and addresses) is migrated: both become records of the one
// file, written first, then docker.json keeps only its networks. Migrating
// happens only while attachments.json is not yet version 2, so a crash
// between the two writes never duplicates a record.
func loadAttachments(dir string, bits int, log *slog.Logger) ([]attachment.Record, error) {
	path := filepath.Join(dir, attachmentsFile)
	recs, v1, err := attachment.Load(path)
	if err != nil {
		return nil, err
	}
	_, statErr := os.Stat(path)
	if !v1 && statErr == nil {
		return recs, nil
	}
	dockerPath := filepath.Join(dir, dockerStateFile)
	b, err := os.ReadFile(dockerPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var old legacyDockerState
	if len(b) > 0 {
		if err := json.Unmarshal(b, &old); err != nil {
			return nil, fmt.Errorf("%s is corrupt: %w", dockerPath, err)
		}
	}
	docker := migrateDocker(old, bits)
	if !v1 && len(docker) == 0 {
		return recs, nil // a fresh state dir
	}
	recs = append(recs, docker...)
	if err := attachment.Save(path, recs); err != nil {
		return nil, fmt.Errorf("migrating %s: %w", path, err)
	}
	if len(b) > 0 {
		nets := old.Networks
		if len(nets) == 0 {
			nets = json.RawMessage("{}")
		}
		nb, _ := json.MarshalIndent(map[string]json.RawMessage{"networks": nets}, "", "  ")
		if err := atomicfile.Write(dockerPath, append(nb, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("migrating %s: %w", dockerPath, err)
		}
	}
	log.Info("migrated the attachments of an earlier version into one file", "file", path, "cli", len(recs)-len(docker), "docker", len(docker))
	return recs, nil
}

// migrateDocker turns the Docker plugin's old addresses and endpoints into
// records (addresses with the overlay prefix length bits): one per address handed out, with its endpoint's details when an
// endpoint uses it.
func migrateDocker(old legacyDockerState, bits int) []attachment.Record {
	var out []attachment.Record
	for addr, id := range old.Addresses {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			continue
		}
		rec := attachment.Record{ID: id, Origin: attachment.OriginDocker, IP: netip.PrefixFrom(a, bits).String()}
		for epID, ep := range old.Endpoints {
			p, err := netip.ParsePrefix(ep.Address)
			if err != nil || p.Addr() != a {
				continue
			}
			rec.IP = p.String()
			rec.Endpoint, rec.Network, rec.HostVeth, rec.PeerVeth = epID, ep.NetworkID, ep.HostVeth, ep.PeerVeth
			rec.Joined, rec.Name, rec.ContainerID, rec.IfName = ep.Joined, ep.Name, ep.ContainerID, ContainerIfName
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(x, y attachment.Record) int {
		px, _ := x.Prefix()
		py, _ := y.Prefix()
		return px.Addr().Compare(py.Addr())
	})
	return out
}
