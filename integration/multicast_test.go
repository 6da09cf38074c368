package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// mcastPort is where replicated datagrams go on a host's overlay address
// (--port 6783 + 3).
const mcastPort = "6786"

// receiver is a socat in a container appending every datagram it gets on a
// UDP port (joined to a group if one is given) to a file.
type receiver struct {
	c      *testbed.Container
	path   string
	cancel context.CancelFunc
	cmd    *exec.Cmd
}

func startReceiver(t *testing.T, b *testbed.Bed, c *testbed.Container, port int, group string) *receiver {
	t.Helper()
	r := &receiver{c: c, path: b.Path(fmt.Sprintf("%s-%d-%s.recv", c.Name, port, group))}
	spec := fmt.Sprintf("UDP4-RECV:%d,reuseaddr", port)
	if group != "" {
		spec += ",ip-add-membership=" + group + ":ethwe0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.cmd = exec.CommandContext(ctx, "ip", "netns", "exec", c.Netns, "socat", "-u", spec, "OPEN:"+r.path+",creat,append")
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("socat in %s: %v", c, err)
	}
	t.Cleanup(r.stop)
	return r
}

// stop ends the receiver: closing its socket leaves the group.
func (r *receiver) stop() {
	if r.cancel != nil {
		r.cancel()
		r.cmd.Wait()
		r.cancel = nil
	}
}

// lines counts the datagrams received whose text starts with prefix.
func (r *receiver) lines(prefix string) int {
	b, _ := os.ReadFile(r.path)
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// send sends one datagram per text from c with socat (one process per
// datagram, so none is merged with the next).
func send(t *testing.T, c *testbed.Container, dst string, texts ...string) {
	t.Helper()
	sendTTL(t, c, dst, 8, texts...)
}

// sendTTL is send with the multicast TTL given.
func sendTTL(t *testing.T, c *testbed.Container, dst string, ttl int, texts ...string) {
	t.Helper()
	opt := fmt.Sprintf(",ip-multicast-ttl=%d", ttl)
	if !strings.HasPrefix(dst, "2") || strings.HasPrefix(dst, "255.") {
		opt = ",broadcast"
	}
	var script strings.Builder
	for _, s := range texts {
		fmt.Fprintf(&script, "echo %q | socat -u - UDP4-DATAGRAM:%s%s || exit 1\n", s, dst, opt)
	}
	if out, err := c.Exec("sh", "-c", script.String()); err != nil {
		t.Fatalf("sending from %s to %s: %v %s", c, dst, err, out)
	}
}

func numbered(prefix string, n int) []string {
	var s []string
	for i := 1; i <= n; i++ {
		s = append(s, fmt.Sprintf("%s %d", prefix, i))
	}
	return s
}

// tunCapture counts replicated datagrams (UDP to the replication port)
// seen on a host's TUN: packets, and the test datagrams inside them by
// their text. The two differ: wireguard-go writes a batch of one flow's
// UDP datagrams of one size into the TUN as one GSO packet (UDP GRO, on
// kernels with TUN_F_USO4), which tcpdump shows as one packet, and the
// kernel splits only after the capture point; a loaded host batches more.
type tunCapture struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	count   int
	markers map[string]bool
	done    chan struct{}
}

// copyMarker finds a test datagram's text ("copy N", see numbered) in
// tcpdump -A's print of a replicated packet: the inner datagram's payload
// ends in the newline echo adds, so the text ends a line.
var copyMarker = regexp.MustCompile(`copy [0-9]+$`)

func startTunCapture(t *testing.T, h *testbed.Host) *tunCapture {
	t.Helper()
	c := &tunCapture{done: make(chan struct{}), markers: map[string]bool{}}
	c.cmd = exec.Command("ip", "netns", "exec", h.Netns, "tcpdump", "-i", "weavewg0", "-n", "-l", "-A", "--immediate-mode", "udp port "+mcastPort)
	out, _ := c.cmd.StdoutPipe()
	errp, _ := c.cmd.StderrPipe()
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("tcpdump on %s: %v", h, err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errp)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "listening on") {
				once = true
				close(ready)
			}
		}
		if !once {
			close(ready)
		}
	}()
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			l := sc.Text()
			c.mu.Lock()
			if tcpdumpHeader.MatchString(l) {
				c.count++
			} else if m := copyMarker.FindString(l); m != "" {
				c.markers[m] = true
			}
			c.mu.Unlock()
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpdump on %s did not start", h)
	}
	return c
}

// tcpdumpHeader is the first line tcpdump prints for a packet (the rest,
// with -A, is its bytes as text).
var tcpdumpHeader = regexp.MustCompile(`^[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]+ IP `)

// seen is how many packets the capture showed.
func (c *tunCapture) seen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// datagrams is how many distinct test datagrams ("copy N") the packets
// carried.
func (c *tunCapture) datagrams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.markers)
}

// waitReceived waits until r has n datagrams starting with prefix, then
// checks it has no more (a loop or a duplicate would add some).
func waitReceived(t *testing.T, r *receiver, prefix string, n int) {
	t.Helper()
	testbed.Eventually(t, 30*time.Second, fmt.Sprintf("%s receives %d %q", r.c, n, prefix), func() error {
		if got := r.lines(prefix); got < n {
			return fmt.Errorf("%d received", got)
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond)
	if got := r.lines(prefix); got != n {
		t.Errorf("%s received %d datagrams %q, want %d", r.c, got, prefix, n)
	}
}

// warmUp sends datagrams to dst until every receiver has one: memberships
// have been gossiped and the WireGuard sessions are up.
func warmUp(t *testing.T, from *testbed.Container, dst string, rs ...*receiver) {
	t.Helper()
	testbed.Eventually(t, 60*time.Second, "the first datagrams to "+dst+" arrive", func() error {
		send(t, from, dst, "warm")
		for _, r := range rs {
			if r.lines("warm") == 0 {
				return fmt.Errorf("%s has none; sender's %s, receiver's %s", r.c, mcastCounters(from.Host), mcastCounters(r.c.Host))
			}
		}
		return nil
	})
}

// TestMulticastAcrossHosts is issue 15's multicast acceptance on four
// hosts: receivers in containers on h1 and h3 join 239.1.1.1, a container
// on h2 sends 100 datagrams, both get exactly 100, h4 (a container, no
// member) sees none on its TUN; a receiver that leaves stops the copies to
// its host; a broadcast to the subnet's broadcast address (and to
// 255.255.255.255) reaches every container of the subnet.
func TestMulticastAcrossHosts(t *testing.T) {
	needTool(t, "socat", "tcpdump")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(4)
	b.WaitMesh(60*time.Second, hs...)
	var cs []*testbed.Container
	for _, h := range hs {
		cs = append(cs, h.AddContainer())
	}
	r1 := startReceiver(t, b, cs[0], 5000, "239.1.1.1")
	r3 := startReceiver(t, b, cs[2], 5000, "239.1.1.1")
	warmUp(t, cs[1], "239.1.1.1:5000", r1, r3)

	// Every host shows who has members (status peers).
	for _, h := range hs {
		st := h.Status()
		for i, o := range hs {
			want := ""
			if i == 0 || i == 2 {
				want = "239.1.1.1"
			}
			if p := testbed.PeerByNick(st, o.Name); p == nil || strings.Join(p.MulticastGroups, " ") != want {
				t.Errorf("%s's status: %s's groups %v, want %q", h, o, p, want)
			}
		}
	}
	tun1, tun4 := startTunCapture(t, hs[0]), startTunCapture(t, hs[3])
	before := hs[1].Status().Counters
	send(t, cs[1], "239.1.1.1:5000", numbered("copy", 100)...)
	waitReceived(t, r1, "copy ", 100)
	waitReceived(t, r3, "copy ", 100)
	after := hs[1].Status().Counters
	// Head-end replication: one copy per host with members, 2 per datagram.
	if got := after["mcast_tx_replicated"] - before["mcast_tx_replicated"]; got != 200 {
		t.Errorf("h2 sent %d copies for 100 datagrams to 2 member hosts, want 200", got)
	}
	// The copies cross h1's TUN, every one of them (tcpdump's output may
	// lag the receivers)...
	testbed.Eventually(t, 10*time.Second, "h1's TUN shows the 100 datagrams", func() error {
		if n := tun1.datagrams(); n != 100 {
			return fmt.Errorf("%d of 100 seen, in %d packets", n, tun1.seen())
		}
		return nil
	})
	time.Sleep(time.Second)
	t.Logf("h1's TUN showed the 100 datagrams in %d packets (fewer where wireguard-go coalesced a batch), h4's %d packets", tun1.seen(), tun4.seen())
	// ...and shows nothing on h4's.
	if n := tun4.seen(); n != 0 {
		t.Errorf("h4 (no member) saw %d replicated datagrams on its TUN", n)
	}
	c4 := hs[3].Status().Counters
	for _, name := range []string{"mcast_rx_delivered", "mcast_rx_dropped_no_members", "mcast_rx_dropped_unknown_peer"} {
		if c4[name] != 0 {
			t.Errorf("h4: %s = %d, want 0", name, c4[name])
		}
	}
	t.Logf("h2 counters: tx_datagrams %d, tx_replicated %d; h1 rx_delivered %d; h3 rx_delivered %d",
		after["mcast_tx_datagrams"], after["mcast_tx_replicated"], hs[0].Counter("mcast_rx_delivered"), hs[2].Counter("mcast_rx_delivered"))

	// TTL 1 stays on its host (the hosts route between containers' links),
	// and so does link-local multicast (no --multicast-link-local): none
	// of these reach h1, the datagram after them does.
	rll := startReceiver(t, b, cs[0], 5353, "224.0.0.251")
	before = hs[1].Status().Counters
	sendTTL(t, cs[1], "239.1.1.1:5000", 1, numbered("ttl1", 5)...)
	sendTTL(t, cs[1], "224.0.0.251:5353", 255, numbered("mdns", 5)...)
	send(t, cs[1], "239.1.1.1:5000", "marker")
	waitReceived(t, r1, "marker", 1)
	if n := r1.lines("ttl1"); n != 0 {
		t.Errorf("h1 received %d datagrams sent with TTL 1", n)
	}
	if n := rll.lines("mdns"); n != 0 {
		t.Errorf("h1 received %d link-local datagrams", n)
	}
	after = hs[1].Status().Counters
	for name, want := range map[string]uint64{"mcast_tx_dropped_ttl": 5, "mcast_tx_link_local": 5} {
		if got := after[name] - before[name]; got != want {
			t.Errorf("h2: %s went up by %d, want %d", name, got, want)
		}
	}

	// The receiver on h3 leaves; h2 keeps sending. Measured: from the leave
	// to the last copy h3 gets.
	stopSending := make(chan struct{})
	var sender sync.WaitGroup
	sender.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stopSending:
				return
			default:
			}
			c := exec.Command("ip", "netns", "exec", cs[1].Netns, "sh", "-c", fmt.Sprintf("echo 'after %d' | socat -u - UDP4-DATAGRAM:239.1.1.1:5000,ip-multicast-ttl=8", i))
			c.Run()
			time.Sleep(20 * time.Millisecond)
		}
	})
	defer func() {
		select {
		case <-stopSending:
		default:
			close(stopSending)
		}
		sender.Wait()
	}()
	testbed.Eventually(t, 20*time.Second, "h1 and h3 receive the continuous datagrams", func() error {
		if r1.lines("after") == 0 || r3.lines("after") == 0 {
			return fmt.Errorf("h1 %d, h3 %d", r1.lines("after"), r3.lines("after"))
		}
		return nil
	})
	rx := func() uint64 {
		c := hs[2].Status().Counters
		return c["mcast_rx_delivered"] + c["mcast_rx_dropped_no_members"]
	}
	last := rx()
	left := time.Now()
	r3.stop()
	stopped := time.Since(left)
	// When h2 learns it: its status shows h3 without groups.
	var learned time.Duration
	for {
		if p := testbed.PeerByNick(hs[1].Status(), "h3"); p != nil && len(p.MulticastGroups) == 0 {
			learned = time.Since(left)
			break
		}
		if time.Since(left) > 60*time.Second {
			t.Fatal("h2 still lists h3's group 60 s after its only member left")
		}
		time.Sleep(10 * time.Millisecond)
	}
	lastChange := left
	for time.Since(lastChange) < 3*time.Second && time.Since(left) < 60*time.Second {
		time.Sleep(50 * time.Millisecond)
		if n := rx(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	if time.Since(lastChange) < 3*time.Second {
		t.Fatalf("h2 still replicates to h3 60 s after its only member left")
	}
	t.Logf("h3's member left: closing the receiver took %.3fs; h2 knew %.3fs after it began; the last copy reached h3 %.3fs after it began (0: none after)",
		stopped.Seconds(), learned.Seconds(), lastChange.Sub(left).Seconds())
	n1 := r1.lines("after")
	time.Sleep(time.Second)
	if r1.lines("after") <= n1 {
		t.Errorf("h1's receiver stopped receiving when h3's left")
	}
	close(stopSending)
	sender.Wait()

	// Broadcast to the subnet's broadcast address and to 255.255.255.255
	// reaches every container of the subnet, the sender's host included.
	extra := hs[1].AddContainer()
	var rs []*receiver
	for _, c := range []*testbed.Container{cs[0], extra, cs[2], cs[3]} {
		rs = append(rs, startReceiver(t, b, c, 5001, ""))
	}
	warmUp(t, cs[1], "10.47.255.255:5001", rs...)
	send(t, cs[1], "10.47.255.255:5001", numbered("b", 10)...)
	send(t, cs[1], "255.255.255.255:5001", numbered("l", 10)...)
	for _, r := range rs {
		waitReceived(t, r, "b ", 10)
		waitReceived(t, r, "l ", 10)
	}
}

// TestMulticastRelayed: the same through a relayed pair. h1 and h3 cannot
// reach each other on the underlay; h2 relays. A receiver on h1 gets every
// datagram a container on h3 sends to its group; h2, which only relays
// ciphertext and has no member, delivers none.
func TestMulticastRelayed(t *testing.T) {
	needTool(t, "socat", "nft")
	b, hs := lineBed(t, 3)
	ca, cb, cc := hs[0].AddContainer(), hs[1].AddContainer(), hs[2].AddContainer()
	if err := ca.PingEventually(cc.Addr, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := hs[2].WaitPath("h1", "relayed via h2", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r := startReceiver(t, b, ca, 5000, "239.1.1.1")
	rb := startReceiver(t, b, cb, 5000, "239.2.2.2") // h2's container is in another group
	warmUp(t, cc, "239.1.1.1:5000", r)
	send(t, cc, "239.1.1.1:5000", numbered("m", 100)...)
	waitReceived(t, r, "m ", 100)
	if n := rb.lines(""); n != 0 {
		t.Errorf("h2's container (another group) received %d datagrams", n)
	}
	c2 := hs[1].Status().Counters
	if c2["mcast_rx_delivered"] != 0 || c2["mcast_rx_dropped_no_members"] != 0 {
		t.Errorf("h2 (relay, no member): rx_delivered %d, rx_dropped_no_members %d, want 0", c2["mcast_rx_delivered"], c2["mcast_rx_dropped_no_members"])
	}
	if _, err := hs[2].WaitPath("h1", "relayed via h2", time.Second); err != nil {
		t.Errorf("h3's path to h1 is no longer relayed: %v", err)
	}
}

// mcastCounters are h's non-zero mcast_ counters, for failure messages.
func mcastCounters(h *testbed.Host) string {
	st, err := h.StatusErr()
	if err != nil {
		return err.Error()
	}
	var out []string
	for k, v := range st.Counters {
		if strings.HasPrefix(k, "mcast_") && v != 0 {
			out = append(out, fmt.Sprintf("%s=%d", k, v))
		}
	}
	slices.Sort(out)
	return h.Name + " {" + strings.Join(out, " ") + "}"
}
