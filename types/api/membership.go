package api

import "time"

// Paths of the membership part of the API: eviction and secret rotation.
const (
	PathEvict        = "/v1/evict"         // POST EvictRequest → Evicted
	PathEvicted      = "/v1/evicted"       // GET → []Evicted
	PathRotateSecret = "/v1/rotate-secret" // POST → SecretRotation
)

// EvictRequest names the member to evict (name, nickname or public key).
type EvictRequest struct {
	Peer string `json:"peer"`
}

// Evicted is one evicted peer: who evicted it and when.
type Evicted struct {
	Peer            string    `json:"peer"`
	PublicKey       string    `json:"public_key"`
	Nickname        string    `json:"nickname,omitempty"` // as last known here
	Evictor         string    `json:"evictor"`
	EvictorNickname string    `json:"evictor_nickname,omitempty"`
	Time            time.Time `json:"time"`
}

// SecretRotation answers PathRotateSecret, and is the secret part of
// Status: the epochs of the network secret this peer holds.
type SecretRotation struct {
	// Epoch is the newest epoch this peer holds (0: the secret the network
	// was made with); ID names that secret (a hash, safe to show).
	Epoch uint32 `json:"epoch"`
	ID    string `json:"id"`
	// Active are the epochs in use for connections and WireGuard (the
	// newest, and the previous one until every member holds the newest).
	Active []uint32 `json:"active"`
	// Recipients is how many members the new secret was sealed to (only
	// in the answer to a rotation).
	Recipients int `json:"recipients,omitempty"`
	// Behind names reachable members that do not hold Epoch yet.
	Behind []string `json:"behind,omitempty"`
}
