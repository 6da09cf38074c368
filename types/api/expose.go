package api

// Paths of the host's exposure to the overlay (Weave Net's expose/hide).
const (
	PathExpose = "/v1/expose"
	PathHide   = "/v1/hide"
)

// ExposeRequest names the subnet to expose the host on, or hide it from;
// "" is the default subnet.
type ExposeRequest struct {
	Subnet string `json:"subnet,omitempty"`
}

// Exposure is one of the host's overlay addresses open to a subnet's
// containers.
type Exposure struct {
	Address string `json:"address"` // e.g. 10.32.0.1
	Subnet  string `json:"subnet"`  // the subnet whose containers may reach it
}

// ExposeResult answers expose and hide: the address concerned and every
// exposure after the change.
type ExposeResult struct {
	Address string     `json:"address,omitempty"`
	Subnet  string     `json:"subnet"`
	Changed bool       `json:"changed"` // false: it already was (expose) or was not (hide)
	Exposed []Exposure `json:"exposed"`
}
