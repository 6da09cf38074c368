package daemon

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/atomicfile"
	"github.com/weavewg/weavewg/types/key"
)

// The network secret's epochs (weavewg rotate-secret; the rules are in
// discovery/secret.go), kept in the state dir:
//
//	secrets.json  the epochs' secrets (base64, 0600), the first active one,
//	              and the signed rotations (to pass on to members that were away)
//
// network.json keeps the secret the network was made with: it names the
// network and keys what never rotates. A missing secrets.json means epoch
// 0 is that secret; an unreadable one is moved aside and the peer starts
// at epoch 0, as a member that was away during the rotations: it gets the
// newest secret from the first member it reaches (catch-up).
const secretsFile = "secrets.json"

// secretKeeper is the secret-epoch part of discovery.Router.
type secretKeeper interface {
	PairSecret(peer key.Public) key.Secret
	Secrets() discovery.SecretStatus
	RotateSecret(extra []key.Public) (discovery.SecretStatus, int, error)
}

type secretsFileEpoch struct {
	Epoch  uint32 `json:"epoch"`
	Secret string `json:"secret"`
}

type secretsFileState struct {
	Epochs    []secretsFileEpoch `json:"epochs"`
	Active    uint32             `json:"active"`
	Rotations []string           `json:"rotations,omitempty"`
}

// loadSecrets reads secrets.json; adm is the admission of this start, if
// any, whose epoch is written at once.
func loadSecrets(dir string, adm *discovery.JoinResult) (discovery.SecretState, error) {
	if adm != nil && adm.Epoch > 0 {
		st := discovery.SecretState{Epochs: []discovery.Epoch{{N: adm.Epoch, Secret: adm.EpochSecret}}, Active: adm.Epoch}
		return st, saveSecretsFile(dir, st)
	}
	path := filepath.Join(dir, secretsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && adm != nil) {
		return discovery.SecretState{}, nil
	}
	if err != nil {
		return discovery.SecretState{}, err
	}
	var f secretsFileState
	st, perr := func() (discovery.SecretState, error) {
		if err := json.Unmarshal(b, &f); err != nil {
			return discovery.SecretState{}, err
		}
		st := discovery.SecretState{Active: f.Active}
		for _, e := range f.Epochs {
			var s key.Secret
			raw, err := base64.StdEncoding.DecodeString(e.Secret)
			if err != nil || len(raw) != key.Len {
				return discovery.SecretState{}, fmt.Errorf("epoch %d: secret is not 32 bytes of base64", e.Epoch)
			}
			copy(s[:], raw)
			st.Epochs = append(st.Epochs, discovery.Epoch{N: e.Epoch, Secret: s})
		}
		if len(st.Epochs) == 0 {
			return discovery.SecretState{}, errors.New("no epochs")
		}
		for _, r := range f.Rotations {
			if raw, err := base64.StdEncoding.DecodeString(r); err == nil {
				st.Rotations = append(st.Rotations, raw)
			}
		}
		return st, nil
	}()
	if perr != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return discovery.SecretState{}, fmt.Errorf("%s is corrupt (%v) and could not be moved aside: %w", secretsFile, perr, rerr)
		}
		return discovery.SecretState{}, fmt.Errorf("%s is corrupt (%v); moved it to %s: starting at epoch 0, the newest secret comes from the first member reached", secretsFile, perr, aside)
	}
	return st, nil
}

func saveSecretsFile(dir string, st discovery.SecretState) error {
	f := secretsFileState{Active: st.Active, Epochs: []secretsFileEpoch{}}
	for _, e := range st.Epochs {
		f.Epochs = append(f.Epochs, secretsFileEpoch{Epoch: e.N, Secret: base64.StdEncoding.EncodeToString(e.Secret[:])})
	}
	for _, r := range st.Rotations {
		f.Rotations = append(f.Rotations, base64.StdEncoding.EncodeToString(r))
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, secretsFile), append(b, '\n'), 0o600)
}

// rotateSecret moves the network to a new secret. The rotation is sealed
// to every member the router knows, and to the owners of address space
// and the hosts admitted with tokens, so members that are down now get it
// when they come back.
func (d *Daemon) rotateSecret() (api.SecretRotation, error) {
	var extra []key.Public
	if d.ipam != nil {
		for _, ps := range d.ipam.Status().Peers {
			extra = append(extra, ps.Peer)
		}
	}
	for _, t := range d.tokens.Tokens() {
		extra = append(extra, t.UsedBy...)
	}
	st, n, err := d.secrets.RotateSecret(extra)
	if errors.Is(err, discovery.ErrRotationTooSoon) {
		return api.SecretRotation{}, badRequest("%v", err)
	}
	if err != nil {
		return api.SecretRotation{}, err
	}
	d.nudge()
	out := d.secretAPI(st)
	out.Recipients = n
	return out, nil
}

func (d *Daemon) secretAPI(st discovery.SecretStatus) api.SecretRotation {
	out := api.SecretRotation{Epoch: st.Epoch, ID: st.ID.String(), Active: st.Active}
	for _, k := range st.Behind {
		out.Behind = append(out.Behind, d.describe(k))
	}
	return out
}

func (d *Daemon) secretStatus() *api.SecretRotation {
	if d.secrets == nil {
		return nil
	}
	st := d.secretAPI(d.secrets.Secrets())
	return &st
}
