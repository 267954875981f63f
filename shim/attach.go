package shim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// maxAttachFrame is the largest StdioAttach / StdioAttachResponse message
// (docs/runtime-protocol.md).
const maxAttachFrame = 4096

var errFrameTooLarge = errors.New("stdio attach frame larger than 4096 bytes")

// writeFrame writes m as a 4-byte big-endian length and the message.
func writeFrame(w io.Writer, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxAttachFrame {
		return errFrameTooLarge
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// readFrame reads one length-prefixed message into m. It reads exactly the
// frame's bytes, so raw stream bytes that follow stay in r.
func readFrame(r io.Reader, m proto.Message) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("read frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxAttachFrame {
		return fmt.Errorf("%w (%d)", errFrameTooLarge, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("read frame body: %w", err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	return nil
}

// readAttachResponse reads the agent's answer to a StdioAttach.
func readAttachResponse(r io.Reader) error {
	var resp runtimev1.StdioAttachResponse
	if err := readFrame(r, &resp); err != nil {
		return err
	}
	if resp.Error != "" {
		return fmt.Errorf("agent refused stdio attach: %s", resp.Error)
	}
	return nil
}
