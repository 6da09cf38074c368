package main

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/api"
)

// TestMakeBuildStampsVersion builds the binary as a release is built, with
// `make release` (for this platform only) and with `make build`, the stamp
// given, and asks each what it is: the stamp must come back from `weavewg
// version` and `version --json`, and the binary must be static (no ELF
// interpreter, no shared libraries).
func TestMakeBuildStampsVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary with make; skipped with -short")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed: ", err)
	}
	const (
		ver    = "v9.8.7-test-3-gdeadbee"
		commit = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
		date   = "2026-01-02T03:04:05Z"
	)
	stamp := []string{"VERSION=" + ver, "COMMIT=" + commit, "DATE=" + date}
	t.Run("release", func(t *testing.T) {
		dir := t.TempDir()
		platform := runtime.GOOS + "/" + runtime.GOARCH
		mk := exec.Command("make", append([]string{"-C", "../..", "release", "RELEASE_DIR=" + dir, "RELEASE_PLATFORMS=" + platform}, stamp...)...)
		if out, err := mk.CombinedOutput(); err != nil {
			t.Fatalf("make release: %v\n%s", err, out)
		}
		bin := filepath.Join(dir, "weavewg-"+ver+"-"+runtime.GOOS+"-"+runtime.GOARCH)
		sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
		if err != nil || !strings.Contains(string(sums), filepath.Base(bin)) {
			t.Errorf("SHA256SUMS %q (%v) does not list %s", sums, err, filepath.Base(bin))
		}
		checkStamp(t, bin, ver, commit, date)
	})
	t.Run("build", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "weavewg")
		mk := exec.Command("make", append([]string{"-C", "../..", "build", "BIN=" + bin}, stamp...)...)
		if out, err := mk.CombinedOutput(); err != nil {
			t.Fatalf("make build: %v\n%s", err, out)
		}
		checkStamp(t, bin, ver, commit, date)
	})
}

func checkStamp(t *testing.T, bin, ver, commit, date string) {
	t.Helper()
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("weavewg version: %v\n%s", err, out)
	}
	if want := "weavewg " + ver + " (commit deadbeefdead, built " + date + ")"; !strings.HasPrefix(string(out), want+"\n") {
		t.Errorf("weavewg version printed %q, want it to start with %q", out, want)
	}

	out, err = exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("weavewg version --json: %v", err)
	}
	var b api.Build
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("version --json is not JSON: %v\n%s", err, out)
	}
	if b.Version != ver || b.Commit != commit || b.Date != date || b.GoVersion == "" || b.Platform == "" {
		t.Errorf("version --json = %+v, want the stamp %s %s %s", b, ver, commit, date)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has an ELF interpreter: not static (was CGO_ENABLED=0 lost?)")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v; want a static binary", libs)
	}
}
