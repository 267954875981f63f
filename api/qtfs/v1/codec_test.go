package qtfsv1

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleRequests() []Request {
	return []Request{
		{Op: OpHello, Hello: Hello{Magic: Magic, Version: Version, Features: FeatAll, Session: [16]byte{1, 2}, Export: "rootfs"}},
		// a peer from before FeatReplay
		{Op: OpHello, Hello: Hello{Magic: Magic, Version: Version, Features: FeatAll &^ FeatReplay, Session: [16]byte{3}, Export: "x"}},
		{Op: OpLookup, Node: 1, Name: "etc"},
		{Op: OpForget, Forgets: []Forget{{Node: 2, N: 3}, {Node: 7, N: 1}}},
		{Op: OpSetAttr, Node: 3, Fh: 9, Valid: 0x3f, Mode: 0o4755, Uid: 1000, Gid: 100, Len: 4096,
			Atime: Timespec{Sec: 5, Nsec: 6}, Mtime: Timespec{Sec: -1, Nsec: 999999999}, Caller: Caller{1, 2, 3}},
		{Op: OpRename, Node: 1, Name: "a", Node2: 4, Name2: "b", Flags: 1},
		{Op: OpWrite, Fh: 5, Off: 1 << 40, Flags: 0, Data: []byte("hello")},
		{Op: OpSetLkw, Fh: 5, Owner: 77, Lock: Lock{Start: 0, End: 1<<63 - 1, Type: 1, Pid: 42}, Flags: 1},
		{Op: OpCopyFileRange, Fh: 1, Off: 2, Fh2: 3, Off2: 4, Len: 5, Flags: 0},
		{Op: OpSymlink, Node: 1, Name: "l", Name2: "../../etc/passwd", Caller: Caller{0, 0, 1}},
		{Op: OpNotifyInvalEntry, Node: 8, Name: "x"},
	}
}

func sampleReplies() []struct {
	op Op
	r  Reply
} {
	a := Attr{Ino: 5, Size: 10, Mode: 0o100644, Nlink: 1, Mtime: Timespec{Sec: 100, Nsec: 5}}
	return []struct {
		op Op
		r  Reply
	}{
		{OpHello, Reply{Hello: HelloReply{Version: 1, Features: FeatAll, Generation: 99, Root: Entry{Node: 1, Attr: a}, ReadOnly: true}}},
		{OpHello, Reply{Hello: HelloReply{Version: 1, Features: FeatAll &^ FeatReplay, Generation: 1, Root: Entry{Node: 1, Attr: a}}}},
		{OpLookup, Reply{Entry: Entry{Node: 4, Attr: a}}},
		{OpLookup, Reply{Errno: 2}},
		{OpRead, Reply{Data: []byte("data")}},
		{OpCreate, Reply{Entry: Entry{Node: 4, Attr: a}, Fh: 12, Parent: Attr{Ino: 1, Mode: 0o40755, Nlink: 2}}},
		{OpUnlink, Reply{Parent: a}},
		{OpReadDir, Reply{Plus: true, Dirents: []Dirent{{Ino: 1, Off: 1, Type: 0o40000, Name: "."}, {Ino: 5, Off: 2, Type: 0o100000, Name: "f", Node: 4, Attr: a}}}},
		{OpReadDir, Reply{Dirents: []Dirent{{Ino: 1, Off: 1, Type: 0o40000, Name: "d"}}}},
		{OpStatFs, Reply{Statfs: Statfs{Blocks: 1, Bfree: 2, Bavail: 3, Files: 4, Ffree: 5, Bsize: 4096, NameLen: 255, Frsize: 4096}}},
		{OpGetXattr, Reply{N: 3, Data: []byte("abc")}},
		{OpGetLk, Reply{Lock: Lock{Start: 1, End: 2, Type: 2, Pid: 3}}},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, want := range sampleRequests() {
		body, data, err := EncodeRequest(nil, &want)
		if err != nil {
			t.Fatalf("%s: %v", want.Op, err)
		}
		var got Request
		if err := DecodeRequest(want.Op, append(body, data...), &got); err != nil {
			t.Fatalf("%s: %v", want.Op, err)
		}
		if len(want.Data) == 0 {
			got.Data, want.Data = nil, nil
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v, want %+v", want.Op, got, want)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	for _, c := range sampleReplies() {
		body, data, err := EncodeReply(nil, c.op, &c.r)
		if err != nil {
			t.Fatal(err)
		}
		var got Reply
		if err := DecodeReply(c.op, append(body, data...), &got); err != nil {
			t.Fatalf("%s: %v", c.op, err)
		}
		if !reflect.DeepEqual(got, c.r) {
			t.Errorf("%s: got %+v, want %+v", c.op, got, c.r)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, Header{Op: OpRead, Flags: FlagReply, ID: 7}, []byte{0, 0, 0, 0, 3, 0, 0, 0}, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	h, p, err := ReadFrame(&buf, make([]byte, HeaderSize), nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.Op != OpRead || h.ID != 7 || h.Flags != FlagReply || len(p) != 11 {
		t.Fatalf("bad frame %+v %q", h, p)
	}
}

func TestMalformed(t *testing.T) {
	hdr := make([]byte, HeaderSize)
	Header{Len: MaxPayload + 1, Op: OpRead}.Put(hdr)
	if _, err := DecodeHeader(hdr); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	Header{Len: 1, Op: 999}.Put(hdr)
	if _, err := DecodeHeader(hdr); err == nil {
		t.Fatal("unknown opcode accepted")
	}
	var r Request
	if err := DecodeRequest(OpLookup, []byte{1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, &r); err == nil {
		t.Fatal("truncated name accepted")
	}
	if err := DecodeRequest(OpForget, []byte{0xff, 0xff, 0xff, 0xff}, &r); err == nil {
		t.Fatal("forged count accepted")
	}
	if err := DecodeRequest(OpPing, []byte{0}, &r); err == nil {
		t.Fatal("trailing bytes accepted")
	}
}
