package api

// Build says which binary runs: what `weavewg version --json` prints and
// what status and report carry. Release builds stamp Version, Commit and
// Date with -ldflags (see the Makefile); a plain `go build` falls back to
// what the Go toolchain recorded, and "dev" otherwise.
type Build struct {
	Version   string `json:"version"`          // git describe, e.g. v0.3.0-4-gabc1234
	Commit    string `json:"commit,omitempty"` // full commit hash
	Date      string `json:"date,omitempty"`   // build time, RFC 3339 UTC
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"` // GOOS/GOARCH
}
