package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/weavewg/weavewg/types/atomicfile"
	"github.com/weavewg/weavewg/types/key"
)

// The state directory holds what must survive a restart or a crash:
//
//	key               the peer's private key, base64, mode 0600
//	attachments.json  every attachment here, so a restart re-adopts them (attach_migrate.go)
//
// Every file is written whole to a temporary name, synced and renamed, so a
// crash at any point leaves either the old or the new version, never a torn one.
const keyFile = "key"

// loadOrCreateKey returns the identity kept in dir, creating it on first use.
func loadOrCreateKey(dir string) (priv key.Private, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return key.Private{}, false, fmt.Errorf("state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, keyFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		priv, err := key.ParsePrivate(strings.TrimSpace(string(b)))
		if err != nil {
			return key.Private{}, false, fmt.Errorf("identity key %s is corrupt (%v); move it away to start as a new peer", path, err)
		}
		return priv, false, nil
	case errors.Is(err, os.ErrNotExist):
		priv, err := key.NewPrivate()
		if err != nil {
			return key.Private{}, false, err
		}
		if err := atomicfile.Write(path, []byte(priv.String()+"\n"), 0o600); err != nil {
			return key.Private{}, false, fmt.Errorf("saving identity key: %w", err)
		}
		return priv, true, nil
	default:
		return key.Private{}, false, fmt.Errorf("reading identity key: %w", err)
	}
}
