package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/weavewg/weavewg/types/atomicfile"
)

// state is what the plugin keeps in its state file, written whole to a
// temporary name, synced and renamed, so a crash leaves the old or the new
// version and never a torn one. Endpoints and addresses are attachments,
// kept by the daemon.
type state struct {
	// Networks by Docker network ID.
	Networks map[string]network `json:"networks"`
}

type network struct {
	Pool    string `json:"pool"`
	Gateway string `json:"gateway,omitempty"`
}

func loadState(path string) (*state, error) {
	st := &state{}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(b, st); err != nil {
			return nil, fmt.Errorf("%s is corrupt: %w", path, err)
		}
	}
	if st.Networks == nil {
		st.Networks = map[string]network{}
	}
	return st, nil
}

func (st *state) save(path string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}
