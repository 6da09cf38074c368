package testbed

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Capture is a tcpdump running on the underlay bridge.
type Capture struct {
	bed  *Bed
	Path string
	cmd  *exec.Cmd
	once sync.Once
	err  error
	errb *strings.Builder // tcpdump's stderr; read once errDone is closed
	// errDone is closed when tcpdump's stderr ends (it exited).
	errDone chan struct{}
}

// StartCapture runs tcpdump on the underlay bridge br0, writing full packets
// to a pcap file in the bed's directory, and returns once it is listening.
func (b *Bed) StartCapture(name string) *Capture {
	b.tb.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		b.tb.Fatalf("testbed: tcpdump not installed (make test installs it)")
	}
	c := &Capture{bed: b, Path: b.Path(name + ".pcap"), errb: &strings.Builder{}, errDone: make(chan struct{})}
	c.cmd = exec.Command("ip", "netns", "exec", b.Underlay,
		"tcpdump", "-i", "br0", "-n", "-s", "0", "-B", "65536", "-U", "--immediate-mode", "-w", c.Path)
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	if err := c.cmd.Start(); err != nil {
		b.tb.Fatalf("testbed: tcpdump: %v", err)
	}
	b.tb.Cleanup(func() { c.Stop() })
	ready := make(chan struct{})
	go func() {
		defer close(c.errDone)
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			c.errb.WriteString(line + "\n")
			if !signalled && strings.Contains(line, "listening on") {
				signalled = true
				close(ready)
			}
		}
		if !signalled {
			close(ready)
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		b.tb.Fatalf("testbed: tcpdump did not start listening within 10s")
	}
	// tcpdump says "listening" just before the capture is attached; a moment
	// more keeps the first packets of the test from being missed.
	time.Sleep(200 * time.Millisecond)
	return c
}

// Stop ends the capture and flushes the file; it is safe to call twice.
func (c *Capture) Stop() error {
	c.once.Do(func() {
		time.Sleep(200 * time.Millisecond) // let in-flight packets be written
		c.cmd.Process.Signal(syscall.SIGINT)
		// Wait reads no more of stderr once called: first the end of
		// stderr, where tcpdump prints its counts as it exits.
		select {
		case <-c.errDone:
		case <-time.After(5 * time.Second):
			c.cmd.Process.Kill()
			<-c.errDone
		}
		c.err = c.cmd.Wait()
		// tcpdump's own count, so a test that finds packets missing can
		// tell a drop in the capture from one on the wire.
		for _, l := range strings.Split(c.errb.String(), "\n") {
			if strings.Contains(l, "dropped by kernel") && !strings.HasPrefix(l, "0 ") {
				c.bed.tb.Logf("testbed: capture %s: tcpdump: %s", filepath.Base(c.Path), l)
			}
		}
	})
	return c.err
}

// Packet is the summary of one captured frame.
type Packet struct {
	EtherType uint16
	Proto     uint8 // IPv4 protocol, 0 if not IPv4
	Src, Dst  netip.Addr
	SPort     uint16 // TCP/UDP ports; 0 for others and for non-first fragments
	DPort     uint16
	Fragment  bool // a non-first IPv4 fragment
	Len       int
	// UDPHead is the first 4 bytes of a UDP payload (zero if shorter or
	// not UDP): enough to tell a WireGuard message type (1-4 then three
	// zero bytes) from relay frames, STUN and probes on the same port.
	UDPHead [4]byte
}

func (p Packet) String() string {
	switch {
	case p.EtherType == 0x0806:
		return "ARP"
	case p.EtherType != 0x0800:
		return fmt.Sprintf("ethertype 0x%04x len %d", p.EtherType, p.Len)
	case p.Fragment:
		return fmt.Sprintf("IPv4 proto %d fragment %s > %s len %d", p.Proto, p.Src, p.Dst, p.Len)
	case p.Proto == 6:
		return fmt.Sprintf("TCP %s:%d > %s:%d", p.Src, p.SPort, p.Dst, p.DPort)
	case p.Proto == 17:
		return fmt.Sprintf("UDP %s:%d > %s:%d", p.Src, p.SPort, p.Dst, p.DPort)
	default:
		return fmt.Sprintf("IPv4 proto %d %s > %s len %d", p.Proto, p.Src, p.Dst, p.Len)
	}
}

// Packets parses the capture file (classic pcap, Ethernet).
func (c *Capture) Packets() ([]Packet, error) {
	data, err := os.ReadFile(c.Path)
	if err != nil {
		return nil, err
	}
	return ParsePcap(data)
}

// Bytes returns the raw capture file.
func (c *Capture) Bytes() ([]byte, error) { return os.ReadFile(c.Path) }

// ParsePcap summarises every frame of a classic pcap file with Ethernet
// link type.
func ParsePcap(data []byte) ([]Packet, error) {
	if len(data) < 24 {
		return nil, errors.New("pcap: short file header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: bad magic %x", data[:4])
	}
	if lt := bo.Uint32(data[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet", lt)
	}
	var ps []Packet
	for off := 24; off < len(data); {
		if off+16 > len(data) {
			return ps, errors.New("pcap: truncated record header")
		}
		incl := int(bo.Uint32(data[off+8:]))
		orig := int(bo.Uint32(data[off+12:]))
		off += 16
		if off+incl > len(data) {
			return ps, errors.New("pcap: truncated record")
		}
		ps = append(ps, parseFrame(data[off:off+incl], orig))
		off += incl
	}
	return ps, nil
}

func parseFrame(f []byte, orig int) Packet {
	p := Packet{Len: orig}
	if len(f) < 14 {
		return p
	}
	p.EtherType = binary.BigEndian.Uint16(f[12:])
	ip := f[14:]
	if p.EtherType == 0x8100 && len(f) >= 18 { // VLAN tag: not expected, shown as is
		p.EtherType = binary.BigEndian.Uint16(f[16:])
		ip = f[18:]
	}
	if p.EtherType != 0x0800 || len(ip) < 20 {
		return p
	}
	ihl := int(ip[0]&0x0f) * 4
	p.Proto = ip[9]
	p.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	fragOff := binary.BigEndian.Uint16(ip[6:]) & 0x1fff
	if fragOff != 0 {
		p.Fragment = true
		return p
	}
	if (p.Proto == 6 || p.Proto == 17) && len(ip) >= ihl+4 {
		p.SPort = binary.BigEndian.Uint16(ip[ihl:])
		p.DPort = binary.BigEndian.Uint16(ip[ihl+2:])
	}
	if p.Proto == 17 && len(ip) >= ihl+12 {
		copy(p.UDPHead[:], ip[ihl+8:ihl+12])
	}
	return p
}
