package rexec

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
	"github.com/dpu-offload/offload/api/transport"
)

// MaxFrameSize bounds one frame's payload. An ExecRequest carries argv and the
// environment, which the kernel caps at a few MiB together; 1 MiB is plenty
// for the commands rexec exists for and keeps a hostile peer from making the
// server allocate much.
const MaxFrameSize = 1 << 20

// errFrameTooLarge is returned for a length prefix beyond MaxFrameSize.
var errFrameTooLarge = transport.ErrFrameTooLarge

// writeFrame writes m as one frame, in a single Write so concurrent writers
// only need to serialise whole calls.
func writeFrame(w io.Writer, m proto.Message) error {
	if err := transport.WriteFrame(w, m, MaxFrameSize); err != nil {
		return fmt.Errorf("rexec: %w", err)
	}
	return nil
}

// readFrame reads one frame into m. It reads exactly the frame's bytes and
// nothing after it, so a data connection's raw bytes stay in the connection.
// io.EOF (unwrapped) is a clean close between frames.
func readFrame(r io.Reader, m proto.Message) error {
	if err := transport.ReadFrame(r, m, MaxFrameSize); err != nil {
		if err == io.EOF {
			return err
		}
		return fmt.Errorf("rexec: %w", err)
	}
	return nil
}

// readClientFrame reads one frame written by a client and checks that it
// holds a known message.
func readClientFrame(r io.Reader) (*rexecv1.ClientFrame, error) {
	var f rexecv1.ClientFrame
	if err := readFrame(r, &f); err != nil {
		return nil, err
	}
	if f.GetMsg() == nil {
		return nil, errors.New("rexec: empty or unknown client frame")
	}
	return &f, nil
}

// readServerFrame reads one frame written by a server.
func readServerFrame(r io.Reader) (*rexecv1.ServerFrame, error) {
	var f rexecv1.ServerFrame
	if err := readFrame(r, &f); err != nil {
		return nil, err
	}
	if f.GetMsg() == nil {
		return nil, errors.New("rexec: empty or unknown server frame")
	}
	return &f, nil
}
