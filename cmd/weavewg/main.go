// Command weavewg runs and controls a weavewg router: `weavewg launch` is the
// daemon; every other subcommand is a thin client of its local API.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/cni"
)

func main() {
	// A container runtime runs CNI plugins with CNI_COMMAND set and no
	// arguments: then this binary is weavewg's CNI plugin.
	if os.Getenv("CNI_COMMAND") != "" && len(os.Args) == 1 {
		cni.Main("weavewg CNI plugin " + versionString())
		return
	}
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "weavewg:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "weavewg",
		Usage: "one flat, encrypted network for containers on many hosts",
		Description: `weavewg connects hosts into an overlay network over WireGuard. Run
'weavewg launch' on the first host: it prints a 'weavewg join TOKEN' line to
run on every other host. Attach network namespaces to give them an address on
the overlay. Every command but launch and join talks to the local daemon
through its API socket (--api-socket or WEAVEWG_API_SOCKET).`,
		Version:              versionString(),
		EnableBashCompletion: true,
		HideVersion:          true,
		Commands: append([]*cli.Command{
			launchCommand(),
			joinCommand(),
			tokenCommand(),
			resetCommand(),
			connectCommand(),
			forgetCommand(),
			attachCommand(),
			detachCommand(),
			exposeCommand(),
			hideCommand(),
			statusCommand(),
			psCommand(),
			rmpeerCommand(),
			evictCommand(),
			rotateSecretCommand(),
			dnsArgsCommand(),
			reportCommand(),
			versionCommand(),
			cniCommand(),
			pluginGuardCommand(),
		}, dnsCommands()...),
	}
}
