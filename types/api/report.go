package api

import "time"

// PathReport is the diagnostic bundle: GET → Report.
const PathReport = "/v1/report"

// Report is everything `weavewg report` writes, in one document, for a bug
// report or a support question. It holds no secret: no private key, no
// network secret or password, no join token (only token IDs).
type Report struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Versions: the daemon's and (filled in by the CLI) the CLI's.
	Versions ReportVersions `json:"versions"`
	// Status is what `status --json` shows but for the three sections
	// below, which are left out of it (null) rather than written twice.
	Status      Status            `json:"status"`
	Peers       []Peer            `json:"peers"`
	Connections []Connection      `json:"connections"`
	Counters    map[string]uint64 `json:"counters"`
	// Ring is the address allocator's view of the ring, with transfers.
	Ring IPAMStatus `json:"ring"`
	// DNS is the name table.
	DNS DNSStatus `json:"dns"`
	// Warnings are the last warnings and errors the daemon logged, oldest
	// first (at most 100).
	Warnings []LogEntry `json:"recent_warnings"`
}

// ReportVersions are the binaries involved.
type ReportVersions struct {
	Daemon Build  `json:"daemon"`
	CLI    *Build `json:"cli,omitempty"`
}

// LogEntry is one logged warning or error.
type LogEntry struct {
	Time    time.Time         `json:"time"`
	Level   string            `json:"level"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}
