package rexec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

// MaxFrameSize bounds one frame's payload. An ExecRequest carries argv and the
// environment, which the kernel caps at a few MiB together; 1 MiB is plenty
// for the commands rexec exists for and keeps a hostile peer from making the
// server allocate much.
const MaxFrameSize = 1 << 20

// errFrameTooLarge is returned for a length prefix beyond MaxFrameSize.
var errFrameTooLarge = errors.New("rexec: frame too large")

// writeFrame writes m as a 4-byte big-endian length and its encoding, in a
// single Write so concurrent writers only need to serialise whole calls.
func writeFrame(w io.Writer, m proto.Message) error {
	b, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 4, 64), m)
	if err != nil {
		return fmt.Errorf("rexec: encode frame: %w", err)
	}
	n := len(b) - 4
	if n > MaxFrameSize {
		return fmt.Errorf("rexec: encode frame of %d bytes: %w", n, errFrameTooLarge)
	}
	binary.BigEndian.PutUint32(b, uint32(n))
	_, err = w.Write(b)
	return err
}

// readFrame reads one frame into m. It reads exactly the frame's bytes and
// nothing after it, so a data connection's raw bytes stay in the connection.
func readFrame(r io.Reader, m proto.Message) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err // io.EOF: clean close between frames
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrameSize {
		return fmt.Errorf("rexec: frame of %d bytes: %w", n, errFrameTooLarge)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("rexec: read frame body: %w", err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("rexec: decode frame: %w", err)
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
