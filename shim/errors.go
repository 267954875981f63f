package shim

import (
	"errors"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

// fromAgent turns an error from an agent RPC into an errdefs value: the agent
// sends errdefs values as grpc status codes; a dead connection is Unavailable.
func fromAgent(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ttrpc.ErrClosed) {
		return errors.Join(errdefs.ErrUnavailable, err)
	}
	return errgrpc.ToNative(err)
}

// toContainerd converts an error once, at the task API edge.
func toContainerd(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}
