package discovery

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"

	"github.com/weavewg/weavewg/types/key"
)

// Transport framing, after the handshake (handshake.go):
//
//	+------------+---------------------------------------------+
//	| length (2) | Noise transport message (length ≤ 65535)    |
//	+------------+---------------------------------------------+
//
// The transport message is ChaCha20-Poly1305 with the handshake's split
// keys and implicit counters, so frames cannot be dropped, reordered or
// replayed. It decrypts to one message (gossip.go). A frame that does not
// decrypt, or a message that does not parse, closes the connection.

// sendQueueLen bounds each connection's queue of gossip messages (records,
// haves, wants, digests, keepalives) waiting to be written. When full the
// oldest is dropped (control_send_dropped): gossip repairs itself through
// anti-entropy, and the router never blocks on a slow peer.
const sendQueueLen = 256

// channelSendQueueLen bounds each connection's queue of channel messages (IPAM,
// DNS), kept apart from the gossip queue and written after it. A broadcast
// is one message per peer, queued at once on the sender's few connections:
// at 500 simulated peers and more a joiner's IPAM and DNS broadcasts filled
// the one shared queue, whose drop-oldest then discarded the join's own
// records, haves and wants (control_send_dropped about 10,000 per batch of
// 12 joins at 750 peers, and the newest joiner unreachable for 30 s and
// more until anti-entropy). Now a flood of channel messages drops only
// channel messages (gossip_channel_send_dropped; IPAM and DNS repair them
// by their digests), and gossip goes first. Its length holds a broadcast
// of a 1,000-peer mesh on a single connection; its bytes bound what it
// holds when the messages are large (ring parts of up to 64 KB): in the
// simulation of 1,000 peers, N×30 connections share one heap.
const (
	channelSendQueueLen   = 1024
	channelSendQueueBytes = 1 << 20
)

var (
	errDuplicate    = errors.New("duplicate connection to the same peer")
	errTooManyConns = errors.New("too many control connections")
	errDecrypt      = errors.New("frame did not decrypt")
	errNoHello      = errors.New("first message was not a hello")
)

// conn is one control connection past its handshake.
type conn struct {
	// Constant after establish.
	r        *Router
	nc       net.Conn
	addr     string // HOST:PORT dialled, or the remote address
	remote   netip.AddrPort
	outbound bool
	target   *target // the target that dialled it, or nil
	peer     key.Public
	hash     []byte // handshake hash (see handshakeResult)
	hello    Hello
	epoch    uint32 // the secret epoch of the handshake
	// catchUp: an inbound connection under an inactive epoch, served
	// only with the rotation its peer missed (rotation.go).
	catchUp bool
	// mayShed: an inbound connection from a peer we do not reach, taken
	// at our limit by closing one of our own (shedLocked).
	mayShed bool
	// since: when it was established (addConnLocked); under Router.mu.
	since time.Time

	send *noise.CipherState // owned by establish, then by writeLoop
	recv *noise.CipherState // owned by establish, then by readLoop

	// The send queue: plaintext messages waiting for the writer, which
	// runs only while there are some (writeLoop). A writer goroutine and
	// a 256-slot channel per connection, idle nearly always, were half
	// the goroutines of a simulated thousand peers. Producers hold
	// Router.mu (one at a time); qmu orders them with the writer.
	qmu     sync.Mutex
	q       [][]byte // gossip: records, haves, wants, digests, keepalives
	cq      [][]byte // channel messages, written when q is empty
	cqBytes int      // the bytes in cq
	live    bool     // runConn registered it: queued messages may be written
	writing bool     // a writer goroutine runs

	// Under Router.mu (digest.go). speaksDigest: the peer sent a digest;
	// legacy: its first message after the hello was records (it predates
	// digests), so it is sent full states; digest: the parts of a digest
	// being received.
	speaksDigest, legacy bool
	// speaksSummary: the peer sent a summary; anti-entropy sends it
	// summaries, not digests (summary.go).
	speaksSummary bool
	// speaksMulticast: the peer's features message listed multicast;
	// broadcasts go to it as multicast messages (multicast.go).
	speaksMulticast bool
	digest          map[key.Public]uint64
	// haves: records announced to it and not yet sent (announce.go);
	// under Router.mu.
	haves []DigestEntry
	// heard, heardOld: versions the peer told us it holds lately (its
	// haves, the records it sent), so that our haves skip them
	// (announce.go); under Router.mu.
	heard, heardOld map[key.Public]uint64

	lastWrite atomic.Int64  // unix ns of the last write, or of the last keepalive queued
	done      chan struct{} // closed by close
	closeOnce sync.Once
}

func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		c.nc.Close()
	})
}

// dialler returns the key of the end that dialled c.
func (c *conn) dialler(self key.Public) key.Public {
	if c.outbound {
		return self
	}
	return c.peer
}

// preferredOver reports whether c should replace old, a connection to the
// same peer. Both ends compute the same answer from what both know: between
// connections dialled by different ends, the one dialled by the smaller key
// wins; between two dialled by the same end (a target and a gossip dial
// racing), the smaller handshake hash wins.
func (c *conn) preferredOver(old *conn, self key.Public) bool {
	dc, do := c.dialler(self), old.dialler(self)
	if dc == do {
		return bytes.Compare(c.hash, old.hash) < 0
	}
	lo := self
	if c.peer.Less(self) {
		lo = c.peer
	}
	return dc == lo
}

// queue hands m to the writer without blocking, dropping the oldest queued
// message if sendQueueLen are waiting, and starts a writer if none runs.
// Called with Router.mu held, so there is one producer at a time.
func (c *conn) queue(m []byte) {
	c.qmu.Lock()
	if len(c.q) >= sendQueueLen {
		c.q[0] = nil
		c.q = c.q[1:]
		c.r.ctr.inc(CtrSendDropped)
	}
	c.q = append(c.q, m)
	c.startWriterUnlock()
}

// queueChannel is queue for a channel message: into the channel queue,
// which the writer takes only when the gossip queue is empty, and which
// holds at most channelSendQueueLen messages and channelSendQueueBytes.
func (c *conn) queueChannel(m []byte) {
	c.qmu.Lock()
	for len(c.cq) > 0 && (len(c.cq) >= channelSendQueueLen || c.cqBytes+len(m) > channelSendQueueBytes) {
		c.cqBytes -= len(c.cq[0])
		c.cq[0] = nil
		c.cq = c.cq[1:]
		c.r.ctr.inc(CtrChannelSendDropped)
	}
	c.cq = append(c.cq, m)
	c.cqBytes += len(m)
	c.startWriterUnlock()
}

// startWriterUnlock starts a writer if one is needed, and unlocks qmu.
func (c *conn) startWriterUnlock() {
	start := c.startWriterLocked()
	c.qmu.Unlock()
	if start {
		go c.writeLoop()
	}
}

// startWriterLocked reports whether the caller must start a writer (and
// counts it in the router's WaitGroup): c is live and open, messages wait
// and none runs. Called with c.qmu and Router.mu held.
func (c *conn) startWriterLocked() bool {
	if !c.live || c.writing || len(c.q)+len(c.cq) == 0 || c.r.closed {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
	}
	c.writing = true
	c.r.wg.Add(1)
	return true
}

// frameBufLen is the size of the pooled buffers frames are sealed in;
// a larger frame gets a buffer of its own.
const frameBufLen = 4096

// frameBufs holds frame buffers between writes: a frame is garbage once
// Write returns (net.Conn's contract), and one allocated per frame was
// about 7 % of the simulation's CPU with the collector's share (N=500
// build, Nov 30), the same garbage for a daemon per message it sends. A
// pool, not a buffer per connection: that held 64 KB per connection for
// good (readBufLen).
var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, frameBufLen); return &b }}

// writeMsg encrypts and writes one message. Only one goroutine at a time
// owns c.send.
func (c *conn) writeMsg(m []byte, deadline time.Duration) error {
	need := 2 + len(m) + 16
	var pooled *[]byte
	var b []byte
	if need <= frameBufLen {
		pooled = frameBufs.Get().(*[]byte)
		b = (*pooled)[:2]
		defer func() {
			*pooled = b[:0]
			frameBufs.Put(pooled)
		}()
	} else {
		b = make([]byte, 2, need)
	}
	b, err := c.send.Encrypt(b, nil, m)
	if err != nil {
		return err
	}
	if len(b)-2 > maxFrame {
		return fmt.Errorf("message of %d bytes does not fit a frame", len(m))
	}
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	if deadline > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(deadline))
	}
	_, err = c.nc.Write(b)
	if err == nil && c.r != nil { // tests write from bare conns
		c.r.frames.inc(m)
	}
	return err
}

// readMsg reads one message and decrypts it in place, in buf if it fits
// (the message is valid until the next read).
func (c *conn) readMsg(buf []byte) ([]byte, error) {
	f, err := readFrame(c.nc, buf, maxFrame)
	if err != nil {
		return nil, err
	}
	plain, err := c.recv.Decrypt(f[:0], nil, f)
	if err != nil {
		return nil, errDecrypt
	}
	return plain, nil
}

// readBufLen is the read buffer each connection keeps: most messages fit,
// a larger frame gets a buffer of its own. A buffer of a whole frame
// (64 KB) per connection, and another for the plaintext, held 128 KB per
// connection for good: 2.5 GB for a thousand simulated peers.
const readBufLen = 4096

// writeLoop writes the queued messages until none is left, then ends;
// the next queue starts another.
func (c *conn) writeLoop() {
	defer c.r.wg.Done()
	for {
		c.qmu.Lock()
		closed := false
		select {
		case <-c.done:
			closed = true
		default:
		}
		if closed || len(c.q)+len(c.cq) == 0 {
			c.writing = false
			if closed {
				c.discardLocked(0)
			}
			c.qmu.Unlock()
			return
		}
		q := &c.q
		if len(*q) == 0 {
			q = &c.cq
			c.cqBytes -= len((*q)[0])
		}
		m := (*q)[0]
		(*q)[0] = nil
		*q = (*q)[1:]
		if len(*q) == 0 {
			*q = nil // let the backing array go
		}
		c.qmu.Unlock()
		if err := c.writeMsg(m, c.r.tun.writeTimeout); err != nil {
			c.close()
			c.qmu.Lock()
			c.writing = false
			c.discardLocked(1) // and the message that failed
			c.qmu.Unlock()
			return
		}
		c.lastWrite.Store(time.Now().UnixNano())
	}
}

// discardLocked empties the queues of a connection that closed, counting
// what they held and extra messages already taken from them
// (control_send_discarded): gossip repairs them by anti-entropy, IPAM and
// DNS by their digests, but a closing connection's queue was a loss no
// counter showed. Called with qmu held.
func (c *conn) discardLocked(extra int) {
	if n := len(c.q) + len(c.cq) + extra; n > 0 {
		c.r.ctr.add(CtrSendDiscarded, uint64(n))
	}
	c.q, c.cq, c.cqBytes = nil, nil, 0
}

// keepaliveDueLocked queues a keepalive if nothing was written for the
// keepalive period. The maintenance loop calls it on its beat, so an idle
// connection has no timer of its own (liveness.go).
func (c *conn) keepaliveDueLocked(now time.Time) {
	if now.UnixNano()-c.lastWrite.Load() >= int64(c.r.tun.keepalive) {
		c.lastWrite.Store(now.UnixNano()) // one queued at a time
		c.queue([]byte{msgKeepalive})
	}
}

// readLoop reads messages until the connection fails or is closed, and
// returns why.
func (c *conn) readLoop() error {
	r := c.r
	buf := make([]byte, readBufLen)
	for {
		c.nc.SetReadDeadline(time.Now().Add(r.tun.readTimeout))
		m, err := c.readMsg(buf)
		if err != nil {
			if errors.Is(err, errDecrypt) {
				r.ctr.inc(CtrFrameDecryptFailed)
				r.logOnce(slog.LevelWarn, "peer:"+c.peer.String(), "decrypt",
					"closing control connection: a frame failed to decrypt",
					"peer", c.peer.Name(), "addr", c.addr)
			}
			return err
		}
		if err := c.handle(m); err != nil {
			r.ctr.inc(CtrMessageMalformed)
			r.logOnce(slog.LevelWarn, "peer:"+c.peer.String(), err.Error(),
				"closing control connection: peer sent a malformed message",
				"peer", c.peer.Name(), "addr", c.addr, "err", err.Error())
			return err
		}
	}
}

// handle acts on one message; an error means it was malformed.
func (c *conn) handle(m []byte) error {
	r := c.r
	if len(m) == 0 {
		return errShort
	}
	switch m[0] {
	case msgRecords:
		recs, err := ParseRecordsMessage(m)
		if err != nil {
			return err
		}
		r.mu.Lock()
		if !c.speaksDigest && !c.legacy && r.active[c.peer] == c {
			// A peer that knows digests starts with one (digest.go).
			c.legacy = true
			r.sendFullStateLocked(c)
		}
		r.mu.Unlock()
		r.applyRecords(c, recs)
	case msgKeepalive:
		if len(m) != 1 {
			return errTrailing
		}
	case msgChannel:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.active[c.peer] != c {
			return nil // a duplicate being closed; its peer resends elsewhere
		}
		return r.handleChannelLocked(m)
	case msgDigest:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.active[c.peer] != c {
			return nil
		}
		return r.handleDigestLocked(c, m)
	case msgSummary:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.active[c.peer] != c {
			return nil
		}
		return r.handleSummaryLocked(c, m)
	case msgFeatures:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.handleFeaturesLocked(c, m)
	case msgMulticast:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.active[c.peer] != c {
			return nil // a duplicate being closed; its peer resends elsewhere
		}
		return r.handleMulticastLocked(m)
	case msgHave, msgWant:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.active[c.peer] != c {
			return nil
		}
		if m[0] == msgHave {
			return r.handleHaveLocked(c, m)
		}
		return r.handleWantLocked(c, m)
	case msgHello:
		return errors.New("second hello")
	default:
		r.ctr.inc(CtrMessageUnknownType)
	}
	return nil
}

// establish runs the handshake and the hello exchange on nc, within
// handshakeTimeout, an outbound one under the secret of epoch dial.
// Closing ctx aborts it.
func (r *Router) establish(ctx context.Context, nc net.Conn, outbound bool, addr string, t *target, dial Epoch) (*conn, error) {
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	nc.SetDeadline(time.Now().Add(r.tun.handshake))
	var res handshakeResult
	var err error
	catchUp := false
	if outbound {
		res, err = handshakeInitiator(nc, r.priv, r.self, dial.Secret)
		res.epoch = dial.N
	} else {
		r.mu.Lock()
		secrets := r.acceptSecretsLocked()
		r.mu.Unlock()
		res, err = handshakeResponder(nc, r.priv, r.self, secrets)
		r.mu.Lock()
		catchUp = err == nil && res.epoch < r.activeFrom
		r.mu.Unlock()
	}
	if err != nil {
		if isTimeout(err) {
			err = errTimeout
		}
		return nil, err
	}
	if r.IsEvicted(res.peer) {
		// Before the hello: an evicted peer learns nothing more.
		r.ctr.inc(CtrConnEvicted)
		return nil, fmt.Errorf("%w: %s", errEvictedPeer, res.peer.Name())
	}
	c := &conn{
		r:        r,
		nc:       nc,
		addr:     addr,
		remote:   addrPortOf(nc.RemoteAddr()),
		outbound: outbound,
		target:   t,
		peer:     res.peer,
		hash:     res.hash,
		epoch:    res.epoch,
		catchUp:  catchUp,
		send:     res.send,
		recv:     res.recv,
		done:     make(chan struct{}),
	}
	r.mu.Lock()
	if !outbound && r.fullLocked(c.peer) {
		_, c.mayShed = r.shedCandidateLocked(c.peer, r.now())
	}
	if !outbound && r.fullLocked(c.peer) && !c.mayShed {
		// At the limit: refer the dialler to the mesh instead of a hello.
		msgs := append([][]byte{{msgBusy}}, packRecords(r.referralLocked())...)
		r.mu.Unlock()
		r.ctr.inc(CtrConnLimit)
		r.trace(TraceRefused, c.peer, addr, "")
		for _, m := range msgs {
			if err := c.writeMsg(m, 0); err != nil {
				return nil, wrapTimeout(err)
			}
		}
		return nil, errBusy
	}
	h := Hello{Port: r.port, RecordVersion: r.selfRec.Version, Nickname: r.selfRec.Nickname}
	r.mu.Unlock()
	if err := c.writeMsg(AppendHello(nil, &h), 0); err != nil {
		return nil, wrapTimeout(err)
	}
	buf := make([]byte, readBufLen)
	m, err := c.readMsg(buf)
	if err != nil {
		if errors.Is(err, errDecrypt) {
			r.ctr.inc(CtrFrameDecryptFailed)
		}
		return nil, wrapTimeout(err)
	}
	if outbound && len(m) == 1 && m[0] == msgBusy {
		err := r.readReferral(c, buf)
		if t != nil {
			// Whom t reached and how full it was (targetSatisfied).
			r.mu.Lock()
			t.peer, t.busyDegree = c.peer, max(1, r.graph.degree(c.peer))
			r.mu.Unlock()
		}
		return nil, err
	}
	if len(m) == 0 || m[0] != msgHello {
		r.ctr.inc(CtrMessageMalformed)
		return nil, errNoHello
	}
	c.hello, err = ParseHello(m)
	if err != nil {
		r.ctr.inc(CtrMessageMalformed)
		return nil, fmt.Errorf("malformed hello: %w", err)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// referralLocked is what a peer at its limit sends a dialler it refuses:
// its own record and its neighbours' (at most ConnLimit, about 45 KB),
// whom the dialler can dial at the addresses our record gives
// (learnReferralAddrs). Every record it held was about 1 MB at 1,000
// peers, for each refused handshake; the dialler gets the rest from the
// first peer that takes it (the new connection's digest exchange).
func (r *Router) referralLocked() []*Record {
	recs := make([]*Record, 0, 1+len(r.active))
	recs = append(recs, r.copySelf())
	for k := range r.active {
		if e := r.recs[k]; e != nil && e.rec.Version != 0 {
			rec := e.rec
			recs = append(recs, &rec)
		}
	}
	return recs
}

// readReferral takes the records a peer at its connection limit sends
// after msgBusy, until it closes (within the handshake's deadline), and
// returns errBusy.
func (r *Router) readReferral(c *conn, buf []byte) error {
	r.ctr.inc(CtrConnBusy)
	referred, room := 0, 0
	if r.tracing() {
		defer func() {
			r.trace(TraceBusy, c.peer, c.addr, fmt.Sprintf("referred to %d records, %d of them with room", referred, room))
		}()
	}
	for {
		m, err := c.readMsg(buf)
		if err != nil {
			return errBusy
		}
		recs, err := ParseRecordsMessage(m)
		if err != nil {
			r.ctr.inc(CtrMessageMalformed)
			return fmt.Errorf("%w (then a malformed message: %v)", errBusy, err)
		}
		for _, rec := range recs {
			referred++
			if len(rec.Neighbors) < r.cfg.ConnLimit {
				room++
			}
		}
		r.applyRecords(nil, recs)
		r.learnReferralAddrs(c.peer)
	}
}

// learnReferralAddrs takes the addresses a peer that referred us (at its
// connection limit) sees its neighbours at as their last known addresses.
// Addresses otherwise come only from reachable peers' records (seenAt),
// and a joiner whose one target is full reaches nobody: it knew the mesh
// and had nobody to dial, forgot it a minute later, and then refused the
// same records for the tombstones' five minutes (seen at N=40 in
// scalebench: ten hosts alone for good). The referrer is authenticated by
// the handshake and its record is signed.
func (r *Router) learnReferralAddrs(referrer key.Public) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.recs[referrer]
	if e == nil {
		return
	}
	for _, n := range e.rec.Neighbors {
		if !n.Established || !n.IP.IsValid() || n.IP.IsUnspecified() {
			continue
		}
		if ne := r.recs[n.Key]; ne != nil && n.Key != r.self && !ne.lastIP.IsValid() {
			ne.lastIP = n.IP.Unmap()
			r.dialChangedLocked() // somewhere to dial: a candidate now
		}
	}
}

func wrapTimeout(err error) error {
	if isTimeout(err) {
		return errTimeout
	}
	return err
}

// runConn registers an established c and serves it until it ends. It
// reports whether c became the active connection to its peer, and why it
// ended.
func (r *Router) runConn(c *conn) (bool, error) {
	r.mu.Lock()
	if c.target != nil && c.target.ctx.Err() != nil {
		r.mu.Unlock()
		c.close()
		return false, context.Canceled
	}
	r.conns[c] = struct{}{}
	if err := r.addConnLocked(c); err != nil {
		delete(r.conns, c)
		r.mu.Unlock()
		c.close()
		switch err {
		case errDuplicate:
			r.ctr.inc(CtrConnDuplicate)
		case errTooManyConns:
			r.ctr.inc(CtrConnLimit)
		}
		r.trace(TraceFailed, c.peer, c.addr, err.Error())
		return false, err
	}
	if t := c.target; t != nil {
		t.conn, t.state, t.err = c, StateEstablished, ""
		t.peer, t.nickname, t.busyDegree = c.peer, c.hello.Nickname, 0
	}
	if r.tracing() {
		r.trace(TraceEstablished, c.peer, c.addr, fmt.Sprintf("outbound %v, target %v, now %d connections", c.outbound, c.target != nil, len(r.active)))
	}
	c.lastWrite.Store(time.Now().UnixNano())
	c.qmu.Lock()
	c.live = true
	start := c.startWriterLocked() // what addConnLocked queued
	c.qmu.Unlock()
	if start {
		go c.writeLoop()
	}
	r.mu.Unlock()
	watchLiveness(c.nc)

	err := c.readLoop()
	c.close()

	r.mu.Lock()
	if t := c.target; t != nil && t.conn == c {
		t.conn = nil
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil // closed by us
	}
	r.removeConnLocked(c, err)
	if r.tracing() {
		r.trace(TraceClosed, c.peer, c.addr, fmt.Sprintf("%v, now %d connections", err, len(r.active)))
	}
	r.mu.Unlock()
	return true, err
}

// addrPortOf converts a net.Addr from a TCP socket.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
