package testbed

import (
	"fmt"
	"net"
	"time"

	mdns "github.com/miekg/dns"
)

// DNSExchange sends m to server (IP:PORT) from inside namespace ns over
// network ("udp" or "tcp") and returns the answer, or an error on timeout.
func DNSExchange(ns, network, server string, m *mdns.Msg, timeout time.Duration) (*mdns.Msg, error) {
	var conn net.Conn
	if err := InNetns(ns, func() (err error) {
		conn, err = net.DialTimeout(network+"4", server, timeout)
		return err
	}); err != nil {
		return nil, err
	}
	defer conn.Close()
	co := &mdns.Conn{Conn: conn, UDPSize: 4096}
	co.SetDeadline(time.Now().Add(timeout))
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		if r.Id == m.Id {
			return r, nil
		}
	}
}

// DNSQuery asks server from namespace ns for name's records of type qtype
// over UDP (a fresh socket each time).
func DNSQuery(ns, server, name string, qtype uint16, timeout time.Duration) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	return DNSExchange(ns, "udp", server, m, timeout)
}

// DNSServe runs a DNS server with handler h on addr (IP:PORT) inside
// namespace ns, UDP and TCP; it stops at cleanup.
func (b *Bed) DNSServe(ns, addr string, h mdns.Handler) error {
	var (
		pc net.PacketConn
		l  net.Listener
	)
	if err := InNetns(ns, func() (err error) {
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		l, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		if pc != nil {
			pc.Close()
		}
		return fmt.Errorf("dns server in %s on %s: %w", ns, addr, err)
	}
	udp := &mdns.Server{PacketConn: pc, Handler: h}
	tcp := &mdns.Server{Listener: l, Handler: h}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	b.tb.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
	})
	return nil
}
