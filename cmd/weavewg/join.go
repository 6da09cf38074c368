package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/daemon"
	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/unixhttp"
)

func joinCommand() *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "join a network with a token, then run the router (in the foreground)",
		ArgsUsage: "TOKEN",
		Description: `Contacts the members named in the token (printed by 'weavewg launch' or
'weavewg token create' on any member), proves the token, receives the
network's secret over the encrypted connection, records it in the state dir
and runs as a normal peer, like launch. Later restarts need only
'weavewg launch'. Takes launch's flags.`,
		Flags: append(daemonFlags(), &cli.DurationFlag{Name: "join-timeout", Value: 30 * time.Second,
			Usage: "give up if no member named in the token answers within this time"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("join needs exactly one argument: the token (weavewg join wwg1-...)")
			}
			if os.Geteuid() != 0 {
				return errors.New("join needs root (it then runs the router, which creates a TUN device, a bridge and routes)")
			}
			nick := c.String("name")
			if nick == "" {
				nick, _ = os.Hostname()
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			adm, err := daemon.Join(ctx, c.String("state-dir"), c.Args().First(), nick, c.Duration("join-timeout"), func(msg string) {
				fmt.Println("weavewg:", msg)
			})
			stop()
			switch {
			case errors.Is(err, daemon.ErrAlreadyMember):
				fmt.Println("weavewg: this host is already a member of that network; starting")
				adm = nil
			case err != nil:
				return fmt.Errorf("could not join: %w", err)
			}
			return runDaemon(c, nil, adm)
		},
	}
}

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "make, list and revoke join tokens",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "make a join token (printed once; copy the whole line)",
				Flags: []cli.Flag{
					apiSocketFlag(),
					&cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, Usage: "how long the token admits hosts"},
					&cli.IntFlag{Name: "uses", Usage: "how many hosts it admits (0: any number)"},
					&cli.StringSliceFlag{Name: "endpoint", Usage: "IP[:PORT] of this host that joiners can reach (repeatable; default: its addresses)"},
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
				},
				Action: func(c *cli.Context) error {
					req := api.TokenRequest{TTL: c.Duration("ttl").String(), Uses: c.Int("uses"), Endpoints: c.StringSlice("endpoint")}
					var t api.Token
					if err := newClient(c).do("POST", api.PathTokens, req, &t); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(t)
					}
					uses := "any number of hosts"
					if t.Uses > 0 {
						uses = fmt.Sprintf("%d host(s)", t.Uses)
					}
					until := "never expires"
					if t.Expires != nil {
						until = "valid until " + t.Expires.Local().Format(time.RFC1123)
					}
					fmt.Printf("token %s for network %s: %s, %s, members %v\n\n    weavewg join %s\n\n", t.ID, t.Network, until, uses, t.Endpoints, t.Token)
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "list the network's tokens: ID, expiry, uses, revoked",
				Flags: []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					var ts []api.TokenInfo
					if err := newClient(c).do("GET", api.PathTokens, nil, &ts); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(ts)
					}
					tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tEXPIRES\tUSED\tSTATE\tMADE BY")
					for _, t := range ts {
						exp := "never"
						if t.Expires != nil {
							exp = t.Expires.Local().Format(time.DateTime)
						}
						used := fmt.Sprintf("%d/%d", t.Used, t.Uses)
						if t.Uses == 0 {
							used = fmt.Sprintf("%d/any", t.Used)
						}
						state := "valid"
						switch {
						case t.Revoked:
							state = "revoked"
						case t.Expired:
							state = "expired"
						case t.Uses > 0 && t.Used >= t.Uses:
							state = "used up"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s(%s)\n", t.ID, exp, used, state, t.Creator, t.CreatorNickname)
					}
					return tw.Flush()
				},
			},
			{
				Name:      "revoke",
				Usage:     "stop a token from admitting anyone, on every member",
				ArgsUsage: "ID",
				Flags:     []cli.Flag{apiSocketFlag()},
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "ID")
					if err != nil {
						return err
					}
					return newClient(c).do("POST", api.PathTokenRevoke, api.TokenRevokeRequest{ID: id}, nil)
				},
			},
		},
	}
}

func resetCommand() *cli.Command {
	return &cli.Command{
		Name:  "reset",
		Usage: "leave the network: release every attachment, hand the address space back, forget the network, stop",
		Description: `After reset this host needs a new token (or --password) to be in a network
again; its identity key stays. Reset also removes the weavewg bridge and every
firewall rule weavewg added.

A stop (SIGTERM, systemctl stop) keeps the bridge and its firewall rules, so
containers on this host keep reaching each other while the daemon is down.
With the daemon stopped, 'reset --host-only' removes those (the bridge, the
rules, the filter table); the network state in the state dir stays, so a
later launch rejoins.`,
		Flags: []cli.Flag{
			apiSocketFlag(),
			&cli.BoolFlag{Name: "host-only", Usage: "with the daemon stopped: remove only the bridge and firewall rules a stop keeps"},
			&cli.StringFlag{Name: "bridge", Value: daemon.DefaultBridge, Usage: "with --host-only: the bridge launch used"},
			&cli.StringFlag{Name: "iface", Value: daemon.DefaultIface, Usage: "with --host-only: the TUN name launch used"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("host-only") {
				return resetHostOnly(c)
			}
			var res api.ResetResult
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			if err := newClient(c).c.Do(ctx, "POST", api.PathReset, nil, &res); err != nil {
				var de *unixhttp.DialError
				if errors.As(err, &de) {
					return fmt.Errorf("%w\n(if the daemon is stopped, 'weavewg reset --host-only' removes the bridge and firewall rules it kept)", daemonError(err))
				}
				return daemonError(err)
			}
			fmt.Printf("left network %s", res.Network)
			if res.Heir != "" {
				fmt.Printf("; its address space went to %s", res.Heir)
			}
			fmt.Println("; the daemon is stopping.")
			if res.Detail != "" {
				fmt.Println(res.Detail)
			}
			return nil
		},
	}
}

// resetHostOnly removes what a stopped daemon kept for local traffic. It
// refuses while a daemon answers on the API socket: its watcher would put
// the rules back, and its containers would lose each other.
func resetHostOnly(c *cli.Context) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err := newClient(c).c.Do(ctx, "GET", api.PathStatus, nil, nil)
	var de *unixhttp.DialError
	if err == nil || !errors.As(err, &de) {
		return fmt.Errorf("a weavewg daemon answers at %s: stop it first, or run 'weavewg reset' to leave the network", c.String("api-socket"))
	}
	bridge, tun := c.String("bridge"), c.String("iface")
	if err := hostnet.RemoveLeftovers(bridge, tun, nil); err != nil {
		return err
	}
	fmt.Printf("removed the bridge %s and weavewg's firewall rules; the network state stays (weavewg launch rejoins)\n", bridge)
	return nil
}
