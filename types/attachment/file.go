package attachment

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/weavewg/weavewg/types/atomicfile"
)

type file struct {
	Version     int      `json:"version"`
	Attachments []Record `json:"attachments"`
}

// legacyCLI is a version-1 record: the CLI's attachments.json was an array
// of these, keyed (and allocated in IPAM) by namespace path.
type legacyCLI struct {
	Netns    string `json:"netns"`
	IP       string `json:"ip"`
	Name     string `json:"name,omitempty"`
	IfName   string `json:"ifname"`
	HostVeth string `json:"host_veth"`
	MTU      int    `json:"mtu"`
}

// Load reads the attachments file at path. A missing file is no records;
// a version-1 file is converted (v1 is true then, and the caller should
// migrate whatever else that era kept and save). A file of a newer version
// is refused rather than misread.
func Load(path string) (recs []Record, v1 bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	for _, c := range b {
		if c == ' ' || c == '\n' || c == '\t' || c == '\r' {
			continue
		}
		if c == '[' {
			var old []legacyCLI
			if err := json.Unmarshal(b, &old); err != nil {
				return nil, false, fmt.Errorf("%s is corrupt: %w", path, err)
			}
			for _, o := range old {
				recs = append(recs, Record{
					ID: o.Netns, Origin: OriginCLI, IP: o.IP, Name: o.Name, Netns: o.Netns,
					IfName: o.IfName, HostVeth: o.HostVeth, MTU: o.MTU,
				})
			}
			return recs, true, nil
		}
		break
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, false, fmt.Errorf("%s is corrupt: %w", path, err)
	}
	if f.Version > FileVersion {
		return nil, false, fmt.Errorf("%s is version %d, newer than this weavewg reads (%d)", path, f.Version, FileVersion)
	}
	return f.Attachments, false, nil
}

// Save replaces the attachments file at path with recs.
func Save(path string, recs []Record) error {
	if recs == nil {
		recs = []Record{}
	}
	b, err := json.MarshalIndent(file{Version: FileVersion, Attachments: recs}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}
