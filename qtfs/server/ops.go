package server

import (
	"runtime/debug"
	"syscall"
	"time"

	"github.com/containerd/log"
	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// FUSE setattr valid bits (the wire uses the same values).
const (
	fattrMode     = 1 << 0
	fattrUID      = 1 << 1
	fattrGID      = 1 << 2
	fattrSize     = 1 << 3
	fattrAtime    = 1 << 4
	fattrMtime    = 1 << 5
	fattrFh       = 1 << 6
	fattrAtimeNow = 1 << 7
	fattrMtimeNow = 1 << 8
)

// LkFlock marks a lock request as flock(2) rather than a POSIX lock.
const lkFlock = 1

// mutates reports whether req would change the export.
func mutates(req *qtfsv1.Request) bool {
	switch req.Op {
	case qtfsv1.OpSetAttr, qtfsv1.OpSymlink, qtfsv1.OpMknod, qtfsv1.OpMkdir, qtfsv1.OpUnlink, qtfsv1.OpRmdir,
		qtfsv1.OpRename, qtfsv1.OpLink, qtfsv1.OpCreate, qtfsv1.OpWrite, qtfsv1.OpSetXattr, qtfsv1.OpRemoveXattr,
		qtfsv1.OpFallocate, qtfsv1.OpCopyFileRange:
		return true
	case qtfsv1.OpOpen:
		return req.Flags&unix.O_ACCMODE != unix.O_RDONLY || req.Flags&unix.O_TRUNC != 0
	case qtfsv1.OpAccess:
		return req.Mode&unix.W_OK != 0
	}
	return false
}

// parentAttr fills in the changed directory's attributes for the ops whose
// reply carries them, so the client need not ask for them right after.
func (ss *session) parentAttr(req *qtfsv1.Request, rep *qtfsv1.Reply) {
	dir := req.Node
	switch req.Op {
	case qtfsv1.OpCreate, qtfsv1.OpMkdir, qtfsv1.OpMknod, qtfsv1.OpSymlink, qtfsv1.OpUnlink, qtfsv1.OpRmdir:
	case qtfsv1.OpLink:
		dir = req.Node2
	default:
		return
	}
	if _, fd, done, err := ss.dirAt(dir); err == nil {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			rep.Parent = toAttr(&st)
		}
		done()
	}
}

// handleInterruptible runs a setlkw that stops waiting (EINTR) when intr
// is closed by an interrupt from the client.
func (ss *session) handleInterruptible(req *qtfsv1.Request, intr chan struct{}) (*qtfsv1.Reply, func()) {
	ctxReq := *req
	ctxReq.Op = qtfsv1.OpSetLkw
	rep := &qtfsv1.Reply{}
	if err := ss.lockWait(&ctxReq, intr); err != nil {
		return &qtfsv1.Reply{Errno: uint32(errno(err))}, nil
	}
	return rep, nil
}

// lockWait takes a lock, retrying a non-blocking attempt with backoff until it
// is granted or the request is interrupted. (A blocking F_OFD_SETLKW could not
// be interrupted from another goroutine.)
func (ss *session) lockWait(req *qtfsv1.Request, intr chan struct{}) error {
	delay := time.Millisecond
	try := *req
	try.Op = qtfsv1.OpSetLk
	for {
		err := ss.lock(&try, &qtfsv1.Reply{})
		if err != syscall.EAGAIN && err != syscall.EWOULDBLOCK {
			return err
		}
		select {
		case <-intr:
			return syscall.EINTR
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// handle runs one request. release, if not nil, must be called once the
// reply has been written.
func (ss *session) handle(req *qtfsv1.Request) (rep *qtfsv1.Reply, release func()) {
	defer func() {
		if r := recover(); r != nil {
			log.L.Errorf("qtfs: panic in %s: %v\n%s", req.Op, r, debug.Stack())
			rep, release = &qtfsv1.Reply{Errno: uint32(syscall.EIO)}, nil
		}
	}()
	rep = &qtfsv1.Reply{}
	var err error
	if ss.exp.ReadOnly && mutates(req) {
		err = syscall.EROFS
	} else {
		release, err = ss.dispatch(req, rep)
	}
	if err == nil {
		ss.parentAttr(req, rep)
	}
	if err != nil {
		if release != nil {
			release()
		}
		return &qtfsv1.Reply{Errno: uint32(errno(err))}, nil
	}
	return rep, release
}

func (ss *session) dispatch(req *qtfsv1.Request, rep *qtfsv1.Reply) (func(), error) {
	switch req.Op {
	case qtfsv1.OpPing:
		return nil, nil
	case qtfsv1.OpForget:
		for _, f := range req.Forgets {
			ss.forget(f.Node, f.N)
		}
		return nil, nil
	case qtfsv1.OpLookup:
		_, pfd, done, err := ss.dirAt(req.Node)
		if err != nil {
			return nil, err
		}
		defer done()
		rep.Entry, err = ss.lookup(pfd, req.Name)
		return nil, err
	case qtfsv1.OpGetAttr:
		return nil, ss.getattr(req, &rep.Attr)
	case qtfsv1.OpSetAttr:
		return nil, ss.setattr(req, &rep.Attr)
	case qtfsv1.OpReadlink:
		return nil, ss.readlink(req, rep)
	case qtfsv1.OpSymlink, qtfsv1.OpMknod, qtfsv1.OpMkdir:
		return nil, ss.makeNode(req, &rep.Entry)
	case qtfsv1.OpUnlink, qtfsv1.OpRmdir:
		p, pfd, done, err := ss.dirAt(req.Node)
		if err != nil {
			return nil, err
		}
		defer done()
		if err := validName(req.Name); err != nil {
			return nil, err
		}
		ss.watch.Load().markEntry(p.id, req.Name)
		flags := 0
		if req.Op == qtfsv1.OpRmdir {
			flags = unix.AT_REMOVEDIR
		}
		return nil, unix.Unlinkat(pfd, req.Name, flags)
	case qtfsv1.OpRename:
		return nil, ss.rename(req)
	case qtfsv1.OpLink:
		return nil, ss.link(req, &rep.Entry)
	case qtfsv1.OpOpen:
		return nil, ss.open(req, rep)
	case qtfsv1.OpCreate:
		return nil, ss.create(req, rep)
	case qtfsv1.OpRead:
		return ss.read(req, rep)
	case qtfsv1.OpWrite:
		f, err := ss.file(req.Fh)
		if err != nil {
			return nil, err
		}
		ss.watch.Load().markIno(f.node.key)
		n, err := unix.Pwrite(f.fd, req.Data, int64(req.Off))
		rep.N = uint64(n)
		return nil, err
	case qtfsv1.OpRelease:
		if f := ss.takeFile(req.Fh); f != nil {
			if f.flags&unix.O_ACCMODE != unix.O_RDONLY {
				ss.watch.Load().markIno(f.node.key)
			}
			f.closeAll()
		}
		return nil, nil
	case qtfsv1.OpFlush:
		f, err := ss.file(req.Fh)
		if err != nil {
			return nil, err
		}
		if f.node != nil {
			f.node.dropLocks(req.Owner, 0)
		}
		return nil, nil
	case qtfsv1.OpFsync:
		var fd int
		if d, err := ss.dir(req.Fh); err == nil {
			fd = d.fd
		} else if f, err := ss.file(req.Fh); err == nil {
			fd = f.fd
		} else {
			return nil, err
		}
		if req.Flags&1 != 0 {
			return nil, unix.Fdatasync(fd)
		}
		return nil, unix.Fsync(fd)
	case qtfsv1.OpOpenDir:
		n, nfd, done, err := ss.dirAt(req.Node)
		if err != nil {
			return nil, err
		}
		fd, err := unix.Openat(nfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		done()
		if err != nil {
			return nil, err
		}
		rep.Fh = ss.addDir(&openDir{fd: fd, node: n})
		return nil, nil
	case qtfsv1.OpReadDir:
		return nil, ss.readdir(req, rep)
	case qtfsv1.OpReleaseDir:
		if d := ss.takeDir(req.Fh); d != nil {
			unix.Close(d.fd)
		}
		return nil, nil
	case qtfsv1.OpStatFs:
		return nil, ss.statfs(req, rep)
	case qtfsv1.OpSetXattr, qtfsv1.OpGetXattr, qtfsv1.OpListXattr, qtfsv1.OpRemoveXattr:
		return ss.xattr(req, rep)
	case qtfsv1.OpAccess:
		return nil, ss.access(req)
	case qtfsv1.OpFallocate:
		f, err := ss.file(req.Fh)
		if err != nil {
			return nil, err
		}
		ss.watch.Load().markIno(f.node.key)
		return nil, unix.Fallocate(f.fd, req.Mode, int64(req.Off), int64(req.Len))
	case qtfsv1.OpLseek:
		f, err := ss.file(req.Fh)
		if err != nil {
			return nil, err
		}
		off, err := unix.Seek(f.fd, int64(req.Off), int(req.Flags))
		rep.N = uint64(off)
		return nil, err
	case qtfsv1.OpCopyFileRange:
		in, err := ss.file(req.Fh)
		if err != nil {
			return nil, err
		}
		out, err := ss.file(req.Fh2)
		if err != nil {
			return nil, err
		}
		ss.watch.Load().markIno(out.node.key)
		offIn, offOut := int64(req.Off), int64(req.Off2)
		length := req.Len
		if length > 1<<30 {
			length = 1 << 30
		}
		n, err := unix.CopyFileRange(in.fd, &offIn, out.fd, &offOut, int(length), int(req.Flags))
		rep.N = uint64(n)
		return nil, err
	case qtfsv1.OpGetLk, qtfsv1.OpSetLk, qtfsv1.OpSetLkw:
		return nil, ss.lock(req, rep)
	}
	return nil, syscall.ENOSYS
}

// lookup resolves one name beneath dirfd and returns a node for it.
func (ss *session) lookup(dirfd int, name string) (qtfsv1.Entry, error) {
	fd, err := openBeneath(dirfd, name, unix.O_PATH, 0)
	if err != nil {
		return qtfsv1.Entry{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return qtfsv1.Entry{}, err
	}
	n, err := ss.adopt(fd, &st)
	if err != nil {
		return qtfsv1.Entry{}, err
	}
	return qtfsv1.Entry{Node: n.id, Attr: toAttr(&st)}, nil
}

func (ss *session) getattr(req *qtfsv1.Request, out *qtfsv1.Attr) error {
	var st unix.Stat_t
	if req.Fh != 0 {
		if f, err := ss.file(req.Fh); err == nil {
			if err := unix.Fstat(f.fd, &st); err != nil {
				return err
			}
			*out = toAttr(&st)
			return nil
		}
	}
	n, err := ss.node(req.Node)
	if err != nil {
		return err
	}
	fd, done, err := ss.pathFd(n)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	*out = toAttr(&st)
	return nil
}

func (ss *session) setattr(req *qtfsv1.Request, out *qtfsv1.Attr) error {
	n, err := ss.node(req.Node)
	if err != nil {
		return err
	}
	var f *openFile
	if req.Valid&fattrFh != 0 {
		f, _ = ss.file(req.Fh)
	}
	pfd, done, err := ss.pathFd(n)
	if err != nil {
		return err
	}
	defer done()
	ss.watch.Load().markIno(n.key)
	if req.Valid&(fattrUID|fattrGID) != 0 {
		uid, gid := -1, -1
		if req.Valid&fattrUID != 0 {
			uid = int(req.Uid)
		}
		if req.Valid&fattrGID != 0 {
			gid = int(req.Gid)
		}
		if err := unix.Fchownat(pfd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	if req.Valid&fattrMode != 0 {
		if n.mode == unix.S_IFLNK {
			return syscall.EOPNOTSUPP
		}
		if err := unix.Fchmodat(unix.AT_FDCWD, procPath(pfd), req.Mode&07777, 0); err != nil {
			return err
		}
	}
	if req.Valid&fattrSize != 0 {
		if f != nil {
			err = unix.Ftruncate(f.fd, int64(req.Len))
		} else {
			var fd int
			fd, err = ss.reopen(n, unix.O_WRONLY)
			if err == nil {
				err = unix.Ftruncate(fd, int64(req.Len))
				unix.Close(fd)
			}
		}
		if err != nil {
			return err
		}
	}
	if req.Valid&(fattrAtime|fattrMtime) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if req.Valid&fattrAtime != 0 {
			ts[0] = unix.Timespec{Sec: req.Atime.Sec, Nsec: int64(req.Atime.Nsec)}
			if req.Valid&fattrAtimeNow != 0 {
				ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if req.Valid&fattrMtime != 0 {
			ts[1] = unix.Timespec{Sec: req.Mtime.Sec, Nsec: int64(req.Mtime.Nsec)}
			if req.Valid&fattrMtimeNow != 0 {
				ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, procPath(pfd), ts, 0); err != nil {
			return err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return err
	}
	*out = toAttr(&st)
	return nil
}

func (ss *session) readlink(req *qtfsv1.Request, rep *qtfsv1.Reply) error {
	n, err := ss.node(req.Node)
	if err != nil {
		return err
	}
	if n.mode != unix.S_IFLNK {
		return syscall.EINVAL
	}
	fd, done, err := ss.pathFd(n)
	if err != nil {
		return err
	}
	defer done()
	buf := make([]byte, unix.PathMax)
	m, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return err
	}
	rep.Data = buf[:m]
	return nil
}

// ownNewFd is ownNew for a regular file the server holds open: fchown and
// fchmod on the descriptor, no path walks.
func (ss *session) ownNewFd(parentFd, fd int, mode uint32, c qtfsv1.Caller) error {
	var pst unix.Stat_t
	if err := unix.Fstat(parentFd, &pst); err != nil {
		return err
	}
	gid := c.Gid
	if pst.Mode&unix.S_ISGID != 0 {
		gid = pst.Gid
	}
	if err := unix.Fchown(fd, int(c.Uid), int(gid)); err != nil {
		return err
	}
	return unix.Fchmod(fd, mode&07777)
}

// ownNew gives a freshly created entry the caller's ownership and the exact
// requested mode (the server's umask is not applied; setuid/setgid bits are
// kept; a setgid parent passes on its group as on a local file system).
func (ss *session) ownNew(parentFd int, fd int, typ uint32, mode uint32, c qtfsv1.Caller) error {
	var pst unix.Stat_t
	if err := unix.Fstat(parentFd, &pst); err != nil {
		return err
	}
	gid := c.Gid
	if pst.Mode&unix.S_ISGID != 0 {
		gid = pst.Gid
		if typ == unix.S_IFDIR {
			mode |= unix.S_ISGID
		}
	}
	if err := unix.Fchownat(fd, "", int(c.Uid), int(gid), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if typ == unix.S_IFLNK {
		return nil
	}
	return unix.Fchmodat(unix.AT_FDCWD, procPath(fd), mode&07777, 0)
}

func (ss *session) makeNode(req *qtfsv1.Request, out *qtfsv1.Entry) error {
	p, pfd, done, err := ss.dirAt(req.Node)
	if err != nil {
		return err
	}
	defer done()
	if err := validName(req.Name); err != nil {
		return err
	}
	ss.watch.Load().markEntry(p.id, req.Name)
	var typ uint32
	switch req.Op {
	case qtfsv1.OpSymlink:
		typ = unix.S_IFLNK
		if req.Name2 == "" || len(req.Name2) >= unix.PathMax || containsNUL(req.Name2) {
			return syscall.EINVAL
		}
		// The target is stored, never followed by the server.
		err = unix.Symlinkat(req.Name2, pfd, req.Name)
	case qtfsv1.OpMkdir:
		typ = unix.S_IFDIR
		err = unix.Mkdirat(pfd, req.Name, 0o700)
	case qtfsv1.OpMknod:
		typ = req.Mode & unix.S_IFMT
		switch typ {
		case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK:
			req.Rdev = 0
		case unix.S_IFCHR, unix.S_IFBLK:
			whiteout := typ == unix.S_IFCHR && req.Rdev == 0
			if !whiteout && !ss.exp.AllowDevices {
				return syscall.EPERM
			}
		default:
			return syscall.EINVAL
		}
		err = unix.Mknodat(pfd, req.Name, typ|0o600, int(req.Rdev))
	}
	if err != nil {
		return err
	}
	fd, err := openBeneath(pfd, req.Name, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	if err := ss.ownNew(pfd, fd, typ, req.Mode, req.Caller); err != nil {
		unix.Close(fd)
		unix.Unlinkat(pfd, req.Name, map[bool]int{true: unix.AT_REMOVEDIR}[typ == unix.S_IFDIR])
		return err
	}
	return ss.adoptFd(fd, out)
}

func (ss *session) adoptFd(fd int, out *qtfsv1.Entry) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return err
	}
	n, err := ss.adopt(fd, &st)
	if err != nil {
		return err
	}
	*out = qtfsv1.Entry{Node: n.id, Attr: toAttr(&st)}
	return nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func (ss *session) rename(req *qtfsv1.Request) error {
	op, ofd, odone, err := ss.dirAt(req.Node)
	if err != nil {
		return err
	}
	defer odone()
	np, nfd, ndone, err := ss.dirAt(req.Node2)
	if err != nil {
		return err
	}
	defer ndone()
	if err := validName(req.Name); err != nil {
		return err
	}
	if err := validName(req.Name2); err != nil {
		return err
	}
	if req.Flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE|unix.RENAME_WHITEOUT) != 0 {
		return syscall.EINVAL
	}
	w := ss.watch.Load()
	w.markEntry(op.id, req.Name)
	w.markEntry(np.id, req.Name2)
	return unix.Renameat2(ofd, req.Name, nfd, req.Name2, uint(req.Flags))
}

func (ss *session) link(req *qtfsv1.Request, out *qtfsv1.Entry) error {
	n, err := ss.node(req.Node)
	if err != nil {
		return err
	}
	np, npfd, npdone, err := ss.dirAt(req.Node2)
	if err != nil {
		return err
	}
	defer npdone()
	if err := validName(req.Name); err != nil {
		return err
	}
	if n.isDir() {
		return syscall.EPERM
	}
	// The source is a node the client already holds (resolved beneath the
	// export); the target is one component beneath a held directory.
	fd, done, err := ss.pathFd(n)
	if err != nil {
		return err
	}
	ss.watch.Load().markEntry(np.id, req.Name)
	ss.watch.Load().markIno(n.key)
	err = unix.Linkat(fd, "", npfd, req.Name, unix.AT_EMPTY_PATH)
	done()
	if err != nil {
		return err
	}
	out.Node = 0
	e, err := ss.lookup(npfd, req.Name)
	*out = e
	return err
}

func (ss *session) open(req *qtfsv1.Request, rep *qtfsv1.Reply) error {
	n, err := ss.node(req.Node)
	if err != nil {
		return err
	}
	flags := int(req.Flags) &^ unix.O_DIRECT
	if n.isDir() && flags&unix.O_ACCMODE != unix.O_RDONLY {
		return syscall.EISDIR
	}
	if flags&unix.O_ACCMODE != unix.O_RDONLY {
		ss.watch.Load().markIno(n.key)
	}
	fd, err := ss.reopen(n, flags)
	if err != nil {
		return err
	}
	rep.Fh = ss.addFile(&openFile{fd: fd, node: n, flags: flags})
	return nil
}

func (ss *session) create(req *qtfsv1.Request, rep *qtfsv1.Reply) error {
	p, pfd, done, err := ss.dirAt(req.Node)
	if err != nil {
		return err
	}
	defer done()
	flags := int(req.Flags) &^ (unix.O_DIRECT | unix.O_NOCTTY)
	ss.watch.Load().markEntry(p.id, req.Name)
	fd, err := openBeneath(pfd, req.Name, flags|unix.O_CREAT|unix.O_EXCL, 0o600)
	created := err == nil
	if err == syscall.EEXIST && flags&unix.O_EXCL == 0 {
		fd, err = openBeneath(pfd, req.Name, flags&^unix.O_CREAT, 0)
	}
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return syscall.EISDIR
	}
	if created {
		if err := ss.ownNewFd(pfd, fd, req.Mode, req.Caller); err != nil {
			unix.Close(fd)
			unix.Unlinkat(pfd, req.Name, 0)
			return err
		}
		st.Uid, st.Gid, st.Mode = 0, 0, 0
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return err
		}
	}
	n, err := ss.adoptOpen(fd, &st)
	if err != nil {
		unix.Close(fd)
		return err
	}
	rep.Entry = qtfsv1.Entry{Node: n.id, Attr: toAttr(&st)}
	rep.Fh = ss.addFile(&openFile{fd: fd, node: n, flags: flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC)})
	return nil
}

func (ss *session) read(req *qtfsv1.Request, rep *qtfsv1.Reply) (func(), error) {
	f, err := ss.file(req.Fh)
	if err != nil {
		return nil, err
	}
	size := req.Len
	if size > qtfsv1.MaxData {
		size = qtfsv1.MaxData
	}
	big := bigBufs.Get()
	release := func() { bigBufs.Put(big) }
	buf := big[:size]
	total := 0
	for total < len(buf) {
		n, err := unix.Pread(f.fd, buf[total:], int64(req.Off)+int64(total))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if total > 0 {
				break
			}
			return release, err
		}
		if n == 0 {
			break
		}
		total += n
	}
	rep.Data = buf[:total]
	return release, nil
}

func (ss *session) statfs(req *qtfsv1.Request, rep *qtfsv1.Reply) error {
	n, err := ss.node(req.Node)
	if err != nil {
		n = ss.root
	}
	fd, done, err := ss.pathFd(n)
	if err != nil {
		return err
	}
	defer done()
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return err
	}
	rep.Statfs = qtfsv1.Statfs{Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files,
		Ffree: st.Ffree, Bsize: uint32(st.Bsize), NameLen: uint32(st.Namelen), Frsize: uint32(st.Frsize)}
	return nil
}

func (ss *session) xattr(req *qtfsv1.Request, rep *qtfsv1.Reply) (func(), error) {
	n, err := ss.node(req.Node)
	if err != nil {
		return nil, err
	}
	if req.Op != qtfsv1.OpListXattr && (req.Name == "" || len(req.Name) > 255 || containsNUL(req.Name)) {
		return nil, syscall.EINVAL
	}
	fd, done, err := ss.pathFd(n)
	if err != nil {
		return nil, err
	}
	defer done()
	// getxattr on /proc/self/fd/N of our own O_PATH fd reaches exactly that
	// inode, also for symlinks and device nodes, without opening it.
	path := procPath(fd)
	size := req.Len
	if size > 1<<16 {
		size = 1 << 16
	}
	if req.Op == qtfsv1.OpSetXattr || req.Op == qtfsv1.OpRemoveXattr {
		ss.watch.Load().markIno(n.key)
	}
	switch req.Op {
	case qtfsv1.OpSetXattr:
		return nil, unix.Setxattr(path, req.Name, req.Data, int(req.Flags))
	case qtfsv1.OpRemoveXattr:
		return nil, unix.Removexattr(path, req.Name)
	case qtfsv1.OpGetXattr:
		var buf []byte
		if size > 0 {
			buf = make([]byte, size)
		}
		m, err := unix.Getxattr(path, req.Name, buf)
		if err != nil {
			return nil, err
		}
		rep.N = uint64(m)
		if size > 0 {
			rep.Data = buf[:m]
		}
		return nil, nil
	default:
		var buf []byte
		if size > 0 {
			buf = make([]byte, size)
		}
		m, err := unix.Listxattr(path, buf)
		if err != nil {
			return nil, err
		}
		rep.N = uint64(m)
		if size > 0 {
			rep.Data = buf[:m]
		}
		return nil, nil
	}
}

// access checks mode bits for the caller, as a local file system does.
func (ss *session) access(req *qtfsv1.Request) error {
	var a qtfsv1.Attr
	if err := ss.getattr(&qtfsv1.Request{Node: req.Node}, &a); err != nil {
		return err
	}
	mask := req.Mode & 7
	if mask == 0 {
		return nil
	}
	c := req.Caller
	if c.Uid == 0 {
		if mask&unix.X_OK != 0 && a.Mode&unix.S_IFMT != unix.S_IFDIR && a.Mode&0o111 == 0 {
			return syscall.EACCES
		}
		return nil
	}
	perm := a.Mode & 7
	if c.Uid == a.Uid {
		perm = a.Mode >> 6 & 7
	} else if c.Gid == a.Gid {
		perm = a.Mode >> 3 & 7
	}
	if perm&mask != mask {
		return syscall.EACCES
	}
	return nil
}

// ownerLockFd returns the open file description that carries owner's locks
// on f's node, creating it with f's access mode.
// ownerLockFd returns the open file description that carries owner's locks
// on f's node, creating it with f's access mode.
func (ss *session) ownerLockFd(f *openFile, owner uint64) (*lockFd, error) {
	n := f.node
	n.lmu.Lock()
	defer n.lmu.Unlock()
	if l, ok := n.locks[owner]; ok {
		return l, nil
	}
	fd, err := ss.reopen(n, f.flags&unix.O_ACCMODE)
	if err != nil {
		return nil, err
	}
	if n.locks == nil {
		n.locks = map[uint64]*lockFd{}
	}
	l := &lockFd{fd: fd, fh: f.fh}
	n.locks[owner] = l
	return l, nil
}

// holderPid finds which other owner of this session holds the conflicting
// lock fl: the owner whose own description sees no conflict on that range.
// 0 when the holder is not one of ours (a host process, another DPU).
func holderPid(n *node, owner uint64, fl unix.Flock_t) uint32 {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	for o, l := range n.locks {
		if o == owner {
			continue
		}
		probe := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: fl.Start, Len: fl.Len}
		if unix.FcntlFlock(uintptr(l.fd), unix.F_OFD_GETLK, &probe) == nil && probe.Type == unix.F_UNLCK {
			return l.pid
		}
	}
	return 0
}

func (ss *session) lock(req *qtfsv1.Request, rep *qtfsv1.Reply) error {
	f, err := ss.file(req.Fh)
	if err != nil {
		return err
	}
	l, err := ss.ownerLockFd(f, req.Owner)
	if err != nil {
		return err
	}
	fd := l.fd
	if req.Flags&lkFlock != 0 {
		var how int
		switch req.Lock.Type {
		case unix.F_RDLCK:
			how = unix.LOCK_SH
		case unix.F_WRLCK:
			how = unix.LOCK_EX
		case unix.F_UNLCK:
			how = unix.LOCK_UN
		default:
			return syscall.EINVAL
		}
		if req.Op != qtfsv1.OpSetLkw {
			how |= unix.LOCK_NB
		}
		return unix.Flock(fd, how)
	}
	fl := unix.Flock_t{Type: int16(req.Lock.Type), Whence: 0, Start: int64(req.Lock.Start)}
	if req.Lock.End != 1<<63-1 {
		fl.Len = int64(req.Lock.End - req.Lock.Start + 1)
	}
	switch req.Op {
	case qtfsv1.OpGetLk:
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
			return err
		}
		rep.Lock = qtfsv1.Lock{Type: uint32(fl.Type)}
		if fl.Type != unix.F_UNLCK {
			rep.Lock.Start = uint64(fl.Start)
			rep.Lock.End = 1<<63 - 1
			if fl.Len != 0 {
				rep.Lock.End = uint64(fl.Start + fl.Len - 1)
			}
			rep.Lock.Pid = holderPid(f.node, req.Owner, fl)
		}
		return nil
	case qtfsv1.OpSetLk:
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &fl)
		if err == syscall.EACCES {
			err = syscall.EAGAIN
		}
		if err == nil && req.Lock.Type != unix.F_UNLCK {
			l.pid = req.Lock.Pid
		}
		return err
	default:
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLKW, &fl)
		if err == nil && req.Lock.Type != unix.F_UNLCK {
			l.pid = req.Lock.Pid
		}
		return err
	}
}
