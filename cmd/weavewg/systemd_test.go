package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const unitPath = "../../deploy/systemd/weavewg.service"

// TestSystemdUnitVerifies is issue 19's acceptance 3: systemd's own
// checker, `systemd-analyze verify`, accepts deploy/systemd/weavewg.service
// without a warning. verify insists that ExecStart's binary exist, and the
// unit names the install path /usr/local/bin/weavewg (asserted below), so
// the copy it checks points ExecStart at an executable that exists here;
// every other line is checked as shipped. A broken copy must be refused,
// so the check is known to bite.
func TestSystemdUnitVerifies(t *testing.T) {
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(unit)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(k, "#") {
			keys[k] = v
		}
	}
	for k, want := range map[string]string{
		"Type":             "notify",
		"Restart":          "on-failure",
		"StateDirectory":   "weavewg",
		"RuntimeDirectory": "weavewg",
		"WantedBy":         "multi-user.target",
	} {
		if keys[k] != want {
			t.Errorf("%s=%q, want %q", k, keys[k], want)
		}
	}
	const bin = "/usr/local/bin/weavewg"
	if !strings.HasPrefix(keys["ExecStart"], bin+" launch --state-dir /var/lib/weavewg") {
		t.Errorf("ExecStart=%q, want %s launch --state-dir /var/lib/weavewg …", keys["ExecStart"], bin)
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze (Debian package systemd) is not installed; make deps installs it: ", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	verify := func(text string) (string, error) {
		dir := t.TempDir()
		p := filepath.Join(dir, "weavewg.service")
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, bin, self)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := verify(string(unit)); err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	broken := strings.Replace(string(unit), "Type=notify", "Type=notfy", 1)
	if out, _ := verify(broken); !strings.Contains(out, "notfy") {
		t.Errorf("systemd-analyze verify accepted Type=notfy without a word (%q): the check does not bite", out)
	}
}
