package plugin

import (
	"archive/tar"
	"context"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	unpackv1 "github.com/dpu-offload/offload/api/unpack/v1"
)

// UnpackConfig is the [runtime.unpack] table: how the agent extracts image
// layers that offload-differ ships from the DPU (docs/unpack-protocol.md).
type UnpackConfig struct {
	// Disabled refuses every layer; offload-differ then extracts through
	// the qtfs share, file by file.
	Disabled bool `toml:"disabled"`
	// AllowDevices lets layers create character and block device nodes
	// (overlay whiteouts, 0/0 character devices, are always allowed). Off by
	// default, as for the snapshot share's qtfs export.
	AllowDevices bool `toml:"allow_devices"`
	// MaxConcurrent bounds the layers extracted at once; default 4.
	MaxConcurrent int `toml:"max_concurrent"`
}

// unpackTarget is a validated ApplyRequest: the directory to extract into
// and the parent layers' directories, each pinned by an O_PATH descriptor.
type unpackTarget struct {
	digest  digest.Digest
	size    int64
	overlay bool // convert whiteouts to overlay's form, parents apply
	dir     pinnedPath
	parents []pinnedPath
}

func (t *unpackTarget) release() {
	if t.dir.f != nil {
		t.dir.f.Close()
	}
	for _, p := range t.parents {
		p.f.Close()
	}
}

// prepareUnpack checks a request against the mount policy. It accepts the
// two shapes containerd's snapshotters hand a differ for an active
// snapshot: one read-write bind mount of the snapshot directory, or one
// overlay mount with an upperdir (applied directly into the upperdir, as
// containerd's own applier does).
func (p mountPolicy) prepareUnpack(req *unpackv1.ApplyRequest) (_ *unpackTarget, retErr error) {
	if !unpackv1.LayerMediaTypes[req.GetMediaType()] {
		return nil, fmt.Errorf("media type %q is not a layer the host extracts: %w", req.GetMediaType(), errdefs.ErrNotImplemented)
	}
	dgst, err := digest.Parse(req.GetDigest())
	if err != nil {
		return nil, fmt.Errorf("layer digest %q: %w: %w", req.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	if len(req.GetMounts()) != 1 {
		return nil, fmt.Errorf("%d mounts: the host extracts onto exactly one: %w", len(req.GetMounts()), errdefs.ErrNotImplemented)
	}
	t := &unpackTarget{digest: dgst, size: req.GetSize()}
	defer func() {
		if retErr != nil {
			t.release()
		}
	}()
	m := req.GetMounts()[0]
	switch {
	case m.GetType() == "overlay":
		t.overlay = true
		err := walkOverlayOptions(m.GetOptions(), func(k string, dirs []string) error {
			if k == "upperdir" && t.dir.f != nil {
				return fmt.Errorf("overlay mount names two upperdirs: %w", errdefs.ErrInvalidArgument)
			}
			for _, d := range dirs {
				pd, err := p.pinDir("overlay "+k, d)
				if err != nil {
					return err
				}
				switch k {
				case "upperdir":
					t.dir = pd
				case "lowerdir":
					t.parents = append(t.parents, pd)
				default: // workdir: checked, not used
					pd.f.Close()
				}
			}
			return nil
		}, func(o string) error {
			if o == "ro" {
				return fmt.Errorf("overlay mount is read-only: %w", errdefs.ErrInvalidArgument)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if t.dir.f == nil {
			return nil, fmt.Errorf("overlay mount without an upperdir (a read-only view): %w", errdefs.ErrNotImplemented)
		}
	case isBindRootfs(m.GetType(), m.GetOptions()):
		if slices.Contains(m.GetOptions(), "ro") {
			return nil, fmt.Errorf("bind mount is read-only: %w", errdefs.ErrInvalidArgument)
		}
		if err := checkBindOptions(m.GetOptions()); err != nil {
			return nil, err
		}
		if t.dir, err = p.pinDir("bind source", m.GetSource()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("mount type %q: the host extracts onto overlay upperdirs and bind mounts: %w", m.GetType(), errdefs.ErrNotImplemented)
	}
	return t, nil
}

// pinDir pins path like pin and checks that it is a directory.
func (p mountPolicy) pinDir(what, path string) (pinnedPath, error) {
	pp, err := p.pin(what, path)
	if err != nil {
		return pp, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(pp.f.Fd()), &st); err != nil {
		pp.f.Close()
		return pinnedPath{}, fmt.Errorf("stat %s %q: %w", what, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		pp.f.Close()
		return pinnedPath{}, fmt.Errorf("%s %q is not a directory: %w", what, path, errdefs.ErrInvalidArgument)
	}
	return pp, nil
}

// appliedLayer is what extracting a blob produced.
type appliedLayer struct {
	diffID digest.Digest // of the uncompressed tar
	size   int64         // of the uncompressed tar
}

// unpackLayer extracts exactly t.size bytes of blob from r into t's
// directory and checks the blob's digest. stage is an empty directory the
// confined extraction mounts its private root on.
func unpackLayer(ctx context.Context, stage string, t *unpackTarget, r io.Reader, allowDevices, syncFS bool) (appliedLayer, error) {
	blob := &countingReader{r: io.LimitReader(r, t.size), h: t.digest.Algorithm().Hash()}
	dr, err := compression.DecompressStream(blob)
	if err != nil {
		return appliedLayer{}, fmt.Errorf("decompress layer %s: %w", t.digest, err)
	}
	defer dr.Close()
	layer := &countingReader{r: dr, h: digest.Canonical.Hash()}

	opts := []archive.ApplyOpt{archive.WithFilter(deviceFilter(allowDevices))}
	if t.overlay {
		opts = append(opts, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	}
	if err := applyConfined(ctx, stage, t, layer, syncFS, opts); err != nil {
		return appliedLayer{}, fmt.Errorf("extract layer %s: %w", t.digest, err)
	}
	// The rest of the tar stream (end-of-archive padding) counts towards
	// the diff ID, and reading to EOF makes gzip check its trailer.
	if _, err := io.Copy(io.Discard, layer); err != nil {
		return appliedLayer{}, fmt.Errorf("read layer %s to its end: %w", t.digest, err)
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return appliedLayer{}, fmt.Errorf("read layer %s to its end: %w", t.digest, err)
	}
	if blob.n != t.size {
		return appliedLayer{}, fmt.Errorf("layer %s: %d of %d bytes arrived: %w", t.digest, blob.n, t.size, io.ErrUnexpectedEOF)
	}
	if got := digest.NewDigest(t.digest.Algorithm(), blob.h); got != t.digest {
		return appliedLayer{}, fmt.Errorf("layer blob digest is %s, want %s: %w", got, t.digest, errdefs.ErrFailedPrecondition)
	}
	return appliedLayer{diffID: digest.NewDigest(digest.Canonical, layer.h), size: layer.n}, nil
}

// deviceFilter refuses character and block device entries unless allowed.
func deviceFilter(allow bool) archive.Filter {
	return func(h *tar.Header) (bool, error) {
		if allow || (h.Typeflag != tar.TypeChar && h.Typeflag != tar.TypeBlock) {
			return true, nil
		}
		if h.Typeflag == tar.TypeChar && h.Devmajor == 0 && h.Devminor == 0 {
			return true, nil // an overlay whiteout in its native form
		}
		return false, fmt.Errorf("layer entry %q is a device node (%d:%d), which [runtime.unpack] allow_devices does not allow: %w",
			h.Name, h.Devmajor, h.Devminor, errdefs.ErrPermissionDenied)
	}
}

type countingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.h.Write(p[:n])
		c.n += int64(n)
	}
	return n, err
}

// applyConfined runs archive.Apply on a thread of its own whose root is a
// private tmpfs holding only the target directory (read-write, at /upper)
// and the parent layers (read-only, at /parent/N). The DPU can change the
// snapshot tree through qtfs while a layer is extracted; path checks in
// the extractor could then race with a directory swapped for a symlink,
// but from inside this root no path leads anywhere else on the host.
func applyConfined(ctx context.Context, stage string, t *unpackTarget, r io.Reader, syncFS bool, opts []archive.ApplyOpt) error {
	errc := make(chan error, 1)
	go func() {
		// The thread's fs context and mount namespace are changed below;
		// it is never unlocked, so the runtime ends the thread with this
		// goroutine instead of reusing it.
		runtime.LockOSThread()
		if err := enterStage(stage, t); err != nil {
			errc <- fmt.Errorf("confine extraction: %w", err)
			return
		}
		if len(t.parents) > 0 {
			ps := make([]string, len(t.parents))
			for i := range t.parents {
				ps[i] = fmt.Sprintf("/parent/%d", i)
			}
			opts = append(opts, archive.WithParents(ps))
		}
		_, err := archive.Apply(ctx, "/upper", r, opts...)
		if err == nil && syncFS {
			err = syncDir("/upper")
		}
		errc <- err
	}()
	return <-errc
}

// enterStage builds the private root on the calling (locked) thread and
// chroots into it. The target and parents are attached as detached clones
// of their pinned descriptors' mounts (open_tree), taken before the
// unshare: a path looked up again could have been swapped by then, and a
// plain bind of a descriptor from the old namespace is refused.
func enterStage(stage string, t *unpackTarget) error {
	clone := func(p pinnedPath, ro bool) (int, error) {
		fd, err := unix.OpenTree(int(p.f.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
		if err != nil {
			return -1, fmt.Errorf("open_tree: %w", err)
		}
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
		if ro {
			attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
		}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, attr); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("mount_setattr: %w", err)
		}
		return fd, nil
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	fd, err := clone(t.dir, false)
	if err != nil {
		return fmt.Errorf("clone target: %w", err)
	}
	fds = append(fds, fd)
	for i, p := range t.parents {
		fd, err := clone(p, true)
		if err != nil {
			return fmt.Errorf("clone parent %d: %w", i, err)
		}
		fds = append(fds, fd)
	}

	if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	// Nothing mounted from here on may propagate to the host's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", stage, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount stage tmpfs on %s: %w", stage, err)
	}
	attach := func(fd int, dst string) error {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("attach %s: %w", dst, err)
		}
		return nil
	}
	if err := attach(fds[0], filepath.Join(stage, "upper")); err != nil {
		return err
	}
	for i := range t.parents {
		if err := attach(fds[i+1], filepath.Join(stage, "parent", fmt.Sprint(i))); err != nil {
			return err
		}
	}
	// The stage's own tmpfs becomes read-only too: a symlink raced into
	// the target can only lead to read-only places or back into it.
	if err := unix.Mount("", stage, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("make stage read-only: %w", err)
	}
	if err := unix.Chroot(stage); err != nil {
		return fmt.Errorf("chroot %s: %w", stage, err)
	}
	return unix.Chdir("/")
}

func syncDir(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s for syncfs: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	return nil
}

// errUnpackDisabled answers every request when [runtime.unpack] disabled.
var errUnpackDisabled = fmt.Errorf("layer extraction on the host is disabled ([runtime.unpack] disabled): %w", errdefs.ErrNotImplemented)
