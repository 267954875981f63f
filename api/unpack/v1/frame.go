package unpackv1

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/dpu-offload/offload/api/transport"
)

// LayerMediaTypes are the layer types the host extracts: plain, gzip and
// zstd tar, in their OCI and Docker spellings. Anything else (encrypted
// layers, types that need a stream processor configured in the DPU's
// containerd) is declined with NotImplemented.
var LayerMediaTypes = map[string]bool{
	"application/vnd.oci.image.layer.v1.tar":                       true,
	"application/vnd.oci.image.layer.v1.tar+gzip":                  true,
	"application/vnd.oci.image.layer.v1.tar+zstd":                  true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": true,
	"application/vnd.docker.image.rootfs.diff.tar":                 true,
	"application/vnd.docker.image.rootfs.diff.tar.gzip":            true,
	"application/vnd.docker.image.rootfs.diff.tar.zstd":            true,
	"application/vnd.docker.image.rootfs.foreign.diff.tar":         true,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    true,
}

// MaxFrameSize bounds one frame's payload. An ApplyRequest's size is
// dominated by the overlay lowerdir option, which lists every parent layer's
// directory (containerd caps an image at 128 layers: ~10 KiB of paths); 64 KiB
// leaves room and keeps a hostile peer from making the other side allocate.
const MaxFrameSize = 64 << 10

// ErrFrameTooLarge is returned for a length beyond MaxFrameSize.
var ErrFrameTooLarge = transport.ErrFrameTooLarge

// WriteFrame writes m as one frame.
func WriteFrame(w io.Writer, m proto.Message) error {
	if err := transport.WriteFrame(w, m, MaxFrameSize); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	return nil
}

// readFrame reads one frame into m. It reads exactly the frame's bytes, so
// the raw blob that follows a request stays unread in r.
func readFrame(r io.Reader, m proto.Message) error {
	if err := transport.ReadFrame(r, m, MaxFrameSize); err != nil {
		if err == io.EOF {
			return fmt.Errorf("unpack: connection closed before a frame: %w", io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("unpack: %w", err)
	}
	return nil
}

// ReadRequest reads the ApplyRequest that opens a connection and checks
// that it is one this version can act on. It does not judge the mounts:
// that is the host's mount policy.
func ReadRequest(r io.Reader) (*ApplyRequest, error) {
	var req ApplyRequest
	if err := readFrame(r, &req); err != nil {
		return nil, err
	}
	if err := req.Check(); err != nil {
		return nil, err
	}
	return &req, nil
}

// Check validates the request's own fields.
func (x *ApplyRequest) Check() error {
	if x.GetProtocolVersion() != Version_VERSION_1 {
		return fmt.Errorf("unpack: protocol version %d, want %d", x.GetProtocolVersion(), Version_VERSION_1)
	}
	if x.GetMediaType() == "" {
		return errors.New("unpack: request without a media type")
	}
	if x.GetSize() < 0 {
		return fmt.Errorf("unpack: negative blob size %d", x.GetSize())
	}
	if len(x.GetMounts()) == 0 {
		return errors.New("unpack: request without mounts")
	}
	return nil
}

// ReadReply reads one ApplyReply and checks that it holds a known result.
func ReadReply(r io.Reader) (*ApplyReply, error) {
	var rep ApplyReply
	if err := readFrame(r, &rep); err != nil {
		return nil, err
	}
	if rep.GetResult() == nil {
		return nil, errors.New("unpack: empty or unknown reply")
	}
	if a := rep.GetApplied(); a != nil && a.GetSize() < 0 {
		return nil, fmt.Errorf("unpack: applied layer of negative size %d", a.GetSize())
	}
	return &rep, nil
}
