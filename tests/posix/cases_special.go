package posix

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

func caseStatfs(r *rec) {
	var s unix.Statfs_t
	if !r.e("statfs", unix.Statfs(r.dir, &s)) {
		return
	}
	r.v("sanity", "bsize>0=%v frsize>0=%v blocks>=bfree=%v bfree>=bavail=%v files>=ffree=%v namelen=%d",
		s.Bsize > 0, s.Frsize > 0, s.Blocks >= s.Bfree, s.Bfree >= s.Bavail, s.Files >= s.Ffree, s.Namelen)
	var f unix.Statfs_t
	fd, err := unix.Open(r.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if r.e("open dir", err) {
		r.e("fstatfs", unix.Fstatfs(fd, &f))
		unix.Close(fd)
		r.v("fstatfs agrees", "%v", f.Bsize == s.Bsize && f.Namelen == s.Namelen && f.Blocks == s.Blocks)
	}
	var h unix.Statfs_t
	r.e("statfs host view", unix.Statfs(r.host(), &h))
	// The mount reports the exported file system's size, not its own.
	r.v("total bytes match host view", "%v", uint64(s.Blocks)*uint64(s.Frsize) == uint64(h.Blocks)*uint64(h.Frsize))
}

// listXattrs lists names in the user. and trusted. namespaces, sorted
// (security.* labels depend on the host, not on the file system).
func listXattrs(path string, follow bool) string {
	buf := make([]byte, 64<<10)
	var n int
	var err error
	if follow {
		n, err = unix.Listxattr(path, buf)
	} else {
		n, err = unix.Llistxattr(path, buf)
	}
	if err != nil {
		return errName(err)
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if strings.HasPrefix(s, "user.") || strings.HasPrefix(s, "trusted.") {
			names = append(names, s)
		}
	}
	sort.Strings(names)
	return "[" + strings.Join(names, " ") + "]"
}

func getXattr(path, name string, follow bool) string {
	buf := make([]byte, 64<<10)
	var n int
	var err error
	if follow {
		n, err = unix.Getxattr(path, name, buf)
	} else {
		n, err = unix.Lgetxattr(path, name, buf)
	}
	if err != nil {
		return errName(err)
	}
	return content(buf[:n])
}

func xattrCommon(r *rec, ns string) {
	r.mustWrite("f", []byte("x"))
	f := r.p("f")
	k := ns + "k"
	r.add("list empty", listXattrs(f, true))
	r.add("get missing", getXattr(f, k, true))
	r.e("set "+k, unix.Setxattr(f, k, []byte("value1"), 0))
	r.add("get", getXattr(f, k, true))
	n, err := unix.Getxattr(f, k, nil)
	r.v("get size query", "%d %s", n, errName(err))
	_, err = unix.Getxattr(f, k, make([]byte, 2))
	r.e("get small buffer", err)
	r.e("set XATTR_CREATE existing", unix.Setxattr(f, k, []byte("v2"), unix.XATTR_CREATE))
	r.e("set XATTR_REPLACE missing", unix.Setxattr(f, ns+"nope", []byte("v"), unix.XATTR_REPLACE))
	r.e("set XATTR_REPLACE existing", unix.Setxattr(f, k, []byte("replaced"), unix.XATTR_REPLACE))
	r.add("get", getXattr(f, k, true))
	r.e("set empty value", unix.Setxattr(f, ns+"empty", nil, 0))
	r.add("get empty", getXattr(f, ns+"empty", true))
	bin := []byte{0, 1, 2, 255, 0}
	r.e("set binary value", unix.Setxattr(f, ns+"bin", bin, 0))
	r.add("get binary", getXattr(f, ns+"bin", true))
	big := pattern(60000, 5)
	r.e("set 60000-byte value", unix.Setxattr(f, ns+"big", big, 0))
	r.add("get big", getXattr(f, ns+"big", true))
	r.add("list", listXattrs(f, true))
	ln, err := unix.Listxattr(f, nil)
	r.v("list size query > 0", "%v %s", ln > 0, errName(err))
	r.e("remove "+k, unix.Removexattr(f, k))
	r.e("remove again", unix.Removexattr(f, k))
	r.add("list after remove", listXattrs(f, true))
	r.e("mkdir d", unix.Mkdir(r.p("d"), 0o755))
	r.e("set on dir", unix.Setxattr(r.p("d"), ns+"dir", []byte("d"), 0))
	r.add("get on dir", getXattr(r.p("d"), ns+"dir", true))
	r.e("symlink l -> f", unix.Symlink("f", r.p("l")))
	r.e("lsetxattr on symlink", unix.Lsetxattr(r.p("l"), ns+"link", []byte("l"), 0))
	r.add("llist symlink", listXattrs(r.p("l"), false))
	r.add("list via symlink (target)", listXattrs(r.p("l"), true))
	r.add("host view list", listXattrs(r.host("f"), true))
	r.add("host view get bin", getXattr(r.host("f"), ns+"bin", true))
	r.e("set on missing", unix.Setxattr(r.p("missing"), k, []byte("v"), 0))
	r.e("set bad namespace", unix.Setxattr(f, "bogus.k", []byte("v"), 0))
	if fd, ok := openFlagsCase(r, "open f", "f", unix.O_RDONLY, 0); ok {
		r.e("fsetxattr", unix.Fsetxattr(fd, ns+"fd", []byte("viafd"), 0))
		buf := make([]byte, 16)
		n, err := unix.Fgetxattr(fd, ns+"fd", buf)
		r.v("fgetxattr", "%q %s", buf[:max(n, 0)], errName(err))
		r.e("fremovexattr", unix.Fremovexattr(fd, ns+"fd"))
		unix.Close(fd)
	}
}

func caseXattrUser(r *rec) { xattrCommon(r, "user.") }

func caseXattrTrusted(r *rec) {
	xattrCommon(r, "trusted.")
	// What containerd's overlay snapshotter needs: opaque dirs, whiteouts.
	r.e("mkdir opaque", unix.Mkdir(r.p("opaque"), 0o755))
	r.e("set trusted.overlay.opaque=y", unix.Setxattr(r.p("opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	r.add("get trusted.overlay.opaque", getXattr(r.p("opaque"), "trusted.overlay.opaque", true))
	r.add("host view opaque", getXattr(r.host("opaque"), "trusted.overlay.opaque", true))
}

func caseFallocate(r *rec) {
	fd, ok := openFlagsCase(r, "create f", "f", unix.O_CREAT|unix.O_RDWR, 0o644)
	if !ok {
		return
	}
	defer unix.Close(fd)
	size := func() string {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return errName(err)
		}
		return fmt.Sprintf("size=%d", st.Size)
	}
	blocks := func() int64 {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		return st.Blocks
	}
	r.e("fallocate 0..1MiB", unix.Fallocate(fd, 0, 0, 1<<20))
	r.add("after", size())
	r.v("blocks allocated", "%v", blocks() >= (1<<20)/512)
	r.e("fallocate KEEP_SIZE to 2MiB", unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 1<<20, 1<<20))
	r.add("after", size())
	_, err := unix.Pwrite(fd, bytes.Repeat([]byte{0xab}, 1<<20), 0)
	r.e("fill 1MiB", err)
	b0 := blocks()
	r.e("punch hole 64KiB..192KiB", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 64<<10, 128<<10))
	r.add("after", size())
	r.v("blocks decreased", "%v", blocks() < b0)
	buf := make([]byte, 256<<10)
	n, _ := unix.Pread(fd, buf, 0)
	zeros := bytes.Count(buf[:n], []byte{0})
	r.v("zeroed bytes in first 256KiB", "%d first=%x at64K=%x at192K=%x", zeros, buf[0], buf[64<<10], buf[192<<10])
	r.e("punch hole without KEEP_SIZE", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE, 0, 4096))
	r.e("zero range 300KiB..+4KiB", unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 300<<10, 4096))
	r.e("fallocate negative length", unix.Fallocate(fd, 0, 0, -1))
	r.add("host view f", readContent(r.host("f")))
	if rfd, ok := openFlagsCase(r, "open f O_RDONLY", "f", unix.O_RDONLY, 0); ok {
		r.e("fallocate on O_RDONLY fd", unix.Fallocate(rfd, 0, 0, 4096))
		unix.Close(rfd)
	}
}

func caseSeekDataHole(r *rec) {
	fd, ok := openFlagsCase(r, "create f", "f", unix.O_CREAT|unix.O_RDWR, 0o644)
	if !ok {
		return
	}
	defer unix.Close(fd)
	const mib = 1 << 20
	unix.Pwrite(fd, pattern(4096, 6), 0)
	unix.Pwrite(fd, pattern(4096, 7), mib)
	r.e("ftruncate 2MiB", unix.Ftruncate(fd, 2*mib))
	r.e("fsync", unix.Fsync(fd))
	for _, q := range []struct {
		name   string
		off    int64
		whence int
	}{
		{"SEEK_DATA 0", 0, unix.SEEK_DATA},
		{"SEEK_HOLE 0", 0, unix.SEEK_HOLE},
		{"SEEK_DATA 8192", 8192, unix.SEEK_DATA},
		{"SEEK_HOLE 1MiB", mib, unix.SEEK_HOLE},
		{"SEEK_DATA 1MiB+8192", mib + 8192, unix.SEEK_DATA},
		{"SEEK_HOLE 1MiB+8192", mib + 8192, unix.SEEK_HOLE},
		{"SEEK_DATA at EOF", 2 * mib, unix.SEEK_DATA},
		{"SEEK_HOLE at EOF", 2 * mib, unix.SEEK_HOLE},
		{"SEEK_HOLE past EOF", 3 * mib, unix.SEEK_HOLE},
		{"SEEK_DATA negative", -1, unix.SEEK_DATA},
	} {
		off, err := unix.Seek(fd, q.off, q.whence)
		if err != nil {
			r.e(q.name, err)
		} else {
			r.v(q.name, "%d", off)
		}
	}
}

func caseCopyFileRange(r *rec) {
	src := pattern(3<<20+100, 8)
	if !r.mustWrite("src", src) {
		return
	}
	in, ok := openFlagsCase(r, "open src", "src", unix.O_RDONLY, 0)
	if !ok {
		return
	}
	defer unix.Close(in)
	out, ok := openFlagsCase(r, "create dst", "dst", unix.O_CREAT|unix.O_RDWR, 0o644)
	if !ok {
		return
	}
	defer unix.Close(out)
	total := 0
	for total < len(src) {
		n, err := unix.CopyFileRange(in, nil, out, nil, len(src)-total, 0)
		if err != nil {
			r.e("copy_file_range", err)
			break
		}
		if n == 0 {
			break
		}
		total += n
	}
	r.v("copied", "%d", total)
	inOff, _ := unix.Seek(in, 0, unix.SEEK_CUR)
	outOff, _ := unix.Seek(out, 0, unix.SEEK_CUR)
	r.v("offsets after", "in=%d out=%d", inOff, outOff)
	r.add("dst", readContent(r.p("dst")))
	// Explicit offsets leave the file positions alone.
	ioff, ooff := int64(1000), int64(5)
	n, err := unix.CopyFileRange(in, &ioff, out, &ooff, 7000, 0)
	r.v("copy 7000 src@1000 -> dst@5", "%d %s ioff=%d ooff=%d", n, errName(err), ioff, ooff)
	inOff2, _ := unix.Seek(in, 0, unix.SEEK_CUR)
	r.v("in offset unchanged", "%v", inOff2 == inOff)
	r.add("dst", readContent(r.p("dst")))
	r.add("host view dst", readContent(r.host("dst")))
	ioff = int64(len(src) + 10)
	n, err = unix.CopyFileRange(in, &ioff, out, nil, 10, 0)
	r.v("copy past EOF", "%d %s", n, errName(err))
	r.e("mkdir d", unix.Mkdir(r.p("d"), 0o755))
	if d, ok := openFlagsCase(r, "create d/other", "d/other", unix.O_CREAT|unix.O_RDWR, 0o644); ok {
		ioff = 0
		n, err = unix.CopyFileRange(in, &ioff, d, nil, 4096, 0)
		r.v("copy into another dir", "%d %s", n, errName(err))
		unix.Close(d)
	}
	ioff, ooff = 0, 100
	n, err = unix.CopyFileRange(out, &ioff, out, &ooff, 1000, 0)
	r.v("copy overlapping same file", "%d %s", n, errName(err))
}

func caseFlock(r *rec) {
	if !r.mustWrite("f", []byte("lock")) {
		return
	}
	fd, ok := openFlagsCase(r, "open f", "f", unix.O_RDONLY, 0)
	if !ok {
		return
	}
	try := func(label string, how int) {
		r.child(label, childRequest{Umask: -1, Ops: []childOp{{Op: "flock", Path: r.p("f"), Flags: how}}})
	}
	r.e("flock LOCK_EX", unix.Flock(fd, unix.LOCK_EX))
	try("other process LOCK_EX", unix.LOCK_EX)
	try("other process LOCK_SH", unix.LOCK_SH)
	r.e("flock LOCK_UN", unix.Flock(fd, unix.LOCK_UN))
	try("other process LOCK_EX after unlock", unix.LOCK_EX)
	r.e("flock LOCK_SH", unix.Flock(fd, unix.LOCK_SH))
	try("other process LOCK_SH vs shared", unix.LOCK_SH)
	try("other process LOCK_EX vs shared", unix.LOCK_EX)
	// A second open file description in this process conflicts too.
	if fd2, ok := openFlagsCase(r, "open f again", "f", unix.O_RDONLY, 0); ok {
		r.e("flock second description LOCK_EX|LOCK_NB", unix.Flock(fd2, unix.LOCK_EX|unix.LOCK_NB))
		unix.Close(fd2)
	}
	r.e("flock upgrade LOCK_EX", unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB))
	try("other process LOCK_SH vs upgraded", unix.LOCK_SH)
	unix.Close(fd)
	try("other process LOCK_EX after close", unix.LOCK_EX)
}

func casePosixLocks(r *rec) {
	if !r.mustWrite("f", make([]byte, 1000)) {
		return
	}
	fd, ok := openFlagsCase(r, "open f O_RDWR", "f", unix.O_RDWR, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	setlk := func(label string, typ int16, start, length int64) {
		lk := unix.Flock_t{Type: typ, Whence: 0, Start: start, Len: length}
		r.e(label, unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk))
	}
	other := func(label string, ops ...childOp) {
		for i := range ops {
			ops[i].Path = r.p("f")
		}
		r.child(label, childRequest{Umask: -1, HolderPid: os.Getpid(), Ops: ops})
	}
	setlk("F_SETLK F_WRLCK 0+100", unix.F_WRLCK, 0, 100)
	other("other process",
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 50, Len: 10},
		childOp{Op: "setlk", Flags: unix.F_RDLCK, Off: 99, Len: 1},
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 100, Len: 100},
		childOp{Op: "getlk", Flags: unix.F_WRLCK, Off: 0, Len: 10},
		childOp{Op: "getlk", Flags: unix.F_RDLCK, Off: 500, Len: 0},
	)
	setlk("F_SETLK F_UNLCK 0+50", unix.F_UNLCK, 0, 50)
	other("other process after partial unlock",
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 50},
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 60, Len: 1},
		childOp{Op: "getlk", Flags: unix.F_WRLCK, Off: 0, Len: 0},
	)
	setlk("F_SETLK F_RDLCK whole file", unix.F_RDLCK, 0, 0)
	other("other process vs read lock",
		childOp{Op: "setlk", Flags: unix.F_RDLCK, Off: 0, Len: 0},
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 10, Len: 1},
		childOp{Op: "getlk", Flags: unix.F_WRLCK, Off: 0, Len: 0},
	)
	// Own locks never conflict; F_GETLK in the holder says F_UNLCK.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	err := unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &lk)
	r.v("F_GETLK by holder", "%s %s", lockType(lk.Type), errName(err))
	// Closing any fd of the file drops the process's POSIX locks.
	if fd2, ok := openFlagsCase(r, "open f again", "f", unix.O_RDONLY, 0); ok {
		unix.Close(fd2)
	}
	other("other process after holder closed another fd",
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 0},
	)
	ofd := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 10}
	r.e("F_OFD_SETLK F_WRLCK 0+10", unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &ofd))
	other("other process vs OFD lock",
		childOp{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 1},
	)
}

func caseAccess(r *rec) {
	r.mustWrite("f644", []byte("x"))
	r.mustWrite("f755", []byte("x"))
	r.mustWrite("f000", []byte("x"))
	unix.Chmod(r.p("f755"), 0o755)
	unix.Chmod(r.p("f000"), 0)
	for _, name := range []string{"f644", "f755", "f000", "missing"} {
		for _, m := range []struct {
			n string
			v uint32
		}{{"F_OK", unix.F_OK}, {"R_OK", unix.R_OK}, {"W_OK", unix.W_OK}, {"X_OK", unix.X_OK}} {
			r.e(fmt.Sprintf("access %s %s", name, m.n), unix.Faccessat(unix.AT_FDCWD, r.p(name), m.v, 0))
		}
	}
	r.e("symlink l -> missing", unix.Symlink("missing", r.p("l")))
	r.e("faccessat l F_OK AT_SYMLINK_NOFOLLOW", unix.Faccessat2(unix.AT_FDCWD, r.p("l"), unix.F_OK, unix.AT_SYMLINK_NOFOLLOW))
	r.e("access l F_OK", unix.Access(r.p("l"), unix.F_OK))
	r.e("mkdir d", unix.Mkdir(r.p("d"), 0o755))
	r.e("access d X_OK", unix.Access(r.p("d"), unix.X_OK))
}

// caseNonRoot runs operations as an unprivileged uid in a helper process:
// a file system served by root must still refuse what the kernel refuses.
func caseNonRoot(r *rec) {
	uid, gid := r.opts.NonRootUID, r.opts.NonRootGID
	probe := runChild(childRequest{UID: uid, GID: gid, Umask: -1, Ops: []childOp{{Op: "stat", Path: r.dir}}})
	if len(probe) != 1 || strings.HasPrefix(probe[0], "E") || strings.HasPrefix(probe[0], "child") {
		r.skip(fmt.Sprintf("uid %d cannot reach the case directory (%v): make its parents o+x (and mount FUSE with allow_other)", uid, probe))
		return
	}
	r.mustWrite("f600", []byte("secret"))
	unix.Chmod(r.p("f600"), 0o600)
	r.mustWrite("f644", []byte("public"))
	r.mustWrite("f666", []byte("shared"))
	unix.Chmod(r.p("f666"), 0o666)
	unix.Mkdir(r.p("d755"), 0o755)
	r.mustWrite("d755/inside", []byte("x"))
	unix.Mkdir(r.p("d700"), 0o700)
	r.mustWrite("d700/inside", []byte("x"))
	unix.Mkdir(r.p("sticky"), 0o777)
	unix.Chmod(r.p("sticky"), 0o1777)
	r.mustWrite("sticky/roots", []byte("x"))
	unix.Chmod(r.p("sticky/roots"), 0o666)
	unix.Mkdir(r.p("d777"), 0o777)
	unix.Chmod(r.p("d777"), 0o777)
	r.mustWrite("d777/roots", []byte("x"))
	r.mustWrite("sgid-exec", []byte("#!/bin/sh\n"))
	unix.Chmod(r.p("sgid-exec"), 0o2777)
	r.child(fmt.Sprintf("uid %d", uid), childRequest{UID: uid, GID: gid, Umask: 0o022, Ops: []childOp{
		{Op: "open", Path: r.p("f600"), Flags: unix.O_RDONLY},
		{Op: "open", Path: r.p("f644"), Flags: unix.O_RDONLY},
		{Op: "open", Path: r.p("f644"), Flags: unix.O_WRONLY},
		{Op: "open", Path: r.p("f644"), Flags: unix.O_RDONLY | unix.O_TRUNC},
		{Op: "write", Path: r.p("f666"), Off: 0, Data: "SH"},
		{Op: "read", Path: r.p("f666")},
		{Op: "create", Path: r.p("d755/new"), Mode: 0o644},
		{Op: "mkdir", Path: r.p("d755/newdir"), Mode: 0o755},
		{Op: "unlink", Path: r.p("d755/inside")},
		{Op: "rename", Path: r.p("d755/inside"), Path2: r.p("d777/stolen")},
		{Op: "link", Path: r.p("f600"), Path2: r.p("d777/hardlink")}, // protected_hardlinks
		{Op: "stat", Path: r.p("d700/inside")},
		{Op: "readdir", Path: r.p("d700")},
		{Op: "readdir", Path: r.p("d755")},
		{Op: "unlink", Path: r.p("sticky/roots")},
		{Op: "create", Path: r.p("sticky/mine"), Mode: 0o644},
		{Op: "unlink", Path: r.p("sticky/mine")},
		{Op: "unlink", Path: r.p("d777/roots")},
		{Op: "create", Path: r.p("d777/mine"), Mode: 0o640},
		{Op: "mkdir", Path: r.p("d777/minedir"), Mode: 0o750},
		{Op: "symlink", Path: r.p("d777/minelink"), Path2: "mine"},
		{Op: "chmod", Path: r.p("f644"), Mode: 0o777},
		{Op: "chmod", Path: r.p("d777/mine"), Mode: 0o4755}, // own file: ok
		{Op: "stat", Path: r.p("d777/mine")},
		{Op: "chown", Path: r.p("d777/mine"), Off: 0, Len: 0},
		{Op: "chown", Path: r.p("d777/mine"), Off: -1, Len: 0}, // group not ours
		{Op: "truncate", Path: r.p("f644"), Len: 0},
		{Op: "truncate", Path: r.p("f666"), Len: 1},
		{Op: "utimes-now", Path: r.p("f644")},
		{Op: "utimes-set", Path: r.p("f644"), Off: 1e18},
		{Op: "utimes-now", Path: r.p("f666")}, // writable: ok
		{Op: "utimes-set", Path: r.p("f666"), Off: 1e18},
		{Op: "access", Path: r.p("f644"), Mode: unix.R_OK},
		{Op: "access", Path: r.p("f644"), Mode: unix.W_OK},
		{Op: "access", Path: r.p("f600"), Mode: unix.R_OK},
		{Op: "setxattr", Path: r.p("f644"), Path2: "user.x", Data: "v"},
		{Op: "setxattr", Path: r.p("d777/mine"), Path2: "user.x", Data: "v"},
		{Op: "getxattr", Path: r.p("d777/mine"), Path2: "user.x"},
		{Op: "setxattr", Path: r.p("d777/mine"), Path2: "trusted.x", Data: "v"},
		{Op: "write", Path: r.p("sgid-exec"), Off: 0, Data: "#"}, // kills setgid
		{Op: "stat", Path: r.p("sgid-exec")},
	}})
	// Ownership of what the unprivileged caller created, seen by root.
	r.stat("d777/mine")
	r.stat("d777/minedir")
	r.stat("d777/minelink")
	r.stat("sticky/roots")
	r.add("host view d777/mine", statString(r.host("d777/mine"), false))
	r.add("content f644", readContent(r.p("f644")))
}

// caseUmask checks the caller's umask is applied exactly once (a server
// that also applies its own would turn 0666 into 0644 under umask 0).
func caseUmask(r *rec) {
	for _, um := range []int{0, 0o027, 0o077} {
		sub := fmt.Sprintf("umask-%03o", um)
		if !r.e("mkdir "+sub, unix.Mkdir(r.p(sub), 0o777)) {
			continue
		}
		unix.Chmod(r.p(sub), 0o777)
		r.child(sub, childRequest{Umask: um, Ops: []childOp{
			{Op: "create", Path: r.p(sub, "file"), Mode: 0o666},
			{Op: "mkdir", Path: r.p(sub, "dir"), Mode: 0o777},
			{Op: "mkfifo", Path: r.p(sub, "fifo"), Mode: 0o666},
			{Op: "create", Path: r.p(sub, "suid"), Mode: 0o4777},
		}})
		r.add("host view "+sub+"/file", statString(r.host(sub, "file"), false))
	}
}

func caseMmap(r *rec) {
	const size = 64 << 10
	if !r.mustWrite("f", make([]byte, size)) {
		return
	}
	fd, ok := openFlagsCase(r, "open f O_RDWR", "f", unix.O_RDWR, 0)
	if !ok {
		return
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if !r.e("mmap shared", err) {
		unix.Close(fd)
		return
	}
	copy(m[100:], "written through mmap")
	copy(m[size-10:], "end-of-map")
	r.e("msync MS_SYNC", unix.Msync(m, unix.MS_SYNC))
	r.add("fresh read after msync", readContent(r.p("f")))
	r.add("host view after msync", bytesAt(r.host("f"), 100, 20))
	copy(m[5000:], "second write before munmap")
	r.e("munmap", unix.Munmap(m))
	r.e("close", unix.Close(fd))
	r.add("fresh read after munmap+close", readContent(r.p("f")))
	r.add("host view after munmap+close", bytesAt(r.host("f"), 5000, 26))
	// A write through write(2) is visible in an existing mapping.
	fd, ok = openFlagsCase(r, "open f O_RDWR", "f", unix.O_RDWR, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	m, err = unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if r.e("mmap read-only shared", err) {
		unix.Pwrite(fd, []byte("pwrite-visible"), 200)
		r.v("mapping sees pwrite", "%q", m[200:214])
		unix.Munmap(m)
	}
	// Private mappings never write back.
	m, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if r.e("mmap private", err) {
		copy(m[0:], "PRIVATE")
		unix.Munmap(m)
	}
	r.add("fresh read after private mapping", readContent(r.p("f")))
	// Writing into a mapping then fsync on the fd.
	m, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if r.e("mmap shared again", err) {
		copy(m[30000:], "via fsync")
		r.e("fsync", unix.Fsync(fd))
		r.add("host view after fsync", bytesAt(r.host("f"), 30000, 9))
		unix.Munmap(m)
	}
}

// bytesAt reads n bytes at off through a fresh descriptor.
func bytesAt(path string, off int64, n int) string {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return errName(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, n)
	got, err := unix.Pread(fd, buf, off)
	if err != nil {
		return errName(err)
	}
	return fmt.Sprintf("%q", buf[:got])
}
