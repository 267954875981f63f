// Command offloadctl sets up the DPU side of dpu-offload and shows its state.
// Each subcommand lives in its own file and registers itself in commands.
package main

import (
	"fmt"
	"os"

	"github.com/dpu-offload/offload/version"
	"github.com/urfave/cli/v2"
)

// commands is filled by the init functions of this package's files.
var commands []*cli.Command

func main() {
	app := &cli.App{
		Name:     "offloadctl",
		Usage:    "set up and inspect the DPU side of dpu-offload",
		Version:  version.Version,
		Commands: commands,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "offloadctl:", err)
		os.Exit(1)
	}
}
