package server

import (
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// resolveFlags are used for every name a client sends.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// validName accepts exactly one path component.
func validName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return syscall.EINVAL
	case len(name) > 255:
		return syscall.ENAMETOOLONG
	case strings.ContainsAny(name, "/\x00"):
		return syscall.EINVAL
	}
	return nil
}

// openBeneath opens one component under dirfd without following symlinks.
func openBeneath(dirfd int, name string, flags int, mode uint32) (int, error) {
	if err := validName(name); err != nil {
		return -1, err
	}
	for {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
			Mode:    uint64(mode),
			Resolve: resolveFlags,
		})
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// pathFd returns an O_PATH fd for n; done releases it.
func (ss *session) pathFd(n *node) (int, func(), error) {
	if n.fd >= 0 {
		return n.fd, func() {}, nil
	}
	fd, err := openHandle(ss.exp.mountFd, n.handle, unix.O_PATH|unix.O_CLOEXEC|unix.O_NOFOLLOW)
	if err != nil {
		return -1, nil, err
	}
	return fd, func() { unix.Close(fd) }, nil
}

// openByHandleHook replaces unix.OpenByHandleAt in tests.
var openByHandleHook atomic.Pointer[func(int, unix.FileHandle, int) (int, error)]

func openByHandleAt(mountFd int, h unix.FileHandle, flags int) (int, error) {
	if f := openByHandleHook.Load(); f != nil {
		return (*f)(mountFd, h, flags)
	}
	return unix.OpenByHandleAt(mountFd, h, flags)
}

// openHandle opens the inode behind a file handle. A stale handle (its inode
// was unlinked and freed after the client looked it up) is, to the client, a
// name that no longer exists: ENOENT.
//
// The kernel may also answer a stale handle with ENOMEM: on ext4, when the
// freed inode number is being reused by a file created at this very moment,
// iget_locked finds the new inode still I_CREATING and returns NULL, which
// ext4_iget reports as ENOMEM (TestStaleHandleInodeReuse shows it; tmpfs does
// not do this). It is transient: asked again once the creation finished, the
// kernel compares generations and says ESTALE. So ENOMEM is retried with a
// short backoff, and reported only if it persists (memory really short).
func openHandle(mountFd int, h unix.FileHandle, flags int) (int, error) {
	const budget = 100 * time.Millisecond
	var start time.Time
	delay := 10 * time.Microsecond
	for {
		fd, err := openByHandleAt(mountFd, h, flags)
		switch err {
		case nil:
			return fd, nil
		case unix.ESTALE:
			return -1, syscall.ENOENT
		case unix.EINTR:
			continue
		case unix.ENOMEM:
			if start.IsZero() {
				start = time.Now()
			} else if time.Since(start) > budget {
				return -1, err
			}
			time.Sleep(delay)
			delay = min(2*delay, 5*time.Millisecond)
			continue
		}
		return -1, err
	}
}

// reopen opens n for I/O with flags. Only regular files and directories are
// ever opened: device nodes on an export are never opened by the server.
func (ss *session) reopen(n *node, flags int) (int, error) {
	flags &^= unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_PATH
	flags |= unix.O_CLOEXEC
	switch n.mode {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		dfd, done, err := ss.dirFd(n)
		if err != nil {
			return -1, err
		}
		defer done()
		return unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	case unix.S_IFLNK:
		return -1, syscall.ELOOP
	default:
		return -1, syscall.EACCES
	}
	if n.fd < 0 {
		return openHandle(ss.exp.mountFd, n.handle, flags)
	}
	// The O_PATH fd is ours; re-opening it through /proc is how a held inode
	// is opened again without any path lookup (as virtiofsd does).
	return unix.Open(procPath(n.fd), flags, 0)
}

func toAttr(st *unix.Stat_t) qtfsv1.Attr {
	return qtfsv1.Attr{
		Ino: st.Ino, Size: uint64(st.Size), Blocks: uint64(st.Blocks),
		Atime:   qtfsv1.Timespec{Sec: st.Atim.Sec, Nsec: uint32(st.Atim.Nsec)},
		Mtime:   qtfsv1.Timespec{Sec: st.Mtim.Sec, Nsec: uint32(st.Mtim.Nsec)},
		Ctime:   qtfsv1.Timespec{Sec: st.Ctim.Sec, Nsec: uint32(st.Ctim.Nsec)},
		Mode:    st.Mode,
		Nlink:   uint32(st.Nlink),
		Uid:     st.Uid,
		Gid:     st.Gid,
		Rdev:    uint32(st.Rdev),
		Blksize: uint32(st.Blksize),
	}
}

// errno maps an error to the errno sent to the client.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
