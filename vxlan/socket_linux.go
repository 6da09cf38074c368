package vxlan

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

var errSocketClosed = errors.New("vxlan: probe socket closed")

// packetSocket is an AF_PACKET socket on the VXLAN device for probe frames
// (EtherType 0x88B5 only). The kernel builds the Ethernet header; frames
// sent to a peer's MAC are encapsulated by the device like any other.
type packetSocket struct {
	f     *os.File
	rc    syscall.RawConn
	index int
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openPacketSocket(index int) (*packetSocket, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(EtherType)))
	if err != nil {
		return nil, fmt.Errorf("vxlan: probe socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(EtherType), Ifindex: index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vxlan: binding the probe socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "vxlan-probe")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vxlan: probe socket: %w", err)
	}
	return &packetSocket{f: f, rc: rc, index: index}, nil
}

func (s *packetSocket) close() { s.f.Close() }

func (s *packetSocket) send(b []byte, dst net.HardwareAddr) error {
	sa := &unix.SockaddrLinklayer{Protocol: htons(EtherType), Ifindex: s.index, Halen: 6}
	copy(sa.Addr[:], dst)
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, sa)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

// recv reads one frame addressed to this host and returns its source MAC.
// Frames for other hosts (the device sees none, but a packet socket may be
// shown them) are skipped.
func (s *packetSocket) recv(b []byte) (int, net.HardwareAddr, error) {
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), b, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			// The poller fails only once the file is closed (with
			// internal/poll's "use of closed file", not os.ErrClosed).
			return 0, nil, fmt.Errorf("%w: %v", errSocketClosed, err)
		}
		if rerr != nil {
			return 0, nil, rerr
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype != unix.PACKET_HOST {
			continue
		}
		return n, net.HardwareAddr(append([]byte(nil), ll.Addr[:ll.Halen]...)), nil
	}
}
