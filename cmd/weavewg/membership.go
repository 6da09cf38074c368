package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func evictCommand() *cli.Command {
	return &cli.Command{
		Name:      "evict",
		Usage:     "remove a member from the network for good",
		ArgsUsage: "PEER_NAME|NICKNAME|PUBLIC_KEY",
		Description: `Any member may evict another. The eviction is signed by this peer, gossiped
to every member and kept in each one's state dir. Every member then refuses
the evicted peer's control connections and join attempts, removes it as a
WireGuard peer, drops its gossip for good, and its address space is taken
over (rmpeer) so its containers' addresses are freed.

The evicted host still knows the network secret: run 'weavewg rotate-secret'
afterwards so that its copy opens nothing (tokens made before also stop
working). 'weavewg status' lists the evicted peers.`,
		Flags: []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print the eviction as JSON"}},
		Action: func(c *cli.Context) error {
			peer, err := oneArg(c, "PEER_NAME|NICKNAME|PUBLIC_KEY")
			if err != nil {
				return err
			}
			var res api.Evicted
			if err := newClient(c).do("POST", api.PathEvict, api.EvictRequest{Peer: peer}, &res); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(res)
			}
			fmt.Printf("evicted %s; every member now refuses it. Run 'weavewg rotate-secret' so its copy of the network secret opens nothing.\n", peerLabel(res.Peer, res.Nickname))
			return nil
		},
	}
}

func peerLabel(name, nick string) string {
	if nick == "" {
		return name
	}
	return name + "(" + nick + ")"
}

func evictedLine(e api.Evicted) string {
	return fmt.Sprintf("%s by %s at %s", peerLabel(e.Peer, e.Nickname), peerLabel(e.Evictor, e.EvictorNickname), e.Time.Local().Format(time.RFC3339))
}

func secretLine(s *api.SecretRotation) string {
	line := fmt.Sprintf("epoch %d (id %s)", s.Epoch, s.ID)
	if len(s.Active) > 1 {
		line += fmt.Sprintf(", epoch %d still in use", s.Active[0])
	}
	if len(s.Behind) > 0 {
		line += "; not yet held by " + strings.Join(s.Behind, ", ")
	}
	return line
}

func rotateSecretCommand() *cli.Command {
	return &cli.Command{
		Name:  "rotate-secret",
		Usage: "move the whole network to a new secret, so an evicted member's copy opens nothing",
		Description: `Draws a new network secret on this host and sends it to every member that is
not evicted, sealed to each member's own key (other members relay it but
cannot read it). Each member advertises the newest secret it holds; a pair of
members switches its WireGuard preshared key and control connections to the
new secret as soon as both hold it, so no traffic is dropped, and the old
secret stops being accepted once every reachable member holds the new one.
Join tokens made before stop working: make new ones with 'weavewg token create'.

A member that is down now gets the new secret from the first member it
reaches when it comes back. 'weavewg status' shows the epoch and who does not
hold it yet. Run it after 'weavewg evict'. Password networks (--password):
the new secret is random; hosts still started with the old --password
alone cannot join any more.`,
		Flags: []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print the result as JSON"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("rotate-secret takes no arguments (got %q)", c.Args().First())
			}
			var res api.SecretRotation
			if err := newClient(c).do("POST", api.PathRotateSecret, struct{}{}, &res); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(res)
			}
			fmt.Printf("rotated the network secret to epoch %d (id %s), sealed to %d member(s) including this one.\n", res.Epoch, res.ID, res.Recipients)
			fmt.Println("Older join tokens no longer work; 'weavewg status' shows which members do not hold it yet.")
			return nil
		},
	}
}
