// Package differ is offload-differ's service: a containerd diff plugin
// (proxy_plugins type "diff") on the DPU. containerd's overlayfs snapshotter
// keeps its root on a qtfs share of the host's identical path; extracting a
// layer through the share costs several round trips per file. For a snapshot
// on such a share this differ ships the layer blob, as stored, to
// offload-agent's unpack channel, and the host extracts it natively into the
// same directory (docs/unpack-protocol.md). Anything else (snapshots off the
// share, layers that need a stream processor, a host that declines) is
// extracted here with containerd's own applier.
package differ

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpu-offload/offload/api/transport"
	unpackv1 "github.com/dpu-offload/offload/api/unpack/v1"
	"github.com/dpu-offload/offload/shim"
)

// DefaultContentRoot is containerd's content store under its default root.
const DefaultContentRoot = "/var/lib/containerd/io.containerd.content.v1.content"

// copyBuffer is the size of each read from the content store and write to
// the agent: large enough that an mTLS stream is written in full records.
const copyBuffer = 1 << 20

// Config says where the agent is and which DPU paths are shared.
type Config struct {
	// Agent is the shim's config (shim.toml): the agent's address, TLS
	// files and dial timeout.
	Agent *shim.Config
	// ContentRoot is the DPU containerd's content store directory; blobs
	// are read from it by digest.
	ContentRoot string
	// SharedPrefixes are DPU directories that are qtfs shares of the
	// host's identical paths (the overlayfs snapshotter's root).
	SharedPrefixes []string
}

// Stats counts what the differ did, for its log and tests.
type Stats struct {
	Host     int64 // layers extracted by the host
	Local    int64 // layers extracted here
	Declined int64 // of those, layers the host declined (NotImplemented)
}

// Service implements containerd's diff API.
type Service struct {
	diffapi.UnimplementedDiffServer
	cfg      Config
	addr     transport.Address
	sec      transport.Security
	store    content.Provider
	local    diff.Applier
	prefixes []string

	host, localN, declined atomic.Int64
	warnOnce               sync.Once
}

var _ diffapi.DiffServer = (*Service)(nil)

// New checks cfg and opens the content store.
func New(cfg Config) (*Service, error) {
	if cfg.Agent == nil {
		return nil, errors.New("differ: no agent config")
	}
	if err := cfg.Agent.Validate(); err != nil {
		return nil, fmt.Errorf("differ: %w", err)
	}
	addr, err := transport.ParseAddress(cfg.Agent.AgentAddress)
	if err != nil {
		return nil, fmt.Errorf("differ: agent_address: %w", err)
	}
	if cfg.ContentRoot == "" {
		cfg.ContentRoot = DefaultContentRoot
	}
	if !filepath.IsAbs(cfg.ContentRoot) {
		return nil, fmt.Errorf("differ: content root %q is not absolute", cfg.ContentRoot)
	}
	s := &Service{cfg: cfg, addr: addr, sec: cfg.Agent.Security()}
	s.store = &lazyStore{root: cfg.ContentRoot}
	s.local = apply.NewFileSystemApplier(s.store)
	for _, p := range cfg.SharedPrefixes {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("differ: shared prefix %q is not absolute", p)
		}
		s.prefixes = append(s.prefixes, filepath.Clean(p))
	}
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Service) Register(gs *grpc.Server) { diffapi.RegisterDiffServer(gs, s) }

// Stats returns the counters.
func (s *Service) Stats() Stats {
	return Stats{Host: s.host.Load(), Local: s.localN.Load(), Declined: s.declined.Load()}
}

// Apply extracts one layer onto mounts: on the host when the mounts are on
// a shared prefix, here otherwise.
func (s *Service) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	desc := oci.DescriptorFromProto(req.GetDiff())
	mounts := mount.FromProto(req.GetMounts())
	ns, _ := namespaces.Namespace(ctx)
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"namespace": ns, "digest": desc.Digest, "media_type": desc.MediaType}))
	start := time.Now()
	if len(req.GetPayloads()) == 0 && s.onShare(mounts) {
		d, err := s.applyOnHost(ctx, ns, desc, mounts, req.GetSyncFs())
		if err == nil {
			s.host.Add(1)
			log.G(ctx).WithFields(log.Fields{"diff_id": d.Digest, "duration": time.Since(start)}).Info("layer extracted on the host")
			return &diffapi.ApplyResponse{Applied: oci.DescriptorToProto(d)}, nil
		}
		if !errdefs.IsNotImplemented(err) {
			log.G(ctx).WithError(err).Warn("layer extraction on the host failed")
			return nil, errgrpc.ToGRPC(err)
		}
		s.declined.Add(1)
		log.G(ctx).WithError(err).Info("the host declined the layer; extracting it here")
	}
	var opts []diff.ApplyOpt
	if len(req.GetPayloads()) > 0 {
		payloads := make(map[string]typeurl.Any, len(req.GetPayloads()))
		for k, v := range req.GetPayloads() {
			payloads[k] = v
		}
		opts = append(opts, diff.WithPayloads(payloads))
	}
	opts = append(opts, diff.WithSyncFs(req.GetSyncFs()))
	if !unpackv1.LayerMediaTypes[desc.MediaType] {
		// A layer type only a stream processor configured in containerd
		// understands (containerd's built-in handlers would take an
		// encrypted layer for a plain tar): Unimplemented lets the diff
		// service try the next differ (walking), which runs inside
		// containerd and has them.
		return nil, status.Errorf(codes.Unimplemented, "offload-differ does not extract %s layers", desc.MediaType)
	}
	d, err := s.local.Apply(ctx, desc, mounts, opts...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.localN.Add(1)
	log.G(ctx).WithFields(log.Fields{"diff_id": d.Digest, "duration": time.Since(start)}).Info("layer extracted on the DPU")
	return &diffapi.ApplyResponse{Applied: oci.DescriptorToProto(d)}, nil
}

// Diff is not offered: containerd then uses the next differ in the diff
// service's order (walking).
func (s *Service) Diff(context.Context, *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	return nil, status.Error(codes.Unimplemented, "offload-differ only applies layers; comparing is left to the walking differ")
}

// onShare reports whether mounts is a shape the host extracts onto (one
// bind mount, or one overlay with an upperdir) and every path it names is
// beneath a shared prefix. The host checks again, for real.
func (s *Service) onShare(mounts []mount.Mount) bool {
	if len(mounts) != 1 {
		return false
	}
	m := mounts[0]
	switch {
	case m.Type == "overlay":
		upper := false
		for _, o := range m.Options {
			k, v, ok := strings.Cut(o, "=")
			if !ok {
				continue
			}
			switch k {
			case "upperdir", "workdir":
				upper = upper || k == "upperdir"
				if !s.shared(v) {
					return false
				}
			case "lowerdir":
				for _, d := range strings.Split(v, ":") {
					if !s.shared(d) {
						return false
					}
				}
			}
		}
		return upper
	case m.Type == "bind" || m.Type == "rbind":
		return s.shared(m.Source)
	}
	return false
}

func (s *Service) shared(p string) bool {
	if !filepath.IsAbs(p) {
		return false
	}
	p = filepath.Clean(p)
	for _, pre := range s.prefixes {
		if p == pre || strings.HasPrefix(p, pre+"/") {
			return true
		}
	}
	return false
}

// applyOnHost ships the blob over the unpack channel.
func (s *Service) applyOnHost(ctx context.Context, ns string, desc ocispec.Descriptor, mounts []mount.Mount, syncFS bool) (ocispec.Descriptor, error) {
	ra, err := s.store.ReaderAt(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read layer %s from %s: %w", desc.Digest, s.cfg.ContentRoot, err)
	}
	defer ra.Close()
	if ra.Size() != desc.Size {
		return ocispec.Descriptor{}, fmt.Errorf("layer %s is %d bytes in the content store, descriptor says %d: %w", desc.Digest, ra.Size(), desc.Size, errdefs.ErrFailedPrecondition)
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.Agent.Timeouts.Dial.D())
	defer cancel()
	conn, err := transport.Dial(dctx, s.addr, s.sec, transport.ChannelUnpack)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%w: connect to offload-agent: %w", errdefs.ErrUnavailable, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	req := &unpackv1.ApplyRequest{
		ProtocolVersion: unpackv1.Version_VERSION_1,
		MediaType:       desc.MediaType,
		Digest:          desc.Digest.String(),
		Size:            desc.Size,
		SyncFs:          syncFS,
		Namespace:       ns,
	}
	for _, m := range mounts {
		req.Mounts = append(req.Mounts, &unpackv1.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	deadline, _ := dctx.Deadline()
	conn.SetDeadline(deadline)
	if err := unpackv1.WriteFrame(conn, req); err != nil {
		return ocispec.Descriptor{}, s.noAnswer(ctx, err)
	}
	rep, err := unpackv1.ReadReply(conn)
	if err != nil {
		return ocispec.Descriptor{}, s.noAnswer(ctx, err)
	}
	if e := rep.GetError(); e != nil {
		return ocispec.Descriptor{}, fromHost(e)
	}
	if rep.GetAccepted() == nil {
		return ocispec.Descriptor{}, fmt.Errorf("%w: offload-agent answered the request with %v", errdefs.ErrUnknown, rep)
	}
	conn.SetDeadline(time.Time{})

	werr := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(conn, io.NewSectionReader(ra, 0, desc.Size), make([]byte, copyBuffer))
		werr <- err
	}()
	rep, err = unpackv1.ReadReply(conn)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return ocispec.Descriptor{}, ctx.Err()
		}
		if we := <-werr; we != nil {
			err = fmt.Errorf("%w (sending the blob: %v)", err, we)
		}
		return ocispec.Descriptor{}, fmt.Errorf("%w: unpack on the host: %w", errdefs.ErrUnavailable, err)
	}
	if e := rep.GetError(); e != nil {
		return ocispec.Descriptor{}, fromHost(e)
	}
	a := rep.GetApplied()
	if a == nil {
		return ocispec.Descriptor{}, fmt.Errorf("%w: offload-agent answered the blob with %v", errdefs.ErrUnknown, rep)
	}
	if err := <-werr; err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%w: sending the blob: %w", errdefs.ErrUnavailable, err)
	}
	dgst, err := digest.Parse(a.GetDigest())
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%w: offload-agent's diff ID %q: %w", errdefs.ErrUnknown, a.GetDigest(), err)
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: dgst, Size: a.GetSize()}, nil
}

// noAnswer classifies a connection that closed before the first reply: an
// agent without the unpack channel (older than this differ) closes it
// unanswered; such a host declines, like one that answers NotImplemented.
func (s *Service) noAnswer(ctx context.Context, err error) error {
	var ne net.Error
	closed := errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	if closed && !(errors.As(err, &ne) && ne.Timeout()) {
		s.warnOnce.Do(func() {
			log.G(ctx).Warn("offload-agent closed the unpack channel unanswered (an agent without it?); layers are extracted on the DPU")
		})
		return fmt.Errorf("offload-agent does not serve the unpack channel: %w", errdefs.ErrNotImplemented)
	}
	return fmt.Errorf("%w: unpack request: %w", errdefs.ErrUnavailable, err)
}

// fromHost turns the host's error answer into an errdefs error.
func fromHost(e *unpackv1.Error) error {
	return fmt.Errorf("offload-agent: %w", errgrpc.ToNative(status.Error(codes.Code(e.GetCode()), e.GetMessage())))
}

// lazyStore opens containerd's content store on first use: the differ
// starts before containerd, which creates the directory. The store is only
// read, by digest.
type lazyStore struct {
	root string
	mu   sync.Mutex
	cs   content.Store
}

func (l *lazyStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	l.mu.Lock()
	if l.cs == nil {
		if fi, err := os.Stat(l.root); err != nil || !fi.IsDir() {
			l.mu.Unlock()
			return nil, fmt.Errorf("content root %q is not a directory (containerd's root + /io.containerd.content.v1.content): %w", l.root, errdefs.ErrNotFound)
		}
		cs, err := local.NewStore(l.root)
		if err != nil {
			l.mu.Unlock()
			return nil, fmt.Errorf("open content store %q: %w", l.root, err)
		}
		l.cs = cs
	}
	cs := l.cs
	l.mu.Unlock()
	return cs.ReaderAt(ctx, desc)
}
