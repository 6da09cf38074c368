package daemon

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestClosersRunInReverseOnceWithJoinedErrors(t *testing.T) {
	var c closers
	var order []string
	for _, name := range []string{"tunnel", "ipam", "dns", "nat", "router"} {
		c.add(name, func() error {
			order = append(order, name)
			if name == "dns" || name == "tunnel" {
				return errors.New("boom")
			}
			return nil
		})
	}
	err := c.close()
	if want := []string{"router", "nat", "dns", "ipam", "tunnel"}; !slices.Equal(order, want) {
		t.Errorf("closed in order %v, want %v", order, want)
	}
	if err == nil || !strings.Contains(err.Error(), "dns: boom") || !strings.Contains(err.Error(), "tunnel: boom") {
		t.Errorf("error = %v, want both failures named", err)
	}
	if err := c.close(); err != nil || len(order) != 5 {
		t.Errorf("second close ran closers again (order %v, err %v)", order, err)
	}
}
