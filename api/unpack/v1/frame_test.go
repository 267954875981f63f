package unpackv1

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

func frameBytes(t testing.TB, m proto.Message) []byte {
	var b bytes.Buffer
	if err := WriteFrame(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func sampleRequest() *ApplyRequest {
	return &ApplyRequest{
		ProtocolVersion: Version_VERSION_1,
		MediaType:       "application/vnd.oci.image.layer.v1.tar+gzip",
		Digest:          "sha256:" + strings.Repeat("ab", 32),
		Size:            1234,
		Mounts: []*Mount{{Type: "overlay", Source: "overlay", Options: []string{
			"index=off", "workdir=/var/lib/offload/snapshots/snapshots/3/work",
			"upperdir=/var/lib/offload/snapshots/snapshots/3/fs",
			"lowerdir=/var/lib/offload/snapshots/snapshots/2/fs:/var/lib/offload/snapshots/snapshots/1/fs"}}},
		SyncFs:    true,
		Namespace: "default",
	}
}

func TestRequestRoundTrip(t *testing.T) {
	req := sampleRequest()
	b := frameBytes(t, req)
	rest := []byte("blob bytes follow")
	r := bytes.NewReader(append(b, rest...))
	got, err := ReadRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, req) {
		t.Fatalf("got %v, want %v", got, req)
	}
	if r.Len() != len(rest) {
		t.Fatalf("ReadRequest consumed %d bytes of what follows the frame", len(rest)-r.Len())
	}
}

func TestRequestChecks(t *testing.T) {
	for name, mut := range map[string]func(*ApplyRequest){
		"version":    func(r *ApplyRequest) { r.ProtocolVersion = 7 },
		"media type": func(r *ApplyRequest) { r.MediaType = "" },
		"size":       func(r *ApplyRequest) { r.Size = -1 },
		"mounts":     func(r *ApplyRequest) { r.Mounts = nil },
	} {
		req := sampleRequest()
		mut(req)
		if _, err := ReadRequest(bytes.NewReader(frameBytes(t, req))); err == nil {
			t.Errorf("%s: bad request accepted", name)
		}
	}
}

func TestFrameLimits(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrameSize+1)
	if _, err := ReadRequest(bytes.NewReader(hdr[:])); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	big := sampleRequest()
	big.Mounts[0].Options = append(big.Mounts[0].Options, strings.Repeat("x", MaxFrameSize))
	if err := WriteFrame(&bytes.Buffer{}, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing an oversized frame: %v", err)
	}
	if _, err := ReadReply(bytes.NewReader(frameBytes(t, &ApplyReply{}))); err == nil {
		t.Fatal("empty reply accepted")
	}
	if _, err := ReadReply(bytes.NewReader(nil)); err == nil {
		t.Fatal("no reply accepted")
	}
}

// FuzzReadRequest feeds arbitrary bytes to the host's decoder: errors are
// fine; panics, hangs and reading past the frame are not, and whatever is
// accepted passes Check.
func FuzzReadRequest(f *testing.F) {
	f.Add(frameBytes(f, sampleRequest()))
	f.Add(frameBytes(f, &ApplyRequest{ProtocolVersion: Version_VERSION_1, MediaType: "x", Mounts: []*Mount{{}}}))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 3, 0x08, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		req, err := ReadRequest(r)
		if err != nil {
			return
		}
		if n := binary.BigEndian.Uint32(data); int(n) != len(data)-4-r.Len() {
			t.Fatalf("consumed %d body bytes, frame says %d", len(data)-4-r.Len(), n)
		}
		if err := req.Check(); err != nil {
			t.Fatalf("accepted a request that fails Check: %v", err)
		}
	})
}

// FuzzReadReply does the same for the DPU's decoder of the host's answers.
func FuzzReadReply(f *testing.F) {
	for _, m := range []*ApplyReply{
		{Result: &ApplyReply_Accepted{Accepted: &Accepted{}}},
		{Result: &ApplyReply_Applied{Applied: &Applied{Digest: "sha256:" + strings.Repeat("cd", 32), Size: 99, DurationNs: 5}}},
		{Result: &ApplyReply_Error{Error: &Error{Code: 7, Message: "outside the allowed mount prefixes"}}},
	} {
		f.Add(frameBytes(f, m))
	}
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{0x00, 0x10, 0x00, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		rep, err := ReadReply(r)
		if err != nil {
			return
		}
		if n := binary.BigEndian.Uint32(data); int(n) != len(data)-4-r.Len() {
			t.Fatalf("consumed %d body bytes, frame says %d", len(data)-4-r.Len(), n)
		}
		if rep.GetResult() == nil {
			t.Fatal("accepted a reply without a result")
		}
	})
}
