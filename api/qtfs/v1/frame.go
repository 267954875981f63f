package qtfsv1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

const (
	// HeaderSize is the size of a frame header.
	HeaderSize = 16
	// MaxData is the largest data payload of a read or write (max_write).
	MaxData = 1 << 20
	// MaxPayload bounds every frame payload; a larger length is a protocol
	// error and closes the connection.
	MaxPayload = MaxData + 64<<10
)

// Frame flags.
const (
	// FlagReply marks a reply to the request with the same ID.
	FlagReply uint16 = 1 << 0
	// FlagNotify marks an unsolicited server-to-client notification (ID 0).
	FlagNotify uint16 = 1 << 1
	// FlagOneWay marks a request that gets no reply (forget).
	FlagOneWay uint16 = 1 << 2

	knownFlags = FlagReply | FlagNotify | FlagOneWay
)

// ErrFrameTooLarge is returned for a header announcing more than MaxPayload bytes.
var ErrFrameTooLarge = errors.New("qtfs: frame too large")

// Header is the fixed frame header.
type Header struct {
	Len   uint32 // payload bytes after the header
	Op    Op
	Flags uint16
	ID    uint64
}

// Put encodes h into b[:HeaderSize].
func (h Header) Put(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.Len)
	binary.LittleEndian.PutUint16(b[4:], uint16(h.Op))
	binary.LittleEndian.PutUint16(b[6:], h.Flags)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
}

// DecodeHeader parses and validates a frame header.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("qtfs: short header (%d bytes)", len(b))
	}
	h := Header{
		Len:   binary.LittleEndian.Uint32(b[0:]),
		Op:    Op(binary.LittleEndian.Uint16(b[4:])),
		Flags: binary.LittleEndian.Uint16(b[6:]),
		ID:    binary.LittleEndian.Uint64(b[8:]),
	}
	if h.Len > MaxPayload {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, h.Len)
	}
	if h.Flags&^knownFlags != 0 {
		return Header{}, fmt.Errorf("qtfs: unknown frame flags %#x", h.Flags)
	}
	if !h.Op.Valid() {
		return Header{}, fmt.Errorf("qtfs: unknown opcode %d", h.Op)
	}
	return h, nil
}

// ReadFrame reads one frame. buf is reused when large enough; the returned
// payload aliases it.
func ReadFrame(r io.Reader, hdr []byte, buf []byte) (Header, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:HeaderSize]); err != nil {
		return Header{}, nil, err
	}
	h, err := DecodeHeader(hdr)
	if err != nil {
		return Header{}, nil, err
	}
	if cap(buf) < int(h.Len) {
		buf = make([]byte, h.Len)
	}
	buf = buf[:h.Len]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Header{}, nil, err
	}
	return h, buf, nil
}

// WriteFrame writes header, body and an optional trailing data slice. On
// sockets with writev (unix, TCP) it is one writev and bulk data is never
// copied; on other connections (TLS, where every Write becomes at least one
// record) small frames are coalesced into a single Write, and a large data
// slice follows its header in the same gathered write where the connection
// offers one (WriteBuffers).
func WriteFrame(w io.Writer, h Header, body, data []byte) error {
	var hb [HeaderSize]byte
	h.Len = uint32(len(body) + len(data))
	h.Put(hb[:])
	switch w.(type) {
	case *net.UnixConn, *net.TCPConn:
		bufs := net.Buffers{hb[:], body}
		if len(data) > 0 {
			bufs = append(bufs, data)
		}
		_, err := bufs.WriteTo(w)
		return err
	}
	n := HeaderSize + len(body)
	if len(data) <= coalesceLimit {
		n += len(data)
	}
	bp := frameBufs.Get().(*[]byte)
	buf := append(append(append((*bp)[:0], hb[:]...), body...), data[:n-HeaderSize-len(body)]...)
	var err error
	if n == HeaderSize+len(body)+len(data) {
		_, err = w.Write(buf)
	} else if bw, ok := w.(buffersWriter); ok {
		// One gathered write (api/transport's TLS connections): the
		// records of the frame leave in a few system calls.
		_, err = bw.WriteBuffers([][]byte{buf, data})
	} else if _, err = w.Write(buf); err == nil {
		_, err = w.Write(data)
	}
	if cap(buf) <= 256<<10 {
		*bp = buf[:0]
		frameBufs.Put(bp)
	}
	return err
}

// buffersWriter is a connection that writes several buffers in order as
// cheaply as one (api/transport's TLS connections).
type buffersWriter interface {
	WriteBuffers(bufs [][]byte) (int64, error)
}

// coalesceLimit is the largest data slice copied to save a Write.
const coalesceLimit = 64 << 10

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
