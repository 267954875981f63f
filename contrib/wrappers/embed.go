// Package wrappers holds the DPU-side wrapper scripts that send host work
// through rexec. `offloadctl wrappers install` writes them out (see
// github.com/dpu-offload/offload/rexec/wrappers); the logic they run is
// `rexec wrap …`.
package wrappers

import "embed"

// Scripts are the wrapper scripts: cni-plugin (installed once per plugin
// name), mount, umount and modprobe. Each holds the placeholder @REXEC@ for
// the absolute path of the rexec binary and the marker Marker.
//
//go:embed cni-plugin mount umount modprobe
var Scripts embed.FS

// Marker is on the second line of every wrapper; the installer overwrites
// only files that carry it.
const Marker = "# dpu-offload-wrapper:"
