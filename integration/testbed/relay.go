package testbed

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/types/api"
)

// PathTo is how st's daemon sends to the peer nicknamed nick: "direct",
// "relayed via NICK", or "" when it has no WireGuard row for it.
func PathTo(st *api.Status, nick string) string {
	for _, c := range ConnsTo(st, nick) {
		switch {
		case c.Via != "":
			return "relayed via " + c.Via
		case c.Direct:
			return "direct"
		}
	}
	return ""
}

// WaitPath polls h's status until its path to peer nick is want, and returns
// how long that took.
func (h *Host) WaitPath(nick, want string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var last string
	err := Poll(h.bed.tb, timeout, fmt.Sprintf("%s: path to %s is %q", h, nick, want), func() error {
		st, err := h.StatusErr()
		if err != nil {
			return err
		}
		if last = PathTo(st, nick); last != want {
			return fmt.Errorf("path is %q", last)
		}
		return nil
	})
	return time.Since(start), err
}

// Counter reads one counter from h's status.
func (h *Host) Counter(name string) uint64 {
	h.bed.tb.Helper()
	return h.Status().Counters[name]
}

// SendRawUDP sends one UDP datagram from inside namespace ns with any source
// address and port (a raw IPv4 socket), e.g. a member's own port 6783 that
// its daemon holds.
func SendRawUDP(ns string, src, dst netip.AddrPort, payload []byte) error {
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45                                                // IPv4, 20-byte header
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))        // total length (the kernel fills it too)
	pkt[8], pkt[9] = 64, syscall.IPPROTO_UDP                     // TTL, protocol
	s4, d4 := src.Addr().As4(), dst.Addr().As4()                 //
	copy(pkt[12:16], s4[:])                                      // the kernel fills the checksum
	copy(pkt[16:20], d4[:])                                      //
	binary.BigEndian.PutUint16(pkt[20:], src.Port())             // UDP source port
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())             // destination port
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload))) // UDP length; checksum 0: none
	copy(pkt[28:], payload)
	return InNetns(ns, func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: d4})
	})
}

// LongPing is a ping running in the background, for counting what it loses.
type LongPing struct {
	Interval time.Duration
	cmd      *exec.Cmd
	mu       sync.Mutex
	seqs     []int // icmp_seq of every reply, in arrival order
	done     chan struct{}
}

var seqRE = regexp.MustCompile(`icmp_seq=(\d+)`)

// StartPing pings addr from c every interval until Stop.
func (c *Container) StartPing(addr string, interval time.Duration) (*LongPing, error) {
	p := &LongPing{Interval: interval, done: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", c.Netns, "ping", "-n", "-W", "1",
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 2, 64), addr)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := seqRE.FindStringSubmatch(sc.Text()); m != nil {
				n, _ := strconv.Atoi(m[1])
				p.mu.Lock()
				p.seqs = append(p.seqs, n)
				p.mu.Unlock()
			}
		}
	}()
	return p, nil
}

// Replies is the number of replies so far.
func (p *LongPing) Replies() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seqs)
}

// Stop ends the ping and reports the replies received and the longest run
// of lost replies between two received ones, as time.
func (p *LongPing) Stop() (replies int, longestGap time.Duration) {
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := -1
	for _, s := range p.seqs {
		if prev >= 0 && s > prev+1 {
			if g := time.Duration(s-prev-1) * p.Interval; g > longestGap {
				longestGap = g
			}
		}
		if s > prev {
			prev = s
		}
	}
	return len(p.seqs), longestGap
}
