package testbed

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/types/api"
)

// Helpers for tests that make many containers at once (IPAM, DNS): they
// return errors instead of failing the test, so they may run on goroutines,
// and they make namespaces without running ip(8).

// NewNetnsFast creates the named network namespace as `ip netns add` would
// (a bind mount of a fresh namespace under /var/run/netns), brings lo up and
// turns IPv6 off, all from one throw-away OS thread: no process is run. The
// namespace is deleted at cleanup (it must hold no processes by then; the
// bed's final sweep kills any). /var/run/netns must already be set up, which
// New did by making the underlay namespace with ip(8).
func (b *Bed) NewNetnsFast(name string) error {
	path := NetnsPath(name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("unshare: %w", err)
			}
			if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind mount: %w", err)
			}
			if err := linkUp("lo"); err != nil {
				return fmt.Errorf("lo up: %w", err)
			}
			for _, p := range []string{"all", "default"} {
				// Best effort, as addNetns: a kernel without IPv6 has no such file.
				os.WriteFile("/proc/sys/net/ipv6/conf/"+p+"/disable_ipv6", []byte("1"), 0)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return fmt.Errorf("netns %s: %w", name, err)
	}
	b.tb.Cleanup(func() { removeNetnsFast(name) })
	return nil
}

// removeNetnsFast deletes a namespace made by NewNetnsFast: processes inside
// (a ping still running after a failure) are killed first when there are any.
func removeNetnsFast(name string) {
	path := NetnsPath(name)
	if _, err := os.Stat(path); err != nil {
		return
	}
	if out, _ := run("ip", "netns", "pids", name); strings.TrimSpace(out) != "" {
		killNetnsPids(name)
	}
	unix.Unmount(path, unix.MNT_DETACH)
	os.Remove(path)
}

// linkUp sets IFF_UP on an interface of the calling thread's namespace.
func linkUp(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// RaiseNeighLimits makes the kernel's ARP table hold at least n entries
// before it garbage-collects hard (gc_thresh2) and 2n before it refuses
// new ones (gc_thresh3, "neighbor table overflow!" in dmesg). The table and
// its limits are shared by every namespace and set in the root one only
// (defaults 512 and 1024), so hundreds of containers pinging each other
// overflow it. Limits already higher are left alone; at cleanup the old
// values come back unless something else changed them meanwhile.
func (b *Bed) RaiseNeighLimits(n int) {
	b.tb.Helper()
	for _, s := range []struct {
		name string
		want int
	}{{"gc_thresh3", 2 * n}, {"gc_thresh2", n}} {
		path := "/proc/sys/net/ipv4/neigh/default/" + s.name
		data, err := os.ReadFile(path)
		if err != nil {
			b.tb.Fatalf("testbed: %v", err)
		}
		old := strings.TrimSpace(string(data))
		var cur int
		fmt.Sscan(old, &cur)
		if cur >= s.want {
			continue
		}
		want := fmt.Sprint(s.want)
		if err := os.WriteFile(path, []byte(want), 0); err != nil {
			b.tb.Fatalf("testbed: raising %s: %v", path, err)
		}
		b.tb.Logf("testbed: %s raised from %s to %s for this test", path, old, want)
		b.tb.Cleanup(func() {
			if data, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(data)) == want {
				os.WriteFile(path, []byte(old), 0)
			}
		})
	}
}

// AddContainerErr is AddContainer for many goroutines at once: the
// namespace comes from NewNetnsFast and errors are returned. name "" means
// hNcM; another name is given to `attach --name` (so it becomes a DNS
// name) and the namespace is PREFIX-hN-NAME. The container is in
// Bed.Containers even when attaching failed (its namespace exists).
func (h *Host) AddContainerErr(name string) (*Container, error) {
	return h.addContainerErr(name, "")
}

// AddContainerWithIPErr is AddContainerErr asking for address ip
// (`attach --ip`, a CIDR with the overlay's prefix length).
func (h *Host) AddContainerWithIPErr(ip string) (*Container, error) {
	return h.addContainerErr("", ip)
}

// AddContainerOpts is AddContainerErr with more of attach's flags: the
// isolated subnet (--net) and --egress.
func (h *Host) AddContainerOpts(name, net string, egress bool) (*Container, error) {
	return h.addContainerWith(name, "", func(c *Container) { c.Net, c.Egress = net, egress })
}

func (h *Host) addContainerErr(name, ip string) (*Container, error) {
	return h.addContainerWith(name, ip, nil)
}

func (h *Host) addContainerWith(name, ip string, set func(*Container)) (*Container, error) {
	b := h.bed
	b.mu.Lock()
	m := 1
	for _, c := range b.ctrs {
		if c.Host == h {
			m++
		}
	}
	c := &Container{bed: b, Host: h, Index: m, Name: name}
	if name == "" {
		c.Name = fmt.Sprintf("h%dc%d", h.Index, m)
		c.Netns = fmt.Sprintf("%sh%dc%d", b.Prefix, h.Index, m)
	} else {
		c.Netns = fmt.Sprintf("%sh%d-%s", b.Prefix, h.Index, name)
	}
	if ip != "" {
		c.IP, c.Fixed = ip, true
	}
	if set != nil {
		set(c)
	}
	b.ctrs = append(b.ctrs, c)
	b.mu.Unlock()
	if err := b.NewNetnsFast(c.Netns); err != nil {
		return c, err
	}
	return c, c.AttachErr()
}

// AttachErr is Attach returning the error (safe on any goroutine).
func (c *Container) AttachErr() error {
	args := append([]string{"attach", "--json", "--name", c.Name}, c.attachFlags()...)
	out, err := c.Host.CLIErr(append(args, NetnsPath(c.Netns))...)
	if err != nil {
		return err
	}
	a, err := ParseAttachOutput(out)
	if err != nil {
		return fmt.Errorf("%s: attach %s printed %q: %v", c.Host, c.Name, out, err)
	}
	c.IP = a.IP
	c.Addr = strings.Split(a.IP, "/")[0]
	c.bed.logf("testbed: %s: attached %s %s", c.Host, c.Name, c.IP)
	return nil
}

// ParseAttachOutput reads what `weavewg attach --json` printed: the JSON
// document after any progress lines (on stderr, which CLIErr merges in)
// the attach printed while it waited for address space.
func ParseAttachOutput(out string) (api.Attachment, error) {
	var a api.Attachment
	i := strings.Index(out, "{")
	if i < 0 {
		return a, fmt.Errorf("no JSON in %q", out)
	}
	return a, json.Unmarshal([]byte(out[i:]), &a)
}

// DetachErr is Detach returning the error.
func (c *Container) DetachErr() error {
	_, err := c.Host.CLIErr("detach", NetnsPath(c.Netns))
	return err
}

// AddContainersParallel makes n containers on each host in hs, with up to
// par attaches in flight per host, and returns them host by host in order
// of completion, with the first errors joined.
func (b *Bed) AddContainersParallel(n, par int, hs ...*Host) ([]*Container, error) {
	var (
		mu   sync.Mutex
		cs   []*Container
		errs []error
		wg   sync.WaitGroup
	)
	for _, h := range hs {
		sem := make(chan struct{}, max(par, 1))
		for i := 0; i < n; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := h.AddContainerErr("")
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if len(errs) < 5 {
						errs = append(errs, err)
					}
					return
				}
				cs = append(cs, c)
			}()
		}
	}
	wg.Wait()
	return cs, errors.Join(errs...)
}

// PingAll sends ICMP echo requests from namespace ns to every address in
// addrs (a raw socket, no process per ping), resending every half second to
// those that have not answered, until all have or timeout passes. It
// returns the addresses that never answered.
func PingAll(ns string, addrs []string, timeout time.Duration) ([]string, error) {
	if len(addrs) > 65535 {
		return nil, errors.New("PingAll: too many addresses")
	}
	var pc net.PacketConn
	if err := InNetns(ns, func() (err error) {
		pc, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket in %s: %w", ns, err)
	}
	defer pc.Close()
	dst := make([]*net.IPAddr, len(addrs))
	for i, a := range addrs {
		ip := net.ParseIP(a)
		if ip == nil {
			return nil, fmt.Errorf("PingAll: bad address %q", a)
		}
		dst[i] = &net.IPAddr{IP: ip}
	}
	id := uint16(os.Getpid()) ^ uint16(time.Now().UnixNano())
	var mu sync.Mutex
	answered := make([]bool, len(addrs))
	left := len(addrs)
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			if len(p) < 8 || p[0] != 0 || p[1] != 0 || binary.BigEndian.Uint16(p[4:]) != id {
				continue
			}
			seq := int(binary.BigEndian.Uint16(p[6:]))
			if seq >= len(addrs) || !from.(*net.IPAddr).IP.Equal(dst[seq].IP) {
				continue
			}
			mu.Lock()
			if !answered[seq] {
				answered[seq] = true
				left--
				if left == 0 {
					close(done)
				}
			}
			mu.Unlock()
		}
	}()
	deadline := time.Now().Add(timeout)
	for {
		mu.Lock()
		var todo []int
		for i, ok := range answered {
			if !ok {
				todo = append(todo, i)
			}
		}
		mu.Unlock()
		if len(todo) == 0 {
			return nil, nil
		}
		if time.Now().After(deadline) {
			var missing []string
			for _, i := range todo {
				missing = append(missing, addrs[i])
			}
			return missing, nil
		}
		for _, i := range todo {
			pc.WriteTo(echoRequest(id, uint16(i)), dst[i])
		}
		select {
		case <-done:
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func echoRequest(id, seq uint16) []byte {
	p := make([]byte, 16)
	p[0] = 8 // echo request
	binary.BigEndian.PutUint16(p[4:], id)
	binary.BigEndian.PutUint16(p[6:], seq)
	copy(p[8:], "weavewg!")
	var sum uint32
	for i := 0; i < len(p); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[2:], ^uint16(sum))
	return p
}

// HostContainers returns the containers of cs that live on one of hs.
func HostContainers(cs []*Container, hs ...*Host) []*Container {
	var out []*Container
	for _, c := range cs {
		for _, h := range hs {
			if c.Host == h {
				out = append(out, c)
				break
			}
		}
	}
	return out
}
