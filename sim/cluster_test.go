package sim

import (
	"testing"
	"time"
)

func TestJoinConverges(t *testing.T) {
	c := New(Config{Seed: 1})
	defer c.Close()
	for range 8 {
		if _, err := c.Join(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	d, err := c.WaitConverged(start, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m, b := c.Traffic()
	t.Logf("converged %v after the last join; %d frames %d bytes; verify calls %d done %d", d, m, b, c.Verify.Calls.Load(), c.Verify.Verified.Load())
}
