// Package integration runs weavewg daemons on namespace hosts (see testbed)
// and checks the mesh end to end. The tests need root, iproute2 and
// /dev/net/tun and skip without them; `make test` installs the rest
// (nftables, tcpdump, iputils-ping).
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// buildErr is why the weavewg binary could not be built, if it could not.
var buildErr error

func TestMain(m *testing.M) {
	var dir string
	if testbed.Check() == nil {
		var err error
		dir, err = os.MkdirTemp("", "weavewg-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		start := time.Now()
		if _, buildErr = testbed.BuildBinary(dir); buildErr == nil && os.Getenv(testbed.EnvBinary) == "" {
			fmt.Fprintf(os.Stderr, "integration: built weavewg in %.1fs\n", time.Since(start).Seconds())
		}
	}
	code := m.Run()
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// newBed skips the test where the test bed cannot run and fails it if the
// binary did not build.
func newBed(t *testing.T, opts testbed.Options) *testbed.Bed {
	t.Helper()
	if err := testbed.Check(); err != nil {
		t.Skip(err)
	}
	if buildErr != nil {
		t.Fatalf("weavewg binary: %v", buildErr)
	}
	return testbed.New(t, opts)
}

// needTool skips when a command the test uses is missing (`make test`
// installs them).
func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s is not installed (make test installs it)", n)
		}
	}
}

// podAllocs is how many addresses h's IPAM holds for attachments: the
// host's own overlay address is an IPAM allocation too (ipam.HostID,
// since hosts got IPAM addresses for expose), counted in `status ipam`.
func podAllocs(h *testbed.Host) int {
	st := h.Status()
	n := st.IPAM.Allocated
	if st.HostIP != "" {
		n--
	}
	return n
}

// counterSum adds the named counters that exist in m.
func counterSum(m map[string]uint64, names ...string) uint64 {
	var s uint64
	for _, n := range names {
		s += m[n]
	}
	return s
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
