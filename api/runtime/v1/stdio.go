package runtimev1

import (
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/dpu-offload/offload/api/transport"
)

// MaxStdioHeader is the largest StdioAttach or StdioAttachResponse message
// accepted on the stdio channel (docs/runtime-protocol.md, "Stdio channel").
const MaxStdioHeader = 4096

// ErrStdioHeaderTooLarge is returned for a length prefix above MaxStdioHeader.
var ErrStdioHeaderTooLarge = transport.ErrFrameTooLarge

// WriteStdioFrame writes m as a 4-byte big-endian length followed by its
// protobuf encoding, in one write so the header never interleaves.
func WriteStdioFrame(w io.Writer, m proto.Message) error {
	if err := transport.WriteFrame(w, m, MaxStdioHeader); err != nil {
		return fmt.Errorf("stdio header: %w", err)
	}
	return nil
}

// ReadStdioFrame reads one length-prefixed message into m. It reads exactly
// the frame and nothing after it, so the raw stream that follows stays
// unread in r.
func ReadStdioFrame(r io.Reader, m proto.Message) error {
	if err := transport.ReadFrame(r, m, MaxStdioHeader); err != nil {
		return fmt.Errorf("stdio header: %w", err)
	}
	return nil
}
