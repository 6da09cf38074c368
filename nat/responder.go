package nat

import (
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// Responder answers STUN Binding requests that carry no credentials, as a
// STUN server does (RFC 5389 section 7.3): so every peer with a public
// address is a STUN server of the mesh. It owns no socket: it is fed the
// requests the tunnel's Bind sorted out and answers through send, from the
// same port.
//
// Answers are about as large as requests, so they amplify nothing, but a
// forged source could still aim them at a third party: a token bucket
// bounds the answers per second.
type Responder struct {
	// Constant after NewResponder.
	send func(pkt []byte, dst netip.AddrPort) error
	now  func() time.Time
	ctr  *counters

	bucket *rate.Limiter // safe for concurrent use
}

const (
	responderRate  = 200 // answers per second
	responderBurst = 400
)

// NewResponder makes a responder that answers through send; now is the
// clock (nil: time.Now).
func NewResponder(send func(pkt []byte, dst netip.AddrPort) error, now func() time.Time) *Responder {
	return newResponder(send, now, &counters{})
}

func newResponder(send func([]byte, netip.AddrPort) error, now func() time.Time, ctr *counters) *Responder {
	if now == nil {
		now = time.Now
	}
	return &Responder{send: send, now: now, ctr: ctr, bucket: rate.NewLimiter(responderRate, responderBurst)}
}

// isServerRequest reports whether m is for the Responder: a Binding request
// without USERNAME and MESSAGE-INTEGRITY (ICE checks carry both).
func isServerRequest(m *stunMsg) bool {
	return m.class() == classRequest && m.method() == 1 && m.username == nil && !m.hasIntegrity
}

// answer answers the parsed request m from src (isServerRequest(m) holds).
func (r *Responder) answer(m *stunMsg, src netip.AddrPort) {
	if !src.IsValid() || !r.allow() {
		r.ctr.inc(cSTUNRateLimited)
		return
	}
	pkt := appendBindingResponse(make([]byte, 0, 48), m.txID, src)
	if r.send(pkt, src) == nil {
		r.ctr.inc(cSTUNAnswered)
	}
}

// Handle answers pkt if it is a credential-less Binding request and reports
// whether it was one (answered or rate limited).
func (r *Responder) Handle(pkt []byte, src netip.AddrPort) bool {
	m, err := parseSTUN(pkt)
	if err != nil || !isServerRequest(&m) {
		return false
	}
	r.answer(&m, src)
	return true
}

func (r *Responder) allow() bool { return r.bucket.AllowN(r.now(), 1) }
