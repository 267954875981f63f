package plugin

import (
	"archive/tar"
	"bytes"
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
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	unpackv1 "github.com/dpu-offload/offload/api/unpack/v1"
	"github.com/dpu-offload/offload/internal/testlayer"
)

// unpackAgent is a Service whose unpack channel is served on a unix socket.
type unpackAgent struct {
	svc  *Service
	sock string
	dir  string // the allowed mount prefix
}

func newUnpackAgent(t *testing.T, mut func(*Config)) *unpackAgent {
	t.Helper()
	requireRoot(t)
	if !testing.Verbose() {
		log.SetLevel("warn")
	}
	root := t.TempDir()
	ua := &unpackAgent{dir: filepath.Join(root, "snapshots"), sock: filepath.Join(root, "unpack.sock")}
	if err := os.MkdirAll(ua.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.StateDir, cfg.BundleDir, cfg.RuncRoot = filepath.Join(root, "state"), filepath.Join(root, "bundles"), filepath.Join(root, "runc")
	cfg.AllowedMountPrefixes = []string{ua.dir}
	if mut != nil {
		mut(&cfg)
	}
	svc, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", ua.sock)
	if err != nil {
		t.Fatal(err)
	}
	go svc.ServeUnpack(l)
	t.Cleanup(func() { l.Close(); svc.Close() })
	ua.svc = svc
	return ua
}

// sendLayer speaks the unpack protocol the way offload-differ does and
// returns the host's final answer as a Go error (errdefs kinds) or result.
func (ua *unpackAgent) sendLayer(t *testing.T, l testlayer.Layer, mounts []*unpackv1.Mount, blob io.Reader) (*unpackv1.Applied, error) {
	t.Helper()
	conn, err := net.Dial("unix", ua.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	req := &unpackv1.ApplyRequest{ProtocolVersion: unpackv1.Version_VERSION_1, MediaType: l.Desc.MediaType,
		Digest: l.Desc.Digest.String(), Size: l.Desc.Size, Mounts: mounts, Namespace: "test"}
	if err := unpackv1.WriteFrame(conn, req); err != nil {
		t.Fatal(err)
	}
	rep, err := unpackv1.ReadReply(conn)
	if err != nil {
		t.Fatal(err)
	}
	if e := rep.GetError(); e != nil {
		return nil, errgrpc.ToNative(status.Error(codes.Code(e.Code), e.Message))
	}
	if rep.GetAccepted() == nil {
		t.Fatalf("first reply %v, want accepted or error", rep)
	}
	if blob == nil {
		blob = bytes.NewReader(l.Blob)
	}
	go io.Copy(conn, blob)
	if rep, err = unpackv1.ReadReply(conn); err != nil {
		t.Fatal(err)
	}
	if e := rep.GetError(); e != nil {
		return nil, errgrpc.ToNative(status.Error(codes.Code(e.Code), e.Message))
	}
	return rep.GetApplied(), nil
}

func bindMount(dir string) []*unpackv1.Mount {
	return []*unpackv1.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}
}

func overlayMount(upper, work string, lowers ...string) []*unpackv1.Mount {
	return []*unpackv1.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + strings.Join(lowers, ":")}}}
}

func toMounts(in []*unpackv1.Mount) []mount.Mount {
	var out []mount.Mount
	for _, m := range in {
		out = append(out, mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
	}
	return out
}

func mkdirs(t *testing.T, dirs ...string) {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUnpackMatchesContainerd extracts two layers through the unpack
// channel (the first onto a bind mount, the second onto an overlay upperdir,
// as the overlayfs snapshotter hands them out) and the same layers with
// containerd's own applier into a second tree: both trees, and the diff IDs,
// must be identical.
func TestUnpackMatchesContainerd(t *testing.T) {
	ua := newUnpackAgent(t, nil)
	l1, l2 := testlayer.Pair(t)

	ours := filepath.Join(ua.dir, "ours")
	ref := filepath.Join(ua.dir, "ref")
	for _, r := range []string{ours, ref} {
		mkdirs(t, filepath.Join(r, "1/fs"), filepath.Join(r, "2/fs"), filepath.Join(r, "2/work"))
	}
	got1, err := ua.sendLayer(t, l1, bindMount(filepath.Join(ours, "1/fs")), nil)
	if err != nil {
		t.Fatal(err)
	}
	got2, err := ua.sendLayer(t, l2, overlayMount(filepath.Join(ours, "2/fs"), filepath.Join(ours, "2/work"), filepath.Join(ours, "1/fs")), nil)
	if err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	applier := apply.NewFileSystemApplier(cs)
	var want []ocispec.Descriptor
	for i, step := range []struct {
		l      testlayer.Layer
		mounts []*unpackv1.Mount
	}{
		{l1, bindMount(filepath.Join(ref, "1/fs"))},
		{l2, overlayMount(filepath.Join(ref, "2/fs"), filepath.Join(ref, "2/work"), filepath.Join(ref, "1/fs"))},
	} {
		if err := content.WriteBlob(ctx, cs, fmt.Sprint("l", i), bytes.NewReader(step.l.Blob), step.l.Desc); err != nil {
			t.Fatal(err)
		}
		d, err := applier.Apply(ctx, step.l.Desc, toMounts(step.mounts))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, d)
	}
	for i, g := range []*unpackv1.Applied{got1, got2} {
		if g.Digest != want[i].Digest.String() || g.Size != want[i].Size {
			t.Errorf("layer %d: host says %s (%d bytes), containerd %s (%d bytes)", i+1, g.Digest, g.Size, want[i].Digest, want[i].Size)
		}
	}
	if got1.Digest != l1.DiffID.String() || got2.Digest != l2.DiffID.String() {
		t.Errorf("diff IDs %s %s, want %s %s", got1.Digest, got2.Digest, l1.DiffID, l2.DiffID)
	}
	for _, d := range []string{"1/fs", "2/fs"} {
		testlayer.DiffTrees(t, d, testlayer.Tree(t, filepath.Join(ours, d)), testlayer.Tree(t, filepath.Join(ref, d)))
	}
	if isMountPoint(ua.svc.unpackStage) || isMountPoint(filepath.Join(ua.svc.unpackStage, "upper")) {
		t.Error("the confined extraction's mounts are visible in the host's mount namespace")
	}
	// Spot checks that the comparison above compared something.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(ours, "2/fs/etc/passwd"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/passwd in layer 2 is not an overlay whiteout: %v %o", err, st.Mode)
	}
	if v := make([]byte, 8); func() bool {
		n, err := unix.Lgetxattr(filepath.Join(ours, "2/fs/opt/app"), "trusted.overlay.opaque", v)
		return err != nil || string(v[:n]) != "y"
	}() {
		t.Error("opt/app in layer 2 is not opaque")
	}
	if err := unix.Lstat(filepath.Join(ours, "2/fs/var/lib"), &st); err != nil || st.Mode&0o7777 != 0o750 {
		t.Errorf("var/lib, created implicitly in layer 2, did not inherit 0750 from layer 1: %v %o", err, st.Mode&0o7777)
	}
	if err := unix.Lstat(filepath.Join(ours, "1/fs/bin/su"), &st); err != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/su lost its setuid bit: %v %o", err, st.Mode&0o7777)
	}
}

// TestUnpackRefusals: requests the host must not act on are answered with
// the matching errdefs kind, before any blob byte is read, and leave
// nothing behind.
func TestUnpackRefusals(t *testing.T) {
	ua := newUnpackAgent(t, nil)
	l1, _ := testlayer.Pair(t)
	target := filepath.Join(ua.dir, "1/fs")
	mkdirs(t, target)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(ua.dir, "link-out")); err != nil {
		t.Fatal(err)
	}
	encrypted := l1
	encrypted.Desc.MediaType = ocispec.MediaTypeImageLayerGzip + "+encrypted"
	for _, c := range []struct {
		name   string
		l      testlayer.Layer
		mounts []*unpackv1.Mount
		is     func(error) bool
	}{
		{"outside the prefixes", l1, bindMount(outside), errdefs.IsPermissionDenied},
		{"symlink out of the prefix", l1, bindMount(filepath.Join(ua.dir, "link-out")), errdefs.IsPermissionDenied},
		{"dot-dot out of the prefix", l1, bindMount(ua.dir + "/../../" + filepath.Base(outside)), errdefs.IsPermissionDenied},
		{"lowerdir outside", l1, overlayMount(target, target, outside), errdefs.IsPermissionDenied},
		{"read-only bind", l1, []*unpackv1.Mount{{Type: "bind", Source: target, Options: []string{"rbind", "ro"}}}, errdefs.IsInvalidArgument},
		{"overlay view without upperdir", l1, []*unpackv1.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + target}}}, errdefs.IsNotImplemented},
		{"unknown option", l1, []*unpackv1.Mount{{Type: "bind", Source: target, Options: []string{"rbind", "loop"}}}, errdefs.IsInvalidArgument},
		{"two mounts", l1, append(bindMount(target), bindMount(target)...), errdefs.IsNotImplemented},
		{"tmpfs", l1, []*unpackv1.Mount{{Type: "tmpfs", Source: "tmpfs"}}, errdefs.IsNotImplemented},
		{"encrypted layer", encrypted, bindMount(target), errdefs.IsNotImplemented},
		{"missing target", l1, bindMount(filepath.Join(ua.dir, "nope")), errdefs.IsInvalidArgument},
	} {
		_, err := ua.sendLayer(t, c.l, c.mounts, errReader{})
		if err == nil || !c.is(err) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if ents, _ := os.ReadDir(target); len(ents) != 0 {
		t.Errorf("refused requests wrote into the target: %v", ents)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("refused requests wrote outside: %v", ents)
	}
}

// errReader fails the test's blob writer if a refused request reads it.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("blob read after a refusal") }

// TestUnpackBadBlobs: a wrong digest, a truncated blob, a corrupt gzip
// stream, a device node and a disabled channel each end with a clear error
// and the connection closed, never a hang.
func TestUnpackBadBlobs(t *testing.T) {
	ua := newUnpackAgent(t, nil)
	l1, _ := testlayer.Pair(t)
	n := 0
	target := func() string {
		n++
		d := filepath.Join(ua.dir, fmt.Sprint(n), "fs")
		mkdirs(t, d)
		return d
	}

	wrong := l1
	wrong.Desc.Digest = digest.FromString("something else")
	if _, err := ua.sendLayer(t, wrong, bindMount(target()), nil); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("wrong digest: %v", err)
	}

	short := l1
	short.Desc.Size += 100 // the client sends 100 bytes fewer than it announced, then closes
	conn, err := net.Dial("unix", ua.sock)
	if err != nil {
		t.Fatal(err)
	}
	unpackv1.WriteFrame(conn, &unpackv1.ApplyRequest{ProtocolVersion: 1, MediaType: short.Desc.MediaType, Digest: short.Desc.Digest.String(),
		Size: short.Desc.Size, Mounts: bindMount(target())})
	if rep, err := unpackv1.ReadReply(conn); err != nil || rep.GetAccepted() == nil {
		t.Fatalf("truncated blob: first reply %v %v", rep, err)
	}
	conn.Write(short.Blob)
	conn.(*net.UnixConn).CloseWrite()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if rep, err := unpackv1.ReadReply(conn); err != nil || rep.GetError() == nil {
		t.Errorf("truncated blob: %v %v", rep, err)
	}
	conn.Close()

	corrupt := l1
	corrupt.Blob = append([]byte(nil), l1.Blob...)
	corrupt.Blob[len(corrupt.Blob)/2] ^= 0xff
	corrupt.Desc.Digest = digest.FromBytes(corrupt.Blob)
	if _, err := ua.sendLayer(t, corrupt, bindMount(target()), nil); err == nil {
		t.Error("corrupt gzip stream applied")
	}

	dev := testlayer.Make(t, []testlayer.Entry{{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null", Mode: 0o666, Devmajor: 1, Devminor: 3}}}, false)
	devTarget := target()
	if _, err := ua.sendLayer(t, dev, bindMount(devTarget), nil); !errdefs.IsPermissionDenied(err) {
		t.Errorf("device node: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(devTarget, "null")); err == nil {
		t.Error("device node created although allow_devices is off")
	}
	whiteout := testlayer.Make(t, []testlayer.Entry{{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "gone", Mode: 0o666}}}, false)
	if _, err := ua.sendLayer(t, whiteout, bindMount(target()), nil); err != nil {
		t.Errorf("a 0/0 whiteout device: %v", err)
	}

	// A garbage request gets an answer, not a hang.
	conn, err = net.Dial("unix", ua.sock)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	conn.Write([]byte{0, 0, 0, 2, 0xff, 0xff})
	if rep, err := unpackv1.ReadReply(conn); err != nil || rep.GetError() == nil || codes.Code(rep.GetError().Code) != codes.InvalidArgument {
		t.Errorf("garbage request: %v %v", rep, err)
	}
	conn.Close()

	off := newUnpackAgent(t, func(c *Config) { c.Unpack.Disabled = true })
	d := filepath.Join(off.dir, "fs")
	mkdirs(t, d)
	if _, err := off.sendLayer(t, l1, bindMount(d), nil); !errdefs.IsNotImplemented(err) {
		t.Errorf("disabled: %v", err)
	}
}

// TestUnpackAllowDevices: with allow_devices a layer's device node is made.
func TestUnpackAllowDevices(t *testing.T) {
	ua := newUnpackAgent(t, func(c *Config) { c.Unpack.AllowDevices = true })
	d := filepath.Join(ua.dir, "fs")
	mkdirs(t, d)
	dev := testlayer.Make(t, []testlayer.Entry{{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null", Mode: 0o666, Devmajor: 1, Devminor: 3}}}, false)
	if _, err := ua.sendLayer(t, dev, bindMount(d), nil); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(d, "null"), &st); err != nil || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Fatalf("device node: %v %d:%d", err, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
}

// raceLayer is a layer whose many files sit in directory "d", and a racer
// that keeps swapping dir/d for a symlink to outside and back.
func raceLayer(t *testing.T) testlayer.Layer {
	es := []testlayer.Entry{testlayer.Dir("d", 0o755, 0)}
	for i := 0; i < 3000; i++ {
		es = append(es, testlayer.File(fmt.Sprintf("d/f%04d", i), "x", 0o644, 0))
	}
	return testlayer.Make(t, es, false)
}

func swapRacer(t *testing.T, dir, outside string) (stop func() int) {
	d, s := filepath.Join(dir, "d"), filepath.Join(dir, "s")
	if err := os.Symlink(outside, s); err != nil {
		t.Fatal(err)
	}
	var done atomic.Bool
	var swaps int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !done.Load() {
			// Atomic swaps: d is always there, mostly the directory and
			// for a moment the symlink, so that the extractor's checks see
			// the directory and, now and then, its next call the symlink.
			time.Sleep(300 * time.Microsecond)
			if unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, s, unix.RENAME_EXCHANGE) != nil {
				continue
			}
			swaps++
			unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, s, unix.RENAME_EXCHANGE)
		}
	}()
	return func() int { done.Store(true); wg.Wait(); return swaps }
}

// TestUnpackConfinedAgainstSwaps: while the host extracts, a directory in
// the target is swapped again and again for a symlink to a directory
// outside the prefix (what a compromised DPU could do through qtfs).
// Nothing may land outside. The same race against archive.Apply run
// directly on the host path escapes, which shows the race is real.
func TestUnpackConfinedAgainstSwaps(t *testing.T) {
	ua := newUnpackAgent(t, nil)
	l := raceLayer(t)
	outside := t.TempDir()

	escaped := false
	for i := 0; i < 100 && !escaped; i++ {
		dir := filepath.Join(ua.dir, fmt.Sprint("direct", i))
		mkdirs(t, filepath.Join(dir, "d"))
		stop := swapRacer(t, dir, outside)
		_, err := archive.Apply(context.Background(), dir, bytes.NewReader(l.Blob))
		swaps := stop()
		t.Logf("direct %d: %d swaps, %v", i, swaps, err)
		ents, _ := os.ReadDir(outside)
		escaped = len(ents) > 0
	}
	if !escaped {
		t.Fatal("self-test: the swap race never led archive.Apply outside its root in 100 layers; the harness proves nothing")
	}
	outside = t.TempDir()
	for i := 0; i < 10; i++ {
		dir := filepath.Join(ua.dir, fmt.Sprint("confined", i))
		mkdirs(t, filepath.Join(dir, "d"))
		stop := swapRacer(t, dir, outside)
		_, err := ua.sendLayer(t, l, bindMount(dir), nil)
		swaps := stop()
		if ents, _ := os.ReadDir(outside); len(ents) > 0 {
			t.Fatalf("round %d: %d entries written outside the target (%d swaps, apply error %v)", i, len(ents), swaps, err)
		}
	}
}
