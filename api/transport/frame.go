package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

// ErrFrameTooLarge is returned for a frame whose length exceeds the limit
// its channel sets.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame writes m as a 4-byte big-endian length and its protobuf
// encoding, in a single Write so that concurrent writers only need to
// serialise whole calls. Frames longer than max are refused. This is the
// framing of every channel that is not ttrpc or qtfs (stdio attach, rexec,
// unpack).
func WriteFrame(w io.Writer, m proto.Message, max int) error {
	b, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 4, 256), m)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	n := len(b) - 4
	if n > max {
		return fmt.Errorf("encode frame of %d bytes (limit %d): %w", n, max, ErrFrameTooLarge)
	}
	binary.BigEndian.PutUint32(b, uint32(n))
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// ReadFrame reads one frame of at most max bytes into m. It reads exactly
// the frame's bytes, so raw stream bytes that follow stay in r. When r ends
// before a frame begins it returns io.EOF itself (a clean close between
// frames); a frame cut short is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, m proto.Message, max int) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return io.EOF
		}
		return fmt.Errorf("read frame length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		return fmt.Errorf("frame of %d bytes (limit %d): %w", n, max, ErrFrameTooLarge)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read frame body: %w", err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	return nil
}
