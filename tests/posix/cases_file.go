package posix

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

type testCase struct {
	name string
	fn   func(*rec)
}

// cases is the suite, in run order. Names are stable: callers list them in
// Options.Known and Options.Skip.
var cases = []testCase{
	{"create-open-flags", caseCreate},
	{"read-write-offsets", caseReadWrite},
	{"truncate", caseTruncate},
	{"chmod-chown", caseChmodChown},
	{"utimens", caseUtimens},
	{"mkdir-rmdir", caseMkdirRmdir},
	{"unlink", caseUnlink},
	{"rename", caseRename},
	{"link", caseLink},
	{"symlink-readlink", caseSymlink},
	{"mknod", caseMknod},
	{"readdir", caseReaddir},
	{"readdir-concurrent-changes", caseReaddirConcurrent},
	{"statfs", caseStatfs},
	{"xattr-user", caseXattrUser},
	{"xattr-trusted", caseXattrTrusted},
	{"fallocate", caseFallocate},
	{"seek-data-hole", caseSeekDataHole},
	{"copy-file-range", caseCopyFileRange},
	{"fsync", caseFsync},
	{"flock", caseFlock},
	{"fcntl-posix-locks", casePosixLocks},
	{"access", caseAccess},
	{"nonroot-permissions", caseNonRoot},
	{"umask-once", caseUmask},
	{"mmap-shared-write", caseMmap},
	{"open-unlinked", caseOpenUnlinked},
	{"long-names", caseLongNames},
	{"deep-paths", caseDeepPaths},
}

func openFlagsCase(r *rec, op, name string, flags int, mode uint32) (int, bool) {
	fd, err := unix.Open(r.p(name), flags|unix.O_CLOEXEC, mode)
	r.e(op, err)
	return fd, err == nil
}

func caseCreate(r *rec) {
	if fd, ok := openFlagsCase(r, "open f O_CREAT|O_EXCL|O_RDWR 0644", "f", unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o644); ok {
		_, err := unix.Write(fd, []byte("hello"))
		r.e("write hello", err)
		unix.Close(fd)
	}
	r.stat("f")
	openFlagsCase(r, "open f O_CREAT|O_EXCL again", "f", unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o644)
	if fd, ok := openFlagsCase(r, "open f O_CREAT (exists) mode 0600", "f", unix.O_CREAT|unix.O_RDWR, 0o600); ok {
		unix.Close(fd)
	}
	r.stat("f") // mode must not change on an existing file
	if fd, ok := openFlagsCase(r, "open f O_APPEND|O_WRONLY", "f", unix.O_APPEND|unix.O_WRONLY, 0); ok {
		_, err := unix.Write(fd, []byte(" world"))
		r.e("append write", err)
		off, err := unix.Seek(fd, 0, unix.SEEK_CUR)
		r.v("offset after append", "%d %s", off, errName(err))
		// Linux appends even for pwrite on an O_APPEND fd.
		_, err = unix.Pwrite(fd, []byte("!"), 0)
		r.e("pwrite at 0 on O_APPEND fd", err)
		unix.Close(fd)
	}
	r.add("content f", readContent(r.p("f")))
	if fd, ok := openFlagsCase(r, "open f O_TRUNC|O_WRONLY", "f", unix.O_TRUNC|unix.O_WRONLY, 0); ok {
		unix.Close(fd)
	}
	r.stat("f")
	openFlagsCase(r, "open missing no O_CREAT", "missing", unix.O_RDONLY, 0)
	openFlagsCase(r, "open O_CREAT in missing dir", "nodir/x", unix.O_CREAT|unix.O_RDWR, 0o644)
	openFlagsCase(r, "open f O_DIRECTORY", "f", unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err := os.Mkdir(r.p("d"), 0o755); r.e("mkdir d", err) {
		openFlagsCase(r, "open d O_WRONLY", "d", unix.O_WRONLY, 0)
		openFlagsCase(r, "open d O_CREAT", "d", unix.O_CREAT|unix.O_RDWR, 0o644)
	}
	r.e("symlink dangling -> target", unix.Symlink("target", r.p("dangling")))
	openFlagsCase(r, "open dangling O_CREAT|O_EXCL", "dangling", unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o644)
	if fd, ok := openFlagsCase(r, "open dangling O_CREAT (creates target)", "dangling", unix.O_CREAT|unix.O_RDWR, 0o644); ok {
		unix.Close(fd)
	}
	r.stat("target")
	openFlagsCase(r, "open dangling O_NOFOLLOW", "dangling", unix.O_NOFOLLOW|unix.O_RDONLY, 0)
	if fd, ok := openFlagsCase(r, "open f O_RDONLY", "f", unix.O_RDONLY, 0); ok {
		_, err := unix.Write(fd, []byte("x"))
		r.e("write on O_RDONLY fd", err)
		unix.Close(fd)
	}
	if fd, ok := openFlagsCase(r, "open f O_WRONLY", "f", unix.O_WRONLY, 0); ok {
		_, err := unix.Read(fd, make([]byte, 4))
		r.e("read on O_WRONLY fd", err)
		unix.Close(fd)
	}
}

func caseReadWrite(r *rec) {
	data := pattern(100000, 1)
	fd, ok := openFlagsCase(r, "create f", "f", unix.O_CREAT|unix.O_RDWR, 0o644)
	if !ok {
		return
	}
	defer unix.Close(fd)
	n, err := unix.Write(fd, data)
	r.v("write 100000", "%d %s", n, errName(err))
	for _, off := range []int64{0, 1, 4095, 4096, 65535, 99990, 100000, 200000} {
		buf := make([]byte, 37)
		n, err := unix.Pread(fd, buf, off)
		r.v(fmt.Sprintf("pread 37 @%d", off), "%d %s %s", n, errName(err), content(buf[:max(n, 0)]))
	}
	n, err = unix.Pwrite(fd, []byte("PWRITE"), 4094)
	r.v("pwrite 6 @4094", "%d %s", n, errName(err))
	n, err = unix.Pwrite(fd, []byte("tail"), 300000)
	r.v("pwrite 4 @300000 (hole)", "%d %s", n, errName(err))
	off, err := unix.Seek(fd, 0, unix.SEEK_END)
	r.v("lseek SEEK_END", "%d %s", off, errName(err))
	off, err = unix.Seek(fd, 4090, unix.SEEK_SET)
	r.v("lseek 4090", "%d %s", off, errName(err))
	buf := make([]byte, 12)
	n, err = unix.Read(fd, buf)
	r.v("read 12 after lseek", "%d %s %q", n, errName(err), buf[:max(n, 0)])
	off, _ = unix.Seek(fd, 0, unix.SEEK_CUR)
	r.v("offset after read", "%d", off)
	hole := make([]byte, 100)
	n, err = unix.Pread(fd, hole, 200000)
	r.v("pread hole", "%d %s zero=%v", n, errName(err), bytes.Count(hole[:max(n, 0)], []byte{0}) == n)
	r.stat("f")
	r.add("host view f", readContent(r.host("f")))
	// Large single write and read back (crosses FUSE max_write).
	big := pattern(3<<20+17, 2)
	r.e("write 3MiB+17 file", os.WriteFile(r.p("big"), big, 0o644))
	r.add("read big", readContent(r.p("big")))
	r.add("host view big", readContent(r.host("big")))
}

func caseTruncate(r *rec) {
	if !r.mustWrite("f", pattern(10000, 3)) {
		return
	}
	r.e("truncate f 5000", unix.Truncate(r.p("f"), 5000))
	r.stat("f")
	r.e("truncate f 20000", unix.Truncate(r.p("f"), 20000))
	r.stat("f")
	r.add("content f", readContent(r.p("f")))
	r.e("truncate f -1", unix.Truncate(r.p("f"), -1))
	r.e("truncate missing", unix.Truncate(r.p("missing"), 0))
	if r.e("mkdir d", os.Mkdir(r.p("d"), 0o755)) {
		r.e("truncate d", unix.Truncate(r.p("d"), 0))
	}
	if fd, ok := openFlagsCase(r, "open f O_RDWR", "f", unix.O_RDWR, 0); ok {
		r.e("ftruncate 7", unix.Ftruncate(fd, 7))
		var st unix.Stat_t
		r.e("fstat", unix.Fstat(fd, &st))
		r.v("fstat after ftruncate", "size=%d", st.Size)
		unix.Close(fd)
	}
	if fd, ok := openFlagsCase(r, "open f O_RDONLY", "f", unix.O_RDONLY, 0); ok {
		r.e("ftruncate on O_RDONLY fd", unix.Ftruncate(fd, 0))
		unix.Close(fd)
	}
	r.add("content f", readContent(r.p("f")))
	r.add("host view f", readContent(r.host("f")))
}

func caseChmodChown(r *rec) {
	if !r.mustWrite("f", []byte("x")) {
		return
	}
	for _, m := range []uint32{0o4755, 0o2755, 0o6777, 0o1644, 0o0, 0o600} {
		r.e(fmt.Sprintf("chmod f %04o", m), unix.Chmod(r.p("f"), m))
		r.stat("f")
	}
	r.e("chmod f 06755", unix.Chmod(r.p("f"), 0o6755))
	r.e("chown f 1000:1000", unix.Chown(r.p("f"), 1000, 1000))
	r.stat("f") // the kernel drops setuid/setgid on chown of an executable
	r.e("chown f -1:2000", unix.Chown(r.p("f"), -1, 2000))
	r.stat("f")
	// Creation keeps special bits and a zero mode (root caller, umask 022).
	if fd, ok := openFlagsCase(r, "create suid 04755", "suid", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o4755); ok {
		unix.Close(fd)
	}
	r.stat("suid")
	if fd, ok := openFlagsCase(r, "create zero 0000", "zero", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0); ok {
		unix.Close(fd)
	}
	r.stat("zero")
	r.e("mkdir sgid 02775", unix.Mkdir(r.p("sgid"), 0o2775))
	r.stat("sgid")
	// setgid directory: new entries inherit its group, subdirectories the bit.
	r.e("mkdir g 0775", unix.Mkdir(r.p("g"), 0o775))
	r.e("chown g 0:1234", unix.Chown(r.p("g"), 0, 1234))
	r.e("chmod g 02775", unix.Chmod(r.p("g"), 0o2775))
	r.stat("g")
	if fd, ok := openFlagsCase(r, "create g/file", "g/file", unix.O_CREAT|unix.O_WRONLY, 0o644); ok {
		unix.Close(fd)
	}
	r.stat("g/file")
	r.e("mkdir g/sub", unix.Mkdir(r.p("g/sub"), 0o755))
	r.stat("g/sub")
	r.e("symlink l -> f", unix.Symlink("f", r.p("l")))
	r.e("lchown l 1000:1000", unix.Lchown(r.p("l"), 1000, 1000))
	r.stat("l")
	r.stat("f")
	r.e("chmod missing", unix.Chmod(r.p("missing"), 0o644))
	var st unix.Stat_t
	if fd, ok := openFlagsCase(r, "open f O_RDONLY", "f", unix.O_RDONLY, 0); ok {
		r.e("fchmod 0640", unix.Fchmod(fd, 0o640))
		r.e("fchown 0:0", unix.Fchown(fd, 0, 0))
		r.e("fstat", unix.Fstat(fd, &st))
		r.add("fstat f", fmtStat(&st))
		unix.Close(fd)
	}
	r.add("host view f", statString(r.host("f"), false))
}

// Times are recorded only when the test set them, or as orderings.
func caseUtimens(r *rec) {
	if !r.mustWrite("f", []byte("abc")) {
		return
	}
	at := func(name string, follow bool) (unix.Timespec, unix.Timespec, unix.Timespec, error) {
		var st unix.Stat_t
		var err error
		if follow {
			err = unix.Stat(r.p(name), &st)
		} else {
			err = unix.Lstat(r.p(name), &st)
		}
		return st.Atim, st.Mtim, st.Ctim, err
	}
	ts := []unix.Timespec{{Sec: 1000000000, Nsec: 123456789}, {Sec: 1100000000, Nsec: 987654321}}
	r.e("utimensat f explicit", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("f"), ts, 0))
	a, m, _, err := at("f", true)
	r.v("times f", "atime=%d.%09d mtime=%d.%09d %s", a.Sec, a.Nsec, m.Sec, m.Nsec, errName(err))
	omit := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 1200000000, Nsec: 5}}
	r.e("utimensat f atime OMIT", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("f"), omit, 0))
	a, m, _, _ = at("f", true)
	r.v("times f", "atime=%d.%09d mtime=%d.%09d", a.Sec, a.Nsec, m.Sec, m.Nsec)
	before := time.Now().Add(-2 * time.Second).Unix()
	r.e("utimensat f NOW", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("f"), nil, 0))
	a, m, _, _ = at("f", true)
	r.v("times f after NOW", "atime-recent=%v mtime-recent=%v", a.Sec >= before, m.Sec >= before)
	// write and chmod move mtime/ctime forward.
	r.e("utimensat f old", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("f"), ts, 0))
	_, m0, c0, _ := at("f", true)
	time.Sleep(20 * time.Millisecond)
	if fd, ok := openFlagsCase(r, "open f O_WRONLY", "f", unix.O_WRONLY, 0); ok {
		_, err := unix.Pwrite(fd, []byte("z"), 1)
		r.e("pwrite", err)
		unix.Close(fd)
	}
	_, m1, c1, _ := at("f", true)
	r.v("after write", "mtime-advanced=%v ctime-advanced=%v mtime-recent=%v", tsLess(m0, m1), tsLess(c0, c1), m1.Sec >= before)
	time.Sleep(20 * time.Millisecond)
	r.e("chmod f 0600", unix.Chmod(r.p("f"), 0o600))
	_, m2, c2, _ := at("f", true)
	r.v("after chmod", "mtime-same=%v ctime-advanced=%v", m2 == m1, tsLess(c1, c2))
	r.e("mkdir d", os.Mkdir(r.p("d"), 0o755))
	r.e("utimensat d explicit", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("d"), ts, 0))
	_, dm0, _, _ := at("d", true)
	r.mustWrite("d/new", nil)
	_, dm1, _, _ := at("d", true)
	r.v("dir mtime after create in it", "advanced=%v", tsLess(dm0, dm1))
	r.e("symlink l -> f", unix.Symlink("f", r.p("l")))
	r.e("utimensat l explicit", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("f"), ts, 0))
	lts := []unix.Timespec{{Sec: 1300000000, Nsec: 1}, {Sec: 1300000000, Nsec: 2}}
	r.e("utimensat l NOFOLLOW", unix.UtimesNanoAt(unix.AT_FDCWD, r.p("l"), lts, unix.AT_SYMLINK_NOFOLLOW))
	_, lm, _, _ := at("l", false)
	_, fm, _, _ := at("f", true)
	r.v("symlink mtime / target mtime", "%d.%09d / %d.%09d", lm.Sec, lm.Nsec, fm.Sec, fm.Nsec)
	if fd, ok := openFlagsCase(r, "open f O_RDONLY", "f", unix.O_RDONLY, 0); ok {
		r.e("futimens", unix.UtimesNanoAt(fd, "", []unix.Timespec{{Sec: 5, Nsec: 6}, {Sec: 7, Nsec: 8}}, unix.AT_EMPTY_PATH))
		unix.Close(fd)
	}
	var st unix.Stat_t
	r.e("stat host view f", unix.Stat(r.host("f"), &st))
	r.v("host view times f", "atime=%d.%09d mtime=%d.%09d", st.Atim.Sec, st.Atim.Nsec, st.Mtim.Sec, st.Mtim.Nsec)
}

func tsLess(a, b unix.Timespec) bool {
	return a.Sec < b.Sec || (a.Sec == b.Sec && a.Nsec < b.Nsec)
}

func caseFsync(r *rec) {
	fd, ok := openFlagsCase(r, "create f", "f", unix.O_CREAT|unix.O_RDWR, 0o644)
	if !ok {
		return
	}
	defer unix.Close(fd)
	_, err := unix.Write(fd, pattern(200000, 9))
	r.e("write", err)
	r.e("fsync", unix.Fsync(fd))
	r.e("fdatasync", unix.Fdatasync(fd))
	r.e("sync_file_range", unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER))
	r.add("host view f", readContent(r.host("f")))
	if dfd, ok := openFlagsCase(r, "open . O_DIRECTORY", ".", unix.O_RDONLY|unix.O_DIRECTORY, 0); ok {
		r.e("fsync dir", unix.Fsync(dfd))
		unix.Close(dfd)
	}
}
