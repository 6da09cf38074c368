package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// EnvBinary names the environment variable that gives a prebuilt weavewg
// binary, skipping the build.
const EnvBinary = "WEAVEWG_BIN"

var (
	binMu  sync.Mutex
	binSet string
)

func binaryPath() string {
	binMu.Lock()
	defer binMu.Unlock()
	if binSet != "" {
		return binSet
	}
	return os.Getenv(EnvBinary)
}

// BuildBinary makes the weavewg binary available to every Bed of this
// process: $WEAVEWG_BIN if set, else `go build -o DIR/weavewg ./cmd/weavewg`
// in the module this package belongs to. It returns the path.
func BuildBinary(dir string) (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		setBinary(abs)
		return abs, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "weavewg")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/weavewg")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/weavewg: %v\n%s", err, b)
	}
	setBinary(out)
	return out, nil
}

// BuildBinaryTags builds ./cmd/weavewg with build tags into dir (a
// test-only binary, e.g. "forgetest": a member that misbehaves on purpose)
// and returns its path. It does not change the bed's binary.
func BuildBinaryTags(dir, tags string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "weavewg-"+tags)
	cmd := exec.Command("go", "build", "-tags", tags, "-o", out, "./cmd/weavewg")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags %s ./cmd/weavewg: %v\n%s", tags, err, b)
	}
	return out, nil
}

// Binary is the weavewg binary BuildBinary made or found.
func Binary() string { return binaryPath() }

func setBinary(p string) {
	binMu.Lock()
	binSet = p
	binMu.Unlock()
}

// ModuleRoot is the directory of the go.mod of the current module.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}
