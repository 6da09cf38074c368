package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func statusCommand() *cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print the daemon's status document as JSON"}
	sub := func(name, usage string, show func(io.Writer, api.Status)) *cli.Command {
		return &cli.Command{
			Name:  name,
			Usage: usage,
			Flags: []cli.Flag{apiSocketFlag(), jsonFlag},
			Action: func(c *cli.Context) error {
				return runStatus(c, show)
			},
		}
	}
	return &cli.Command{
		Name:  "status",
		Usage: "show this peer, its peers and its connections",
		Flags: []cli.Flag{apiSocketFlag(), jsonFlag},
		Subcommands: []*cli.Command{
			sub("peers", "list every peer and whom it is connected to", showPeers),
			sub("connections", "list connections: state, direct or not, endpoint, last handshake, bytes", showConnections),
			statusDNSCommand(),
			statusIPAMCommand(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unknown status view %q (want peers, connections, ipam or dns)", c.Args().First())
			}
			return runStatus(c, showSummary)
		},
	}
}

func runStatus(c *cli.Context, show func(io.Writer, api.Status)) error {
	var st api.Status
	if err := newClient(c).do("GET", api.PathStatus, nil, &st); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(st)
	}
	show(os.Stdout, st)
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func showSummary(w io.Writer, st api.Status) {
	var reachable int
	for _, p := range st.Peers {
		if !p.Self && p.Reachable {
			reachable++
		}
	}
	states := map[string]int{}
	for _, c := range st.Conns {
		states[c.State]++
	}
	row := func(k, v string) { fmt.Fprintf(w, "%13s: %s\n", k, v) }
	if st.Build.Version == "" {
		st.Build.Version = st.Version // a daemon older than the build field
	}
	row("Version", versionLine(st.Build))
	row("Name", fmt.Sprintf("%s(%s)", st.Name, st.Nickname))
	row("Encryption", st.Encryption)
	if st.Datapath != "" {
		row("Datapath", st.Datapath)
	}
	row("Port", fmt.Sprintf("%d (TCP control, UDP WireGuard)", st.Port))
	row("Host IP", hostIPLine(st))
	row("Range", st.Range)
	if st.DefaultSubnet != "" && st.DefaultSubnet != st.Range {
		row("Subnets", "default "+st.DefaultSubnet+"; others of the range isolated")
	}
	if st.MTUFrom != "" {
		row("Interface", fmt.Sprintf("%s (MTU %d: %s)", st.Interface, st.MTU, st.MTUFrom))
	} else {
		row("Interface", fmt.Sprintf("%s (MTU %d)", st.Interface, st.MTU))
	}
	row("Peers", fmt.Sprintf("%d (%d reachable)", len(st.Peers)-1, reachable))
	row("Connections", fmt.Sprintf("%d (%d established, %d connecting, %d failed)",
		len(st.Conns), states[api.StateEstablished], states[api.StateConnecting], states[api.StateFailed]))
	row("Attachments", fmt.Sprint(len(st.Attached)))
	owned := 0.0
	for _, p := range st.IPAM.Peers {
		if p.Self {
			owned = p.Percent
		}
	}
	switch {
	case st.IPAM.Network == "":
		row("IPAM", "waiting for the address ring from a peer")
	case st.IPAM.Error != "":
		row("IPAM", "error: "+st.IPAM.Error)
	default:
		row("IPAM", fmt.Sprintf("%d allocated here, %.1f%% of %s owned", st.IPAM.Allocated, owned, st.IPAM.Range))
	}
	if st.DNS.Enabled {
		row("DNS", fmt.Sprintf("%s on %s (TTL %ds)", st.DNS.Domain, st.DNS.Listen, st.DNS.TTL))
	} else {
		row("DNS", "off")
	}
	if st.NAT != nil {
		row("NAT", natLine(st.NAT))
	}
	if st.Secret != nil {
		row("Secret", secretLine(st.Secret))
	}
	for i, e := range st.Evicted {
		k := ""
		if i == 0 {
			k = "Evicted"
		}
		row(k, evictedLine(e))
	}
}

// natLine is this peer's observed NAT behaviour in one line.
func natLine(n *api.NATStatus) string {
	if len(n.Mappings) == 0 {
		return "not observed yet (no STUN server answered)"
	}
	seen := make([]string, 0, len(n.Mappings))
	for _, m := range n.Mappings {
		seen = append(seen, m.Mapped+" by "+m.Server)
	}
	return fmt.Sprintf("mapping %s; seen at %s", n.Mapping, strings.Join(seen, ", "))
}

func showPeers(w io.Writer, st api.Status) {
	nick := map[string]string{}
	for _, p := range st.Peers {
		nick[p.Name] = p.Nickname
	}
	for _, p := range st.Peers {
		mark := ""
		switch {
		case p.Self:
			mark = "  (this peer)"
		case !p.Reachable:
			mark = "  unreachable!"
		}
		hostIP := p.HostIP
		if p.HostIPRefused != "" {
			hostIP += " (refused: " + p.HostIPRefused + ")"
		}
		fmt.Fprintf(w, "%s(%s)  %s  %d attached%s\n", p.Name, p.Nickname, hostIP, len(p.Addresses), mark)
		// Neighbours by nickname (name when it has none), packed into
		// lines, so 50 peers take a few lines each rather than 50.
		ns := make([]string, 0, len(p.Neighbors))
		for _, n := range p.Neighbors {
			ns = append(ns, orName(nick[n], n))
		}
		sort.Strings(ns)
		line := fmt.Sprintf("   <-> %d:", len(ns))
		for _, n := range ns {
			if len(line)+1+len(n) > 100 {
				fmt.Fprintln(w, line)
				line = "         "
			}
			line += " " + n
		}
		fmt.Fprintln(w, line)
		if len(p.MulticastGroups) > 0 {
			fmt.Fprintf(w, "   multicast: %s\n", strings.Join(p.MulticastGroups, " "))
		}
	}
}

func orName(nick, name string) string {
	if nick != "" {
		return nick
	}
	return name
}

func showConnections(w io.Writer, st api.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range st.Conns {
		dir := "<-"
		if c.Outbound {
			dir = "->"
		}
		peer := "-"
		if c.Peer != "" {
			peer = fmt.Sprintf("%s(%s)", c.Peer, c.Nickname)
		}
		path := ""
		dp := c.Datapath
		if dp == "" {
			dp = "direct"
		}
		switch {
		case c.Datapath == "vxlan (trusted)":
			path = c.Datapath
		case c.Via != "":
			path = "relayed via " + c.Via
		case c.Endpoint != "" && c.Direct && c.Candidate != "" && c.Endpoint == c.ICEEndpoint:
			path = dp + " (ice " + c.Candidate + ")"
		case c.Endpoint != "" && c.Direct:
			path = dp
		case c.Endpoint != "":
			path = "relayed"
		}
		detail := c.Error
		if detail == "" && c.Endpoint != "" && c.LastHandshake == nil && c.Datapath != "vxlan (trusted)" {
			// WireGuard peers handshake on the first packet: with no
			// traffic yet there is no session, and the path is only
			// where the first packet will go.
			path = "-"
			next := "endpoint " + c.Endpoint
			if c.Via != "" {
				next = "relay " + c.Via
			}
			detail = "control connection up; WireGuard session not yet (no traffic so far; first packet goes via " + next + ")"
		} else if detail == "" && c.Endpoint != "" {
			rtt := "-"
			if c.RTTMillis > 0 {
				rtt = fmt.Sprintf("%.2fms", c.RTTMillis)
			}
			detail = fmt.Sprintf("endpoint %s, rtt %s, handshake %s, rx %s, tx %s",
				c.Endpoint, rtt, ago(c.LastHandshake), bytesHuman(c.RxBytes), bytesHuman(c.TxBytes))
			if c.EndpointFrom != "" && c.Direct {
				detail += ", endpoint from " + c.EndpointFrom
			}
			if c.PathWhy != "" {
				detail += ", why: " + c.PathWhy
			}
		}
		if c.MTU > 0 && c.Endpoint != "" {
			detail += fmt.Sprintf(", mtu %d (%s)", c.MTU, c.MTUSource)
		}
		if c.ICE != "" && c.ICE != "connected" {
			detail += ", ice " + c.ICE
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\n", dir, orDash(c.Address), c.State, orDash(path), peer, detail)
	}
	tw.Flush()
}

func ago(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return time.Since(*t).Truncate(time.Second).String() + " ago"
}

func bytesHuman(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// hostIPLine is the host address, where it came from, and whether the
// overlay may reach the host.
func hostIPLine(st api.Status) string {
	if st.HostIP == "" {
		return fmt.Sprintf("none yet (waiting for address space) on bridge %s", st.Bridge)
	}
	s := fmt.Sprintf("%s on bridge %s", st.HostIP, st.Bridge)
	if st.HostIPFrom != "" {
		s += " (" + st.HostIPFrom + ")"
	}
	if len(st.Exposed) == 0 {
		return s + "; hidden from the overlay but DNS (weavewg expose)"
	}
	var parts []string
	for _, e := range st.Exposed {
		parts = append(parts, e.Address+" to "+e.Subnet)
	}
	return s + "; exposed: " + strings.Join(parts, ", ")
}
