package qtfsv1

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// Seeds are the valid encodings of the samples, prefixed with the opcode.
func addSeeds(f *testing.F, reply bool) {
	if reply {
		for _, c := range sampleReplies() {
			body, data, _ := EncodeReply(binary.LittleEndian.AppendUint16(nil, uint16(c.op)), c.op, &c.r)
			f.Add(append(body, data...))
		}
		return
	}
	for _, r := range sampleRequests() {
		body, data, _ := EncodeRequest(binary.LittleEndian.AppendUint16(nil, uint16(r.Op)), &r)
		f.Add(append(body, data...))
	}
}

// FuzzDecodeRequest: the first two bytes pick the opcode. A decoded request
// must re-encode to the same bytes (the encoding is canonical).
func FuzzDecodeRequest(f *testing.F) {
	addSeeds(f, false)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 2 {
			return
		}
		op := Op(binary.LittleEndian.Uint16(b))
		var r Request
		if err := DecodeRequest(op, b[2:], &r); err != nil {
			return
		}
		body, data, err := EncodeRequest(nil, &r)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(append(body, data...), b[2:]) {
			t.Fatalf("not canonical")
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	addSeeds(f, true)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 2 {
			return
		}
		op := Op(binary.LittleEndian.Uint16(b))
		var r Reply
		if err := DecodeReply(op, b[2:], &r); err != nil {
			return
		}
		if _, _, err := EncodeReply(nil, op, &r); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, Header{Op: OpLookup, ID: 1}, []byte("abcdefgh\x01\x00x"), nil)
	f.Add(buf.Bytes())
	f.Add(make([]byte, HeaderSize))
	// A reply to a request sent again after a reconnect: the session-wide ID
	// of its first attempt (FeatReplay), far from any per-connection count.
	buf.Reset()
	WriteFrame(&buf, Header{Op: OpCreate, Flags: FlagReply, ID: 1<<40 + 7}, []byte("\x11\x00\x00\x00"), nil)
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := ReadFrame(bytes.NewReader(b), make([]byte, HeaderSize), nil)
		if err != nil {
			return
		}
		if int(h.Len) != len(p) || h.Len > MaxPayload {
			t.Fatalf("length mismatch %d %d", h.Len, len(p))
		}
	})
}
