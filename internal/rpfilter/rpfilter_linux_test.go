package rpfilter

import (
	"fmt"
	"testing"

	"github.com/weavewg/weavewg/internal/netnstest"
)

// A device comes out loose where the host would filter it strictly, and
// as the host has it otherwise: no filtering added where the host has
// none, and loose left loose.
func TestNotStrict(t *testing.T) {
	netnstest.RequireNetAdmin(t)
	for _, c := range []struct {
		all, def, want int // conf/all, conf/default (the new device's own), effective after
	}{
		{Off, Off, Off},
		{Off, Strict, Loose},
		{Strict, Off, Loose},
		{Strict, Strict, Loose},
		{Loose, Off, Loose},
		{Off, Loose, Loose},
	} {
		t.Run(fmt.Sprintf("all=%d,default=%d", c.all, c.def), func(t *testing.T) {
			ns := netnstest.New(t, "rp")
			netnstest.Run(t, "ip", "netns", "exec", ns.Name, "sysctl", "-q", "-w",
				fmt.Sprintf("net.ipv4.conf.all.rp_filter=%d", c.all), fmt.Sprintf("net.ipv4.conf.default.rp_filter=%d", c.def))
			netnstest.Run(t, "ip", "-n", ns.Name, "link", "add", "rpt0", "type", "bridge")
			var got int
			var err error
			if nerr := netnstest.Do(ns, func() {
				if err = NotStrict("rpt0"); err == nil {
					got, err = Effective("rpt0")
				}
			}); nerr != nil {
				t.Fatal(nerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("effective rp_filter %d, want %d", got, c.want)
			}
		})
	}
	t.Run("no such device", func(t *testing.T) {
		ns := netnstest.New(t, "rp")
		var err error
		if nerr := netnstest.Do(ns, func() { err = NotStrict("nosuch0") }); nerr != nil {
			t.Fatal(nerr)
		}
		if err == nil {
			t.Error("NotStrict of a missing device: no error")
		}
	})
}
