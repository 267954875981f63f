package transport

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestFrames(t *testing.T) {
	var b bytes.Buffer
	if err := WriteFrame(&b, wrapperspb.String("hello"), 64); err != nil {
		t.Fatal(err)
	}
	b.WriteString("raw")
	var got wrapperspb.StringValue
	if err := ReadFrame(&b, &got, 64); err != nil || got.GetValue() != "hello" {
		t.Fatalf("read: %v %q", err, got.GetValue())
	}
	if b.String() != "raw" {
		t.Fatalf("ReadFrame consumed what follows the frame: %q left", b.String())
	}
	if err := ReadFrame(bytes.NewReader(nil), &got, 64); err != io.EOF {
		t.Fatalf("clean end before a frame: %v, want io.EOF", err)
	}
	if err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 9, 1}), &got, 64); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("frame cut short: %v", err)
	}
	if err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 65}), &got, 64); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	if err := WriteFrame(io.Discard, wrapperspb.String(string(make([]byte, 64))), 64); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing an oversized frame: %v", err)
	}
}
