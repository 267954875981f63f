// Package plugin is the host side of the runtime offload: the executor
// behind offload-agent's "runtime" and "stdio" channels. One Service runs
// every container of every containerd namespace on the DPU, through runc
// (github.com/containerd/go-runc), in the shape of containerd's runc shim:
// service.go is the RPC edge (errdefs → ttrpc status once, here),
// container.go and process.go the init/exec state machine, stdio.go the
// pipes and consoles, events.go the ordered event log, cgroup.go stats and
// OOM, mounts.go the rootfs policy and mounts, state.go what survives an
// agent restart. docs/runtime-protocol.md is the wire spec and
// docs/offload-agent.md the daemon's manual.
package plugin
