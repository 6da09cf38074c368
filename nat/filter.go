package nat

import (
	"net/netip"

	"github.com/pion/stun/v4"
)

// Filtering STUN before pion: what HandleSTUN lets through to the agents.

// HandleSTUN takes one STUN datagram the tunnel received from src. It runs
// on the tunnel's receive path: it does not block, and copies what it keeps.
// Credential-less Binding requests are answered; ICE checks reach the
// agents only with a ufrag and MESSAGE-INTEGRITY of a live session; answers
// only for a transaction we started, from the address we asked, and for
// ICE checks signed with the peer's password. Everything else is counted
// and dropped, so forged STUN never reaches an agent and never moves an
// endpoint.
func (m *Manager) HandleSTUN(pkt []byte, src netip.AddrPort) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	msg, err := parseSTUN(pkt)
	if err != nil {
		m.ctr.inc(cSTUNMalformed)
		return
	}
	if msg.method() != 1 {
		m.ctr.inc(cSTUNUnexpected)
		return
	}
	switch msg.class() {
	case classRequest:
		if isServerRequest(&msg) {
			m.resp.answer(&msg, src)
			return
		}
		if msg.username == nil || !msg.hasIntegrity {
			m.ctr.inc(cSTUNUnexpected)
			return
		}
		c, ok := (*m.creds.Load())[msg.ufrag()]
		if !ok {
			m.ctr.inc(cSTUNUnknownUfrag)
			return
		}
		if !checkIntegrity(pkt, c.localPwd) {
			m.ctr.inc(cSTUNBadIntegrity)
			return
		}
	case classSuccess, classError:
		t, ok := m.conn.lookup(msg.txID)
		if !ok {
			m.ctr.inc(cSTUNUnknownTxn)
			return
		}
		if t.dst != src {
			m.ctr.inc(cSTUNWrongSource)
			return
		}
		if t.username != "" {
			// Our check's USERNAME is "theirs:ours"; the answer is signed
			// with their password.
			local := t.username
			for i := range local {
				if local[i] == ':' {
					local = local[i+1:]
					break
				}
			}
			c, ok := (*m.creds.Load())[local]
			if !ok {
				m.ctr.inc(cSTUNUnknownUfrag)
				return
			}
			if !msg.hasIntegrity || c.remotePwd == "" || !checkIntegrity(pkt, c.remotePwd) {
				m.ctr.inc(cSTUNBadIntegrity)
				return
			}
		}
	default:
		m.ctr.inc(cSTUNUnexpected)
		return
	}
	m.conn.deliver(pkt, src)
}

// checkIntegrity checks MESSAGE-INTEGRITY with the short-term password pwd.
func checkIntegrity(pkt []byte, pwd string) bool {
	msg := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := msg.Decode(); err != nil {
		return false
	}
	return stun.NewShortTermIntegrity(pwd).Check(msg) == nil
}
