// Command containerd-shim-offload-v1 is containerd's shim for the runtime
// io.containerd.offload.v1: containers created on the DPU run on the host
// through offload-agent (docs/containerd-shim-offload-v1.md).
package main

import (
	"context"
	"os"

	cshim "github.com/containerd/containerd/v2/pkg/shim"

	"github.com/dpu-offload/offload/shim"
)

func main() {
	if shim.PrintVersion(os.Args) {
		return
	}
	shim.RegisterTaskPlugin()
	cshim.RunShim(context.Background(), shim.NewManager(shim.RuntimeName), shim.BinaryOpts)
}
