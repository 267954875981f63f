//go:build tools

// Package deps pins the libraries the project is built on, so that go.mod and
// go.sum carry them before every package that uses them exists.
package deps

import (
	_ "github.com/containerd/cgroups/v3/cgroup1"
	_ "github.com/containerd/cgroups/v3/cgroup2"
	_ "github.com/containerd/console"
	_ "github.com/containerd/containerd/api/events"
	_ "github.com/containerd/containerd/api/runtime/task/v3"
	_ "github.com/containerd/containerd/v2/pkg/shim"
	_ "github.com/containerd/containerd/v2/pkg/stdio"
	_ "github.com/containerd/errdefs"
	_ "github.com/containerd/errdefs/pkg/errgrpc"
	_ "github.com/containerd/fifo"
	_ "github.com/containerd/go-runc"
	_ "github.com/containerd/log"
	_ "github.com/containerd/ttrpc"
	_ "github.com/containerd/typeurl/v2"
	_ "github.com/hanwen/go-fuse/v2/fs"
	_ "github.com/hanwen/go-fuse/v2/fuse"
	_ "github.com/mdlayher/vsock"
	_ "github.com/opencontainers/runtime-spec/specs-go"
	_ "github.com/pelletier/go-toml/v2"
	_ "github.com/urfave/cli/v2"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/protobuf/proto"
)
