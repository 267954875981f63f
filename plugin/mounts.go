package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// mountPolicy decides which host paths the DPU side may name as mount
// sources. The DPU is a peer, not root on the host: a rootfs mount that
// named /etc or / would hand the host to it.
type mountPolicy struct {
	prefixes []string // absolute, cleaned, symlinks resolved where they exist
}

func newMountPolicy(prefixes []string) (mountPolicy, error) {
	var p mountPolicy
	for _, pre := range prefixes {
		if !filepath.IsAbs(pre) {
			return p, fmt.Errorf("allowed mount prefix %q is not absolute: %w", pre, errdefs.ErrInvalidArgument)
		}
		pre = filepath.Clean(pre)
		if r, err := filepath.EvalSymlinks(pre); err == nil {
			pre = r
		}
		p.prefixes = append(p.prefixes, pre)
	}
	return p, nil
}

func (p mountPolicy) allows(path string) bool {
	for _, pre := range p.prefixes {
		if path == pre || strings.HasPrefix(path, pre+"/") || pre == "/" {
			return true
		}
	}
	return false
}

// pinnedPath is a host directory opened O_PATH after validation. Mounts use
// its /proc/self/fd path, so a symlink swapped in after the check cannot
// redirect the mount.
type pinnedPath struct {
	f *os.File
}

func (p pinnedPath) procPath() string { return fmt.Sprintf("/proc/self/fd/%d", p.f.Fd()) }

// pin opens path and checks that what it resolves to lies beneath an allowed
// prefix.
func (p mountPolicy) pin(what, path string) (pinnedPath, error) {
	if !filepath.IsAbs(path) {
		return pinnedPath{}, fmt.Errorf("%s %q is not an absolute path: %w", what, path, errdefs.ErrInvalidArgument)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return pinnedPath{}, fmt.Errorf("%s %q: %w: %w", what, path, err, errdefs.ErrInvalidArgument)
	}
	f := os.NewFile(uintptr(fd), path)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		f.Close()
		return pinnedPath{}, fmt.Errorf("resolve %s %q: %w", what, path, err)
	}
	if !p.allows(real) {
		f.Close()
		return pinnedPath{}, fmt.Errorf("%s %q (resolves to %q) is outside the allowed mount prefixes: %w",
			what, path, real, errdefs.ErrPermissionDenied)
	}
	return pinnedPath{f: f}, nil
}

// Options accepted per mount type; anything else (loop devices, id-mapping,
// helper types) is refused rather than passed to mount(2) on the host.
var (
	overlayFlags = map[string]bool{"ro": true, "rw": true, "nosuid": true, "nodev": true, "noexec": true,
		"relatime": true, "noatime": true, "volatile": true, "userxattr": true}
	overlayKeys = map[string]bool{"index": true, "redirect_dir": true, "metacopy": true, "xino": true,
		"nfs_export": true}
	bindFlags = map[string]bool{"bind": true, "rbind": true, "ro": true, "rw": true, "nosuid": true,
		"nodev": true, "noexec": true, "relatime": true, "noatime": true, "private": true, "rprivate": true,
		"slave": true, "rslave": true}
)

// preparedMounts are validated rootfs mounts whose paths point at pinned
// descriptors; release closes them once mounted.
type preparedMounts struct {
	mounts []mount.Mount
	pins   []pinnedPath
}

func (m *preparedMounts) release() {
	for _, p := range m.pins {
		p.f.Close()
	}
	m.pins = nil
}

// readlinkFd is where a pinned descriptor points.
func readlinkFd(p pinnedPath) (string, error) {
	return os.Readlink(p.procPath())
}

// prepareRootfs validates the DPU's rootfs mounts and rewrites their paths
// to pinned descriptors.
func (p mountPolicy) prepareRootfs(in []*runtimev1.Mount) (_ *preparedMounts, retErr error) {
	out := &preparedMounts{}
	defer func() {
		if retErr != nil {
			out.release()
		}
	}()
	pin := func(what, path string) (string, error) {
		pp, err := p.pin(what, path)
		if err != nil {
			return "", err
		}
		out.pins = append(out.pins, pp)
		return pp.procPath(), nil
	}
	for i, m := range in {
		nm := mount.Mount{Type: m.Type, Target: m.Target}
		if strings.Contains(m.Target, "..") {
			return nil, fmt.Errorf("mount %d target %q: %w", i, m.Target, errdefs.ErrInvalidArgument)
		}
		switch {
		case m.Type == "overlay":
			nm.Source = "overlay"
			err := walkOverlayOptions(m.Options, func(k string, dirs []string) error {
				for i, d := range dirs {
					pd, err := pin("overlay "+k, d)
					if err != nil {
						return err
					}
					dirs[i] = pd
				}
				nm.Options = append(nm.Options, k+"="+strings.Join(dirs, ":"))
				return nil
			}, func(o string) error {
				nm.Options = append(nm.Options, o)
				return nil
			})
			if err != nil {
				return nil, err
			}
		case isBindRootfs(m.Type, m.Options):
			src, err := pin("bind source", m.Source)
			if err != nil {
				return nil, err
			}
			if err := checkBindOptions(m.Options); err != nil {
				return nil, err
			}
			nm.Type, nm.Source = "bind", src
			nm.Options = append(nm.Options, m.Options...)
			if !hasBind(nm.Options) {
				nm.Options = append(nm.Options, "rbind")
			}
		default:
			return nil, fmt.Errorf("rootfs mount type %q is not supported (overlay, bind): %w", m.Type, errdefs.ErrInvalidArgument)
		}
		out.mounts = append(out.mounts, nm)
	}
	return out, nil
}

// walkOverlayOptions checks an overlay mount's options against the
// allowlists. It hands each directory option (lowerdir, with its colon
// separated list split, upperdir, workdir) to dir, which may rewrite the
// paths in place, and every other allowed option to flag, in order.
func walkOverlayOptions(opts []string, dir func(key string, paths []string) error, flag func(opt string) error) error {
	for _, o := range opts {
		k, v, hasV := strings.Cut(o, "=")
		var err error
		switch {
		case k == "lowerdir" && hasV:
			err = dir(k, strings.Split(v, ":"))
		case (k == "upperdir" || k == "workdir") && hasV:
			err = dir(k, []string{v})
		case !hasV && overlayFlags[k], hasV && overlayKeys[k]:
			err = flag(o)
		default:
			err = fmt.Errorf("overlay option %q is not allowed: %w", o, errdefs.ErrInvalidArgument)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// isBindRootfs reports whether a rootfs mount of typ with opts is a bind mount.
func isBindRootfs(typ string, opts []string) bool {
	return typ == "bind" || typ == "rbind" || (typ == "none" && hasBind(opts))
}

// checkBindOptions checks a bind mount's options against the allowlist.
func checkBindOptions(opts []string) error {
	for _, o := range opts {
		if !bindFlags[o] {
			return fmt.Errorf("bind option %q is not allowed: %w", o, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func hasBind(opts []string) bool {
	for _, o := range opts {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// mountRootfs mounts the prepared mounts at target and releases the pins.
func mountRootfs(pm *preparedMounts, target string) error {
	defer pm.release()
	if err := mount.All(pm.mounts, target); err != nil {
		mount.UnmountRecursive(target, unix.MNT_DETACH)
		return fmt.Errorf("mount rootfs at %s: %w", target, err)
	}
	return nil
}

// unmountRootfs removes every mount at or below target.
func unmountRootfs(target string) error {
	if err := mount.UnmountRecursive(target, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount rootfs %s: %w", target, err)
	}
	return nil
}

// isMountPoint reports whether path is a mount point (used by tests and
// delete's leftovers check).
func isMountPoint(path string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == path {
			return true
		}
	}
	return false
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
