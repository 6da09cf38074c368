package main

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// The reference data plane: the stock wireguard-go binary of the module
// version weavewg is built against, one per host namespace, configured over
// its UAPI socket. Made at wireguard-go's default MTU 1420, then set to
// weavewg's TUN MTU once weavewg runs (setRefMTU), addresses in 203.0.113.0/24: outside
// the overlay range, which weavewg refuses to share with a local
// interface's subnet (daemon/config.go checkRangeFree); checkRefRoute makes
// sure the reference traffic really takes the reference interface.
const (
	refPort   = 51820
	refSubnet = "203.0.113."
	refMTU    = 1420
	uapiDir   = "/var/run/wireguard"
)

// buildWireguardGo builds golang.zx2c4.com/wireguard (its main package is
// the module root) at the version in go.mod into dir.
func buildWireguardGo(dir string) (path, version string, err error) {
	root, err := testbed.ModuleRoot()
	if err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, "wireguard-go")
	cmd := exec.Command("go", "build", "-o", path, "golang.zx2c4.com/wireguard")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build golang.zx2c4.com/wireguard: %v\n%s", err, out)
	}
	v, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "golang.zx2c4.com/wireguard").Output()
	if err == nil {
		version = strings.TrimSpace(string(v))
	}
	return path, version, nil
}

// refNode is one wireguard-go process in a host namespace.
type refNode struct {
	Netns   string
	Iface   string
	Addr    string // address on the wireguard-go interface, 203.0.113.N
	CNetns  string // with containers: the container's namespace (path e)
	CAddr   string // and its address, 203.0.113.100+N
	Under   string // underlay address
	Socket  string
	priv    []byte
	pub     []byte
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// Pid of the wireguard-go process.
func (n *refNode) Pid() int { return n.cmd.Process.Pid }

// startRef starts wireguard-go in each host's namespace, gives each its
// address and MTU, and makes every pair peers with a common preshared key
// (weavewg uses one too: the network secret).
//
// With containers, each host also gets what weavewg gives a container
// (path e, the like-for-like of c): a bridge with proxy ARP (delay 0), a
// veth pair at the tunnel's MTU into a namespace of its own with address
// 203.0.113.100+N/24, a /32 route to it via the bridge, and the address
// added to the host's AllowedIPs at its peers.
func startRef(tb *benchTB, bed *testbed.Bed, bin string, hosts []*testbed.Host, containers bool) []*refNode {
	psk := make([]byte, 32)
	rand.Read(psk)
	var nodes []*refNode
	for _, h := range hosts {
		key, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			tb.Fatalf("bench: key: %v", err)
		}
		// Interface names must be unique on the machine: the UAPI sockets of
		// every namespace share /var/run/wireguard.
		iface := fmt.Sprintf("wb%d%s%d", os.Getpid(), bed.Prefix[len(bed.Prefix)-3:len(bed.Prefix)-1], h.Index)
		if len(iface) > 15 {
			iface = iface[len(iface)-15:]
		}
		n := &refNode{
			Netns:   h.Netns,
			Iface:   iface,
			Addr:    fmt.Sprintf("%s%d", refSubnet, h.Index),
			Under:   h.UnderlayIP,
			Socket:  filepath.Join(uapiDir, iface+".sock"),
			priv:    key.Bytes(),
			pub:     key.PublicKey().Bytes(),
			logPath: bed.Path("wireguard-go-" + h.Name + ".log"),
		}
		if containers {
			n.CNetns = h.Netns + "e"
			n.CAddr = fmt.Sprintf("%s%d", refSubnet, 100+h.Index)
		}
		n.start(tb, bin)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "private_key=%s\nlisten_port=%d\nreplace_peers=true\n", hex.EncodeToString(n.priv), refPort)
		for _, o := range nodes {
			if o == n {
				continue
			}
			fmt.Fprintf(&cfg, "public_key=%s\npreshared_key=%s\nendpoint=%s:%d\nreplace_allowed_ips=true\nallowed_ip=%s/32\n",
				hex.EncodeToString(o.pub), hex.EncodeToString(psk), o.Under, refPort, o.Addr)
			if o.CAddr != "" {
				fmt.Fprintf(&cfg, "allowed_ip=%s/32\n", o.CAddr)
			}
		}
		if err := uapiSet(n.Socket, cfg.String()); err != nil {
			tb.Fatalf("bench: configure %s: %v", n.Iface, err)
		}
		bed.MustIP(n.Netns, "addr", "add", n.Addr+"/24", "dev", n.Iface)
		bed.MustIP(n.Netns, "link", "set", n.Iface, "mtu", strconv.Itoa(refMTU), "up")
		tb.Logf("bench: wireguard-go %s in %s: %s/24 mtu %d, listening on %s:%d", n.Iface, n.Netns, n.Addr, refMTU, n.Under, refPort)
		if n.CNetns != "" {
			addRefContainer(tb, bed, n)
		}
	}
	return nodes
}

// setRefMTU sets n's interface, and its container's veth and bridge, to mtu.
func setRefMTU(bed *testbed.Bed, n *refNode, mtu int) {
	m := strconv.Itoa(mtu)
	bed.MustIP(n.Netns, "link", "set", n.Iface, "mtu", m)
	if n.CNetns != "" {
		setBridgedContainerMTU(bed, n.Netns, n.CNetns, mtu)
	}
}

// addRefContainer puts n's container behind a bridge in n's namespace, as
// weavewg attaches one (hostnet/attach_linux.go): flat /24 in the
// container, proxy ARP on the bridge, host routes into the tunnel.
func addRefContainer(tb *benchTB, bed *testbed.Bed, n *refNode) {
	addBridgedContainer(tb, bed, n.Netns, n.CNetns, n.CAddr, refMTU)
	tb.Logf("bench: wireguard-go container %s: %s/24 behind bridge %s", n.CNetns, n.CAddr, refBridge)
}

// The devices of a baseline's container (paths e and w).
const refBridge, refHostVeth, refCtrVeth = "wbbr", "wbveth", "ethe0"

// addBridgedContainer makes what weavewg makes for a container, for a
// baseline: in hostNS a bridge with proxy ARP (delay 0) and forwarding
// on, a veth pair at mtu into the new namespace ctrNS, where ctrAddr/24 is
// the container's address, and a /32 route to it via the bridge.
func addBridgedContainer(tb *benchTB, bed *testbed.Bed, hostNS, ctrNS, ctrAddr string, mtu int) {
	if err := bed.NewNetnsFast(ctrNS); err != nil {
		tb.Fatalf("bench: %v", err)
	}
	const br, host, ctr = refBridge, refHostVeth, refCtrVeth
	m := strconv.Itoa(mtu)
	bed.MustIP(hostNS, "link", "add", br, "type", "bridge")
	bed.MustIP(hostNS, "link", "set", br, "mtu", m, "up")
	bed.MustIP(hostNS, "link", "add", host, "mtu", m, "type", "veth", "peer", "name", ctr, "mtu", m, "netns", ctrNS)
	bed.MustIP(hostNS, "link", "set", host, "master", br, "up")
	bed.MustIP(ctrNS, "addr", "add", ctrAddr+"/24", "dev", ctr)
	bed.MustIP(ctrNS, "link", "set", ctr, "up")
	bed.MustIP(hostNS, "route", "add", ctrAddr+"/32", "dev", br)
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf." + br + ".proxy_arp=1", "net.ipv4.neigh." + br + ".proxy_delay=0"} {
		if out, err := exec.Command("ip", "netns", "exec", hostNS, "sysctl", "-q", "-w", kv).CombinedOutput(); err != nil {
			tb.Fatalf("bench: sysctl %s in %s: %v: %s", kv, hostNS, err, out)
		}
	}
}

// setBridgedContainerMTU sets the baseline container's bridge and veth
// pair to mtu.
func setBridgedContainerMTU(bed *testbed.Bed, hostNS, ctrNS string, mtu int) {
	m := strconv.Itoa(mtu)
	bed.MustIP(hostNS, "link", "set", refHostVeth, "mtu", m)
	bed.MustIP(hostNS, "link", "set", refBridge, "mtu", m)
	bed.MustIP(ctrNS, "link", "set", refCtrVeth, "mtu", m)
}

func (n *refNode) start(tb *benchTB, bin string) {
	logf, err := os.Create(n.logPath)
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.Netns, bin, "-f", n.Iface)
	cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("bench: wireguard-go: %v", err)
	}
	n.cmd = cmd
	n.done = make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(n.done) }()
	// Registered after the host, so it runs before the namespace goes.
	tb.Cleanup(n.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-n.done:
			data, _ := os.ReadFile(n.logPath)
			tb.Fatalf("bench: wireguard-go %s exited: %s", n.Iface, firstLines(string(data), 5))
		default:
		}
		c, err := net.Dial("unix", n.Socket)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("bench: wireguard-go UAPI socket %s: %v", n.Socket, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *refNode) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	syscall.Kill(n.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
	os.Remove(n.Socket)
}

// uapiSet sends one set operation to a wireguard-go UAPI socket.
func uapiSet(socket, cfg string) error {
	_, err := uapi(socket, "set=1\n"+cfg+"\n")
	return err
}

// uapiGet returns the key=value lines of a get operation.
func uapiGet(socket string) ([]string, error) {
	return uapi(socket, "get=1\n\n")
}

func uapi(socket, req string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break
		}
		if v, ok := strings.CutPrefix(line, "errno="); ok {
			if v != "0" {
				return lines, fmt.Errorf("UAPI errno=%s", v)
			}
			return lines, nil
		}
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		return lines, err
	}
	return lines, errors.New("UAPI: no errno in the answer")
}

// refBytes sums rx_bytes and tx_bytes over the peers of a node, to show the
// reference traffic really went through wireguard-go.
func refBytes(n *refNode) (rx, tx uint64, err error) {
	lines, err := uapiGet(n.Socket)
	if err != nil {
		return 0, 0, err
	}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "=")
		x, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "rx_bytes":
			rx += x
		case "tx_bytes":
			tx += x
		}
	}
	return rx, tx, nil
}

// checkRefRoute fails unless the kernel of n's namespace sends traffic for
// the peer's address to n's own wireguard-go interface (a weavewg route to
// an address it allocated could otherwise capture it).
func checkRefRoute(n, peer *refNode) error {
	out, err := exec.Command("ip", "-n", n.Netns, "-o", "route", "get", peer.Addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip route get %s in %s: %v: %s", peer.Addr, n.Netns, err, out)
	}
	if !strings.Contains(" "+string(out)+" ", " dev "+n.Iface+" ") {
		return fmt.Errorf("in %s, %s is routed %q, not via %s", n.Netns, peer.Addr, strings.TrimSpace(string(out)), n.Iface)
	}
	return nil
}
