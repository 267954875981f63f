package shim

import (
	"fmt"
	"os"

	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
)

// RegisterTaskPlugin registers the task service with pkg/shim's plugin
// registry; the shim binary calls it once before shim.RunShim.
func RegisterTaskPlugin() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			sd, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return NewTaskService(ic.Context, pp.(cshim.Publisher), sd.(shutdown.Service))
		},
	})
}

// BinaryOpts configures pkg/shim for this shim: it has no container children
// on the DPU, only logger binaries it waits for itself, so it neither
// reaps nor becomes a subreaper (a reaper would steal exec.Cmd.Wait's exits).
func BinaryOpts(c *cshim.Config) {
	c.NoReaper = true
	c.NoSubreaper = true
}

// PrintVersion handles -v/-version/--version with this project's version
// (pkg/shim would print containerd's) and reports whether it did.
func PrintVersion(args []string) bool {
	for _, a := range args[1:] {
		switch a {
		case "-v", "--v", "-version", "--version":
			fmt.Fprintf(os.Stdout, "containerd-shim-offload-v1:\n  Version:  %s\n  Runtime:  %s\n", Version, RuntimeName)
			return true
		}
	}
	return false
}
