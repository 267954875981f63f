// Command qtfs serves host directories (qtfs serve) and mounts them on the DPU
// (qtfs mount). See docs/qtfs.md.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/urfave/cli/v2"
)

func main() {
	// QTFS_CPUPROFILE=file writes a CPU profile of this process (for
	// performance work on serve and mount).
	if p := os.Getenv("QTFS_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	app := &cli.App{
		Name:     "qtfs",
		Usage:    "share host directories with the DPU at identical paths",
		Commands: []*cli.Command{serveCommand, mountCommand, umountCommand, infoCommand},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "qtfs:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
