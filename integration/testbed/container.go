package testbed

import (
	"fmt"
	"strings"
	"time"
)

// Container is a network namespace attached to a host with `weavewg attach`.
type Container struct {
	bed   *Bed
	Host  *Host
	Index int    // M: address 10.32.N.M
	Name  string // hNcM
	Netns string
	IP    string // CIDR the daemon gave it (or Fixed: asked for), e.g. 10.32.N.M/12
	Addr  string // the address alone
	// Fixed makes Attach ask for IP instead of letting the allocator choose.
	Fixed bool
	// Net is the isolated subnet to attach to (--net); Egress asks for a
	// way out through the host (--egress).
	Net    string
	Egress bool
}

// attachFlags are the attach flags c asks for.
func (c *Container) attachFlags() []string {
	var args []string
	if c.Fixed {
		args = append(args, "--ip", c.IP)
	}
	if c.Net != "" {
		args = append(args, "--net", c.Net)
	}
	if c.Egress {
		args = append(args, "--egress")
	}
	return args
}

// AddContainer makes the next container of h and attaches it with
// `weavewg attach --name hNcM /var/run/netns/...`, run in the host's
// namespace; the daemon allocates its address.
func (h *Host) AddContainer() *Container {
	h.bed.tb.Helper()
	return h.addContainer("")
}

// AddContainerWithIP is AddContainer asking for a specific address
// (`attach --ip`), which must lie in this host's part of the range.
func (h *Host) AddContainerWithIP(ip string) *Container {
	h.bed.tb.Helper()
	return h.addContainer(ip)
}

func (h *Host) addContainer(ip string) *Container {
	b := h.bed
	b.tb.Helper()
	b.mu.Lock()
	m := 1
	for _, c := range b.ctrs {
		if c.Host == h {
			m++
		}
	}
	c := &Container{
		bed:   b,
		Host:  h,
		Index: m,
		Name:  fmt.Sprintf("h%dc%d", h.Index, m),
		Netns: fmt.Sprintf("%sh%dc%d", b.Prefix, h.Index, m),
		Addr:  fmt.Sprintf("10.32.%d.%d", h.Index, m),
	}
	c.IP = c.Addr + "/12"
	if ip != "" {
		c.IP, c.Fixed = ip, true
	}
	b.ctrs = append(b.ctrs, c)
	b.mu.Unlock()
	b.addNetns(c.Netns)
	c.Attach()
	return c
}

// AddContainers makes n containers on every host in hs.
func (b *Bed) AddContainers(n int, hs ...*Host) []*Container {
	b.tb.Helper()
	if len(hs) == 0 {
		hs = b.Hosts()
	}
	var cs []*Container
	for _, h := range hs {
		for i := 0; i < n; i++ {
			cs = append(cs, h.AddContainer())
		}
	}
	return cs
}

// Attach runs `weavewg attach` for c (again, e.g. after a detach). The
// address comes from the daemon's allocator unless c.Fixed asks for c.IP;
// c.IP and c.Addr are set to what the daemon handed out.
func (c *Container) Attach() {
	c.bed.tb.Helper()
	args := append([]string{"attach", "--json", "--name", c.Name}, c.attachFlags()...)
	out := c.Host.CLI(append(args, NetnsPath(c.Netns))...)
	a, err := ParseAttachOutput(out)
	if err != nil {
		c.bed.tb.Fatalf("testbed: %s: attach %s printed %q: %v", c.Host, c.Name, out, err)
	}
	c.IP = a.IP
	c.Addr = strings.Split(a.IP, "/")[0]
	c.bed.logf("testbed: %s: attached %s %s", c.Host, c.Name, c.IP)
}

// Detach runs `weavewg detach` for c.
func (c *Container) Detach() {
	c.bed.tb.Helper()
	c.Host.CLI("detach", NetnsPath(c.Netns))
}

func (c *Container) String() string { return c.Name }

// Exec runs a command in the container's namespace and returns its combined output.
func (c *Container) Exec(name string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", c.Netns, name}, args...)...)
}

// Ping sends one echo request to addr and waits up to a second for the reply.
func (c *Container) Ping(addr string) error {
	_, err := c.Exec("ping", "-c", "1", "-W", "1", "-n", "-q", addr)
	return err
}

// PingEventually retries Ping until it succeeds or timeout passes.
func (c *Container) PingEventually(addr string, timeout time.Duration) error {
	return Poll(c.bed.tb, timeout, fmt.Sprintf("ping %s → %s", c, addr), func() error { return c.Ping(addr) })
}

// PingResult is one cell of a ping matrix.
type PingResult struct {
	From, To *Container
	Err      error
	Took     time.Duration // until the first reply, retries included
}

// PingMatrix pings every container in cs from every other one, retrying each
// pair until it answers or per passes, and returns the results row by row.
func PingMatrix(cs []*Container, per time.Duration) []PingResult {
	var rs []PingResult
	for _, from := range cs {
		for _, to := range cs {
			if from == to {
				continue
			}
			start := time.Now()
			var err error
			for {
				if err = from.Ping(to.Addr); err == nil || time.Since(start) > per {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			rs = append(rs, PingResult{From: from, To: to, Err: err, Took: time.Since(start)})
		}
	}
	return rs
}
