// Package client is the DPU side of qtfs: a FUSE file system (go-fuse raw
// API) that forwards every operation to a qtfs server over a Session.
package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/log"
	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// MountOptions configure a mount.
type MountOptions struct {
	SessionOptions
	Mountpoint string
	Cache      CacheMode     // default auto
	TTL        time.Duration // entry/attribute timeout for CacheAuto (default 1s)
	AllowOther bool
	Debug      bool
	// ReadAheadKB is the kernel readahead window for the mount (default
	// 16384): FUSE starts at 128 KiB, too small to keep several requests in
	// flight. Negative leaves the kernel default.
	ReadAheadKB int
	// ControlDir holds the per-mount control socket used by `qtfs info`
	// (default /run/qtfs); empty string from the caller means the default.
	ControlDir string
}

// DefaultControlDir is where mounts publish their control sockets.
const DefaultControlDir = "/run/qtfs"

// Mount is a live qtfs mount.
type Mount struct {
	opts    MountOptions
	sess    *Session
	fs      *qfs
	srv     *fuse.Server
	ctl     net.Listener
	ctlPath string
}

// ControlSocket returns the control socket path for a mountpoint.
func ControlSocket(dir, mountpoint string) string {
	if dir == "" {
		dir = DefaultControlDir
	}
	abs, err := filepath.Abs(mountpoint)
	if err == nil {
		mountpoint = abs
	}
	sum := sha256.Sum256([]byte(filepath.Clean(mountpoint)))
	return filepath.Join(dir, hex.EncodeToString(sum[:8])+".sock")
}

// NewMount connects to the server and mounts the export.
func NewMount(ctx context.Context, opts MountOptions) (*Mount, error) {
	if opts.Cache == "" {
		opts.Cache = CacheAuto
	}
	switch opts.Cache {
	case CacheAuto, CacheStrict, CacheNone:
	default:
		return nil, fmt.Errorf("unknown cache mode %q (auto, strict, none)", opts.Cache)
	}
	if opts.TTL <= 0 {
		opts.TTL = time.Second
	}
	if opts.ReadAheadKB == 0 {
		opts.ReadAheadKB = 16384
	}
	mp, err := filepath.Abs(opts.Mountpoint)
	if err != nil {
		return nil, err
	}
	opts.Mountpoint = mp
	sess, err := Connect(ctx, opts.SessionOptions)
	if err != nil {
		return nil, err
	}
	fs := newFS(sess, opts.Cache, opts.TTL)
	mo := &fuse.MountOptions{
		AllowOther:    opts.AllowOther,
		FsName:        "qtfs:" + opts.Export,
		Name:          "qtfs",
		MaxWrite:      qtfsv1.MaxData,
		MaxReadAhead:  qtfsv1.MaxData,
		MaxBackground: 64,
		EnableLocks:   fs.locks,
		// The kernel checks permissions against the host's attributes for the
		// DPU-side caller; the server runs as root and would not.
		Options:            []string{"default_permissions"},
		DirectMount:        true,
		Debug:              opts.Debug,
		DisableReadDirPlus: sess.Features()&qtfsv1.FeatReadDirPlus == 0,
		ExtraCapabilities:  killSuidgidCap,
	}
	if opts.Cache == CacheAuto {
		mo.EnableSymlinkCaching = false
	}
	srv, err := fuse.NewServer(fs, mp, mo)
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("mount %s: %w", mp, err)
	}
	m := &Mount{opts: opts, sess: sess, srv: srv, fs: fs}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		sess.Close()
		return nil, fmt.Errorf("mount %s: %w", mp, err)
	}
	if opts.ReadAheadKB >= 0 {
		setReadAhead(mp, opts.ReadAheadKB)
	}
	if err := m.listenControl(); err != nil {
		log.L.WithError(err).Warn("qtfs: no control socket; qtfs info will not work for this mount")
	}
	return m, nil
}

// Wait blocks until the file system is unmounted, then closes the session.
func (m *Mount) Wait() {
	m.srv.Wait()
	m.cleanup()
}

func (m *Mount) cleanup() {
	if m.ctl != nil {
		m.ctl.Close()
		os.Remove(m.ctlPath)
		m.ctl = nil
	}
	m.sess.Close()
	m.fs.closeNotes()
}

// Unmount unmounts and closes the session.
func (m *Mount) Unmount() error {
	err := m.srv.Unmount()
	m.srv.Wait()
	m.cleanup()
	return err
}

// Session returns the mount's session.
func (m *Mount) Session() *Session { return m.sess }

// MountInfo is what `qtfs info` prints.
type MountInfo struct {
	Mountpoint string `json:"mountpoint"`
	Cache      string `json:"cache"`
	Pid        int    `json:"pid"`
	Info
}

func (m *Mount) info() MountInfo {
	return MountInfo{Mountpoint: m.opts.Mountpoint, Cache: string(m.opts.Cache), Pid: os.Getpid(), Info: m.sess.Info()}
}

// listenControl serves MountInfo as JSON to each connection on a 0600 unix socket.
func (m *Mount) listenControl() error {
	path := ControlSocket(m.opts.ControlDir, m.opts.Mountpoint)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return err
	}
	m.ctl, m.ctlPath = l, path
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			json.NewEncoder(c).Encode(m.info())
			c.Close()
		}
	}()
	return nil
}

// QueryInfo asks the mount at mountpoint for its state.
func QueryInfo(controlDir, mountpoint string) (*MountInfo, error) {
	path := ControlSocket(controlDir, mountpoint)
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("no qtfs mount at %s (control socket %s): %w", mountpoint, path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var mi MountInfo
	if err := json.NewDecoder(c).Decode(&mi); err != nil {
		return nil, fmt.Errorf("read mount info: %w", err)
	}
	if mi.Mountpoint == "" {
		return nil, errors.New("empty mount info")
	}
	return &mi, nil
}

// setReadAhead raises the readahead of the mount's backing device (best
// effort: sysfs may be read-only in a container).
func setReadAhead(mountpoint string, kb int) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(strconv.Itoa(kb)), 0o644); err != nil {
		log.L.WithError(err).Debug("qtfs: cannot set readahead")
	}
}
