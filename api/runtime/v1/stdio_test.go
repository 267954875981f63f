package runtimev1

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestStdioFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := &StdioAttach{Process: &ProcessRef{Namespace: "default", ContainerId: "c1", ExecId: "e1"}, Stream: StdioStream_STDERR}
	if err := WriteStdioFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("raw bytes after the header")
	var out StdioAttach
	if err := ReadStdioFrame(&buf, &out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, &out) {
		t.Fatalf("got %v, want %v", &out, in)
	}
	if rest, _ := io.ReadAll(&buf); string(rest) != "raw bytes after the header" {
		t.Fatalf("frame reader consumed stream bytes: rest %q", rest)
	}
}

func TestStdioFrameRejectsOversize(t *testing.T) {
	var lb [4]byte
	binary.BigEndian.PutUint32(lb[:], MaxStdioHeader+1)
	var out StdioAttach
	err := ReadStdioFrame(bytes.NewReader(lb[:]), &out)
	if !errors.Is(err, ErrStdioHeaderTooLarge) {
		t.Fatalf("err = %v, want ErrStdioHeaderTooLarge", err)
	}
	big := &StdioAttachResponse{Error: string(make([]byte, MaxStdioHeader))}
	if err := WriteStdioFrame(io.Discard, big); !errors.Is(err, ErrStdioHeaderTooLarge) {
		t.Fatalf("write err = %v, want ErrStdioHeaderTooLarge", err)
	}
}

func TestStdioFrameTruncated(t *testing.T) {
	var buf bytes.Buffer
	_ = WriteStdioFrame(&buf, &StdioAttach{Process: &ProcessRef{ContainerId: "abc"}})
	b := buf.Bytes()
	for i := 0; i < len(b); i++ {
		var out StdioAttach
		if err := ReadStdioFrame(bytes.NewReader(b[:i]), &out); err == nil {
			t.Fatalf("truncated frame of %d/%d bytes decoded", i, len(b))
		}
	}
}

// FuzzReadStdioFrame feeds arbitrary bytes to the agent's header decoder: it
// must return an error or a message, never panic, and never read past the
// frame it reports.
func FuzzReadStdioFrame(f *testing.F) {
	var ok bytes.Buffer
	_ = WriteStdioFrame(&ok, &StdioAttach{Process: &ProcessRef{Namespace: "k8s.io", ContainerId: "c"}, Stream: StdioStream_STDOUT})
	f.Add(ok.Bytes())
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 3, 0x0a, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var m StdioAttach
		if err := ReadStdioFrame(r, &m); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(data[:4])
		if consumed := len(data) - r.Len(); consumed != int(4+n) {
			t.Fatalf("consumed %d bytes, frame is %d", consumed, 4+n)
		}
	})
}
