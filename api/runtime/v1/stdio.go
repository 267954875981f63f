package runtimev1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

// MaxStdioHeader is the largest StdioAttach or StdioAttachResponse message
// accepted on the stdio channel (docs/runtime-protocol.md, "Stdio channel").
const MaxStdioHeader = 4096

// ErrStdioHeaderTooLarge is returned for a length prefix above MaxStdioHeader.
var ErrStdioHeaderTooLarge = errors.New("stdio header exceeds 4096 bytes")

// WriteStdioFrame writes m as a 4-byte big-endian length followed by its
// protobuf encoding, in one write so the header never interleaves.
func WriteStdioFrame(w io.Writer, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal stdio header: %w", err)
	}
	if len(b) > MaxStdioHeader {
		return ErrStdioHeaderTooLarge
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write stdio header: %w", err)
	}
	return nil
}

// ReadStdioFrame reads one length-prefixed message into m. It reads exactly
// the frame and nothing after it, so the raw stream that follows stays
// unread in r.
func ReadStdioFrame(r io.Reader, m proto.Message) error {
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return fmt.Errorf("read stdio header length: %w", err)
	}
	n := binary.BigEndian.Uint32(lb[:])
	if n > MaxStdioHeader {
		return fmt.Errorf("%w: %d", ErrStdioHeaderTooLarge, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("read stdio header: %w", err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode stdio header: %w", err)
	}
	return nil
}
