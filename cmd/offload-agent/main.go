// Command offload-agent is the host daemon of dpu-offload: one process that
// runs every offloaded container (runtime executor, plugin/), serves the
// host's directories to the DPU (qtfs) and runs allowlisted binaries for it
// (rexec), all on one transport listener. docs/offload-agent.md is its
// manual.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dpu-offload/offload/version"
)

func main() {
	app := &cli.App{
		Name:    "offload-agent",
		Usage:   "host side of dpu-offload: containers, qtfs exports and rexec for the DPU",
		Version: version.Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: DefaultConfigPath, Usage: "config file (TOML)"},
			&cli.StringFlag{Name: "log-level", Usage: "trace, debug, info, warn, error (overrides log_level)"},
			&cli.StringFlag{Name: "listen", Usage: "override the listen address (unix:///p, tcp://IP:PORT, vsock://CID:PORT)"},
		},
		Action: run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "offload-agent:", err)
		os.Exit(1)
	}
}
