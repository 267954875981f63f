// Command rexec runs allowlisted binaries on the host from the DPU
// (`rexec -- /abs/binary args…`), serves them (`rexec serve`), and holds the
// host-side netns helper and the DPU-side wrapper logic. docs/rexec.md
// describes its flags and config files.
package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dpu-offload/offload/version"
)

// exitRexecError is the exit code for rexec's own failures (bad usage,
// connection failed or lost), as ssh uses it.
const exitRexecError = 255

func main() {
	app := &cli.App{
		Name:      "rexec",
		Usage:     "run an allowlisted binary on the host",
		UsageText: "rexec [--addr ADDR] [--env K=V]… [--cwd DIR] [--tty] [--timeout D] -- /abs/binary args…",
		Version:   version.Version,
		Flags:     clientFlags,
		Action:    runAction,
		Commands:  []*cli.Command{serveCommand, netnsCommand, wrapCommand},
		// Flags after the binary belong to the binary.
		HideHelpCommand: true,
	}
	if err := app.Run(os.Args); err != nil {
		report(err)
		os.Exit(exitRexecError)
	}
}
