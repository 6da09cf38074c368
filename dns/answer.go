package dns

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"
)

const (
	// ednsSize is the UDP payload size this server advertises and the most
	// it sends over UDP to an EDNS client (the DNS flag day 2020 value).
	ednsSize = 1232
	// maxUDPQuery is the read buffer for UDP queries.
	maxUDPQuery = 4096
)

// accept is the early check on a query's header (see
// mdns.DefaultMsgAcceptFunc); it counts what it rejects.
func (s *Server) accept(dh mdns.Header) mdns.MsgAcceptAction {
	switch a := mdns.DefaultMsgAcceptFunc(dh); a {
	case mdns.MsgAccept:
		return a
	case mdns.MsgRejectNotImplemented:
		s.c.notimp.Add(1)
		return a
	case mdns.MsgIgnore: // a response sent to us: never answer it
		s.c.malformed.Add(1)
		return a
	default:
		s.c.formerr.Add(1)
		return a
	}
}

// records returns the A and AAAA records of name rel, whose addresses
// are n, made at its first answer and kept with n (view.go): a change of
// one name makes that name's again, where a zone of every name's records
// was made again after every change.
func (s *Server) records(rel string, n *nameAddrs) *nameRRs {
	if r := n.rrs.Load(); r != nil {
		return r
	}
	fqdn := rel + "." + s.domain
	r := &nameRRs{}
	for _, a := range n.v4 {
		r.a = append(r.a, &mdns.A{
			Hdr: mdns.RR_Header{Name: fqdn, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: s.ttl},
			A:   net.IP(a.AsSlice()),
		})
	}
	for _, a := range n.v6 {
		r.aaaa = append(r.aaaa, &mdns.AAAA{
			Hdr:  mdns.RR_Header{Name: fqdn, Rrtype: mdns.TypeAAAA, Class: mdns.ClassINET, Ttl: s.ttl},
			AAAA: net.IP(a.AsSlice()),
		})
	}
	// Two first answers at once make two; either will do.
	n.rrs.CompareAndSwap(nil, r)
	return n.rrs.Load()
}

// reply is a pooled answer: the message, its answer slice and the packing
// buffer are reused across queries.
type reply struct {
	m   mdns.Msg
	buf []byte
}

// ServeDNS answers one query (mdns.Handler). Every path writes exactly one
// answer or, for a failed forward of a client that went away, none.
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	s.c.queries.Add(1)
	if !s.allowedClient(remoteAddr(w.RemoteAddr())) {
		// Not from the overlay: no answer at all, so the server is no
		// resolver (or reflector) for the underlay.
		s.c.droppedNotClient.Add(1)
		return
	}
	if len(req.Question) != 1 || req.Opcode != mdns.OpcodeQuery {
		// NOTIFY passes DefaultMsgAcceptFunc; we have no secondaries.
		s.c.notimp.Add(1)
		s.writeRcode(w, req, mdns.RcodeNotImplemented)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name) // no allocation when already lower case
	if rel, ok := s.inDomain(name); ok {
		s.answerLocal(w, req, q, rel)
		return
	}
	if rel, ok := s.singleLabel(name); ok {
		s.answerLocal(w, req, q, rel)
		return
	}
	if addr, ok := ptrAddr(name); ok && s.ownsPTR(addr) {
		s.answerPTR(w, req, q, addr)
		return
	}
	if q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		s.c.refused.Add(1)
		s.writeRcode(w, req, mdns.RcodeRefused)
		return
	}
	s.forward(w, req)
}

// inDomain returns the name relative to the domain ("" for the apex).
func (s *Server) inDomain(name string) (string, bool) {
	if name == s.domain {
		return "", true
	}
	if len(name) > len(s.domain) && strings.HasSuffix(name, s.domain) && name[len(name)-len(s.domain)-1] == '.' {
		return name[:len(name)-len(s.domain)-1], true
	}
	return "", false
}

// singleLabel returns, for a one-label name ("db.") that names an entry
// of the table, the entry's relative name. Such a query is answered as
// weaveDNS did, from the table: it comes from a container whose search
// domain is ours (`weavewg dns-args`), whose resolver tried db.weave.local
// first and, finding no record of the type (AAAA, say), asks for the bare
// name next. Forwarding that upstream would cost the client the upstream's
// timeouts, or leak the container's names, for a name we know. Names not
// in the table are forwarded as before.
func (s *Server) singleLabel(name string) (string, bool) {
	if len(name) < 2 || strings.IndexByte(name, '.') != len(name)-1 {
		return "", false
	}
	rel := name[:len(name)-1]
	if s.table.Snapshot().name(rel) == nil {
		return "", false
	}
	return rel, true
}

func (s *Server) ownsPTR(a netip.Addr) bool {
	if s.cfg.OverlayRange.IsValid() {
		return s.cfg.OverlayRange.Contains(a)
	}
	return len(s.table.Snapshot().ptrOf(a)) > 0
}

func (s *Server) answerLocal(w mdns.ResponseWriter, req *mdns.Msg, q mdns.Question, rel string) {
	switch {
	case q.Qclass != mdns.ClassINET:
		s.c.refused.Add(1)
		s.writeRcode(w, req, mdns.RcodeRefused)
		return
	case q.Qtype == mdns.TypeANY:
		// RFC 8482 lets a server decline ANY; we do, with REFUSED, rather
		// than pick one RRset: there is nothing to gain from ANY here.
		s.c.refused.Add(1)
		s.writeRcode(w, req, mdns.RcodeRefused)
		return
	case q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR:
		s.c.refused.Add(1)
		s.writeRcode(w, req, mdns.RcodeRefused)
		return
	}
	r := s.replies.Get().(*reply)
	defer s.replies.Put(r)
	m := s.startReply(r, req, q)
	if rel == "" {
		if q.Qtype == mdns.TypeSOA {
			m.Answer = append(m.Answer, s.soa)
			s.c.answeredLocal.Add(1)
		} else {
			m.Ns = append(m.Ns, s.soa)
			s.c.nodata.Add(1)
		}
		s.send(w, r, req)
		return
	}
	snap := s.table.Snapshot()
	n := snap.name(rel)
	var rrs []mdns.RR
	if n != nil {
		switch q.Qtype {
		case mdns.TypeA:
			rrs = s.records(rel, n).a
		case mdns.TypeAAAA:
			rrs = s.records(rel, n).aaaa
		}
	}
	switch {
	case len(rrs) > 0 && strings.IndexByte(q.Name, '.') == len(q.Name)-1:
		// A single-label question: the name's records carry the full
		// name, and resolvers want the name they asked for.
		for _, rr := range rrs {
			c := mdns.Copy(rr)
			c.Header().Name = q.Name
			m.Answer = append(m.Answer, c)
		}
		shuffle(m.Answer)
		s.c.answeredLocal.Add(1)
	case len(rrs) > 0:
		m.Answer = append(m.Answer, rrs...)
		shuffle(m.Answer)
		s.c.answeredLocal.Add(1)
	case n != nil || snap.ents[rel]:
		m.Ns = append(m.Ns, s.soa)
		s.c.nodata.Add(1)
	default:
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, s.soa)
		s.c.nxdomain.Add(1)
	}
	s.send(w, r, req)
}

func shuffle(rrs []mdns.RR) {
	if len(rrs) < 2 {
		return
	}
	rand.Shuffle(len(rrs), func(i, j int) { rrs[i], rrs[j] = rrs[j], rrs[i] })
}

func (s *Server) answerPTR(w mdns.ResponseWriter, req *mdns.Msg, q mdns.Question, addr netip.Addr) {
	if q.Qclass != mdns.ClassINET || q.Qtype == mdns.TypeANY || q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		s.c.refused.Add(1)
		s.writeRcode(w, req, mdns.RcodeRefused)
		return
	}
	r := s.replies.Get().(*reply)
	defer s.replies.Put(r)
	m := s.startReply(r, req, q)
	names := s.table.Snapshot().ptrOf(addr)
	switch {
	case len(names) > 0 && q.Qtype == mdns.TypePTR:
		for _, n := range names {
			m.Answer = append(m.Answer, &mdns.PTR{
				Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypePTR, Class: mdns.ClassINET, Ttl: s.ttl},
				Ptr: n + "." + s.domain,
			})
		}
		s.c.answeredLocal.Add(1)
	case len(names) > 0:
		m.Ns = append(m.Ns, s.soa)
		s.c.nodata.Add(1)
	default:
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, s.soa)
		s.c.nxdomain.Add(1)
	}
	s.send(w, r, req)
}

// ptrAddr parses an IPv4 reverse name "d.c.b.a.in-addr.arpa." (lower case).
func ptrAddr(name string) (netip.Addr, bool) {
	const suffix = ".in-addr.arpa."
	if !strings.HasSuffix(name, suffix) {
		return netip.Addr{}, false
	}
	parts := strings.Split(name[:len(name)-len(suffix)], ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		if len(p) == 0 || len(p) > 3 || (len(p) > 1 && p[0] == '0') {
			return netip.Addr{}, false
		}
		v := 0
		for k := 0; k < len(p); k++ {
			if p[k] < '0' || p[k] > '9' {
				return netip.Addr{}, false
			}
			v = v*10 + int(p[k]-'0')
		}
		if v > 255 {
			return netip.Addr{}, false
		}
		b[3-i] = byte(v) // labels are in reverse order
	}
	return netip.AddrFrom4(b), true
}

// startReply fills r.m as an authoritative reply to req, reusing r's slices.
func (s *Server) startReply(r *reply, req *mdns.Msg, q mdns.Question) *mdns.Msg {
	m := &r.m
	m.MsgHdr = mdns.MsgHdr{
		Id:                 req.Id,
		Response:           true,
		Opcode:             req.Opcode,
		Authoritative:      true,
		RecursionDesired:   req.RecursionDesired,
		RecursionAvailable: true,
		CheckingDisabled:   req.CheckingDisabled,
	}
	m.Compress = true
	m.Question = append(m.Question[:0], q)
	clear(m.Answer)
	m.Answer = m.Answer[:0]
	clear(m.Ns)
	m.Ns = m.Ns[:0]
	clear(m.Extra)
	m.Extra = m.Extra[:0]
	return m
}

// clientSize is the largest UDP answer the client takes (RFC 6891 6.2.5),
// and whether it sent EDNS.
func clientSize(req *mdns.Msg) (int, bool) {
	opt := req.IsEdns0()
	if opt == nil {
		return mdns.MinMsgSize, false
	}
	return min(max(int(opt.UDPSize()), mdns.MinMsgSize), ednsSize), true
}

// send packs r.m into r's buffer, cuts it to the client's size over UDP and
// writes it.
func (s *Server) send(w mdns.ResponseWriter, r *reply, req *mdns.Msg) {
	m := &r.m
	size, edns := clientSize(req)
	if edns {
		m.Extra = append(m.Extra, s.opt)
	}
	if isTCP(w) {
		size = mdns.MaxMsgSize
	}
	if cap(r.buf) < 512 {
		r.buf = make([]byte, 0, ednsSize)
	}
	out, err := m.PackBuffer(r.buf[:cap(r.buf)])
	if err == nil && len(out) > size {
		m.Truncate(size)
		s.c.truncated.Add(1)
		out, err = m.PackBuffer(r.buf[:cap(r.buf)])
	}
	if err != nil {
		s.c.writeFailed.Add(1)
		return
	}
	if cap(out) <= 64*1024 {
		r.buf = out[:0]
	}
	if _, err := w.Write(out); err != nil {
		s.c.writeFailed.Add(1)
	}
}

func isTCP(w mdns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// writeRcode answers req with an empty message carrying rcode.
func (s *Server) writeRcode(w mdns.ResponseWriter, req *mdns.Msg, rcode int) {
	r := s.replies.Get().(*reply)
	defer s.replies.Put(r)
	var q mdns.Question
	if len(req.Question) > 0 {
		q = req.Question[0]
	}
	m := s.startReply(r, req, q)
	if len(req.Question) == 0 {
		m.Question = m.Question[:0]
	}
	m.Authoritative = false
	m.Rcode = rcode
	s.send(w, r, req)
}
