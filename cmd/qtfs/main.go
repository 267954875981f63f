// Command qtfs serves host directories (qtfs serve) and mounts them on the DPU
// (qtfs mount). See docs/qtfs.md.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:     "qtfs",
		Usage:    "share host directories with the DPU at identical paths",
		Commands: []*cli.Command{serveCommand, mountCommand, umountCommand, infoCommand},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "qtfs:", err)
		os.Exit(1)
	}
}
