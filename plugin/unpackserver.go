package plugin

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"google.golang.org/grpc/status"

	"github.com/dpu-offload/offload/api/transport"
	unpackv1 "github.com/dpu-offload/offload/api/unpack/v1"
)

// unpackIdle bounds how long the host waits for the next blob bytes: a DPU
// that stops sending mid-layer must not hold an extraction slot forever.
const unpackIdle = time.Minute

// ServeUnpack accepts unpack-channel connections until l is closed. Each
// carries one layer blob to extract beneath the allowed mount prefixes
// (docs/unpack-protocol.md).
func (s *Service) ServeUnpack(l net.Listener) error {
	return serveConns(l, "unpack", s.handleUnpack)
}

func (s *Service) handleUnpack(conn net.Conn) {
	defer conn.Close()
	ctx := log.WithLogger(context.Background(), log.L.WithField("channel", "unpack"))
	conn.SetDeadline(time.Now().Add(headerTimeout))
	req, err := unpackv1.ReadRequest(conn)
	if err != nil {
		log.G(ctx).WithError(err).Warn("unpack: bad request")
		writeUnpackError(conn, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err))
		return
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{
		"namespace": req.GetNamespace(), "digest": req.GetDigest(), "media_type": req.GetMediaType(), "size": req.GetSize(),
	}))
	t, err := s.acceptUnpack(req)
	if err != nil {
		log.G(ctx).WithError(err).Info("unpack: refused")
		writeUnpackError(conn, err)
		return
	}
	defer t.release()
	select {
	case s.unpackSlots <- struct{}{}:
	case <-s.done:
		writeUnpackError(conn, fmt.Errorf("offload-agent is stopping: %w", errdefs.ErrUnavailable))
		return
	}
	defer func() { <-s.unpackSlots }()
	if err := unpackv1.WriteFrame(conn, &unpackv1.ApplyReply{Result: &unpackv1.ApplyReply_Accepted{Accepted: &unpackv1.Accepted{}}}); err != nil {
		log.G(ctx).WithError(err).Warn("unpack: accept")
		return
	}
	conn.SetDeadline(time.Time{})

	start := time.Now()
	layer, err := unpackLayer(ctx, s.unpackStage, t, &idleReader{c: conn, idle: unpackIdle}, s.cfg.Unpack.AllowDevices, req.GetSyncFs())
	if err != nil {
		log.G(ctx).WithError(err).Warn("unpack: layer failed")
		conn.SetDeadline(time.Now().Add(headerTimeout))
		writeUnpackError(conn, err)
		// The DPU may still be sending; closing over unread bytes would
		// reset the connection and could destroy the answer before the DPU
		// reads it. Half-close, and take what it sends until it closes.
		_ = transport.CloseWrite(conn)
		_, _ = io.Copy(io.Discard, conn)
		return
	}
	d := time.Since(start)
	log.G(ctx).WithFields(log.Fields{"diff_id": layer.diffID, "diff_size": layer.size, "duration": d}).Info("unpack: layer extracted")
	_ = unpackv1.WriteFrame(conn, &unpackv1.ApplyReply{Result: &unpackv1.ApplyReply_Applied{Applied: &unpackv1.Applied{
		Digest: layer.diffID.String(), Size: layer.size, DurationNs: int64(d),
	}}})
}

// acceptUnpack validates a request against the config and mount policy.
func (s *Service) acceptUnpack(req *unpackv1.ApplyRequest) (*unpackTarget, error) {
	if s.cfg.Unpack.Disabled {
		return nil, errUnpackDisabled
	}
	return s.policy.prepareUnpack(req)
}

// writeUnpackError answers with err's errdefs kind as a gRPC code.
func writeUnpackError(w io.Writer, err error) {
	st, _ := status.FromError(errgrpc.ToGRPC(err))
	_ = unpackv1.WriteFrame(w, &unpackv1.ApplyReply{Result: &unpackv1.ApplyReply_Error{Error: &unpackv1.Error{
		Code: int32(st.Code()), Message: err.Error(),
	}}})
}

// idleReader fails a read that waits longer than idle for data.
type idleReader struct {
	c    net.Conn
	idle time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(r.idle))
	return r.c.Read(p)
}
