package posix

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

func nlink(path string) string {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return errName(err)
	}
	return fmt.Sprint(st.Nlink)
}

func caseMkdirRmdir(r *rec) {
	n0 := nlink(r.dir)
	r.e("mkdir d 0777", unix.Mkdir(r.p("d"), 0o777))
	r.stat("d") // umask 022 of the caller applies
	r.v("case dir nlink before/after mkdir", "%s/%s", n0, nlink(r.dir))
	r.v("nlink d", "%s", nlink(r.p("d")))
	r.e("mkdir d again", unix.Mkdir(r.p("d"), 0o755))
	r.e("mkdir missing/x", unix.Mkdir(r.p("missing/x"), 0o755))
	r.mustWrite("d/f", []byte("x"))
	r.e("mkdir d/f/x (ENOTDIR)", unix.Mkdir(r.p("d/f/x"), 0o755))
	r.e("rmdir d (not empty)", unix.Rmdir(r.p("d")))
	r.e("rmdir d/f (file)", unix.Rmdir(r.p("d/f")))
	r.e("rmdir d/.", unix.Rmdir(r.p("d/.")))
	r.e("rmdir missing", unix.Rmdir(r.p("missing")))
	r.e("unlink d/f", unix.Unlink(r.p("d/f")))
	r.e("rmdir d", unix.Rmdir(r.p("d")))
	r.stat("d")
	r.v("case dir nlink after rmdir", "%s", nlink(r.dir))
	r.e("mkdir e 0700", unix.Mkdir(r.p("e"), 0o700))
	r.stat("e")
	r.add("host view e", statString(r.host("e"), false))
}

func caseUnlink(r *rec) {
	r.mustWrite("f", []byte("data"))
	r.e("unlink f", unix.Unlink(r.p("f")))
	r.stat("f")
	r.e("unlink f again", unix.Unlink(r.p("f")))
	r.e("mkdir d", unix.Mkdir(r.p("d"), 0o755))
	r.e("unlink d", unix.Unlink(r.p("d")))
	r.mustWrite("t", []byte("target"))
	r.e("symlink l -> t", unix.Symlink("t", r.p("l")))
	r.e("unlink l", unix.Unlink(r.p("l")))
	r.stat("l")
	r.stat("t")
	r.e("unlinkat d AT_REMOVEDIR", unix.Unlinkat(unix.AT_FDCWD, r.p("d"), unix.AT_REMOVEDIR))
	r.add("listing", dirListing(r.dir))
	r.add("host view listing", dirListing(r.host()))
}

func caseRename(r *rec) {
	r.mustWrite("a", []byte("AAA"))
	r.mustWrite("b", []byte("BB"))
	r.e("rename a b (over file)", unix.Rename(r.p("a"), r.p("b")))
	r.stat("a")
	r.add("content b", readContent(r.p("b")))
	r.e("rename b b (same)", unix.Rename(r.p("b"), r.p("b")))
	r.e("mkdir d1", unix.Mkdir(r.p("d1"), 0o755))
	r.e("mkdir d2", unix.Mkdir(r.p("d2"), 0o755))
	r.mustWrite("d1/x", []byte("x"))
	r.e("rename d1 d2 (over empty dir)", unix.Rename(r.p("d1"), r.p("d2")))
	r.add("listing d2", dirListing(r.p("d2")))
	r.e("mkdir d3", unix.Mkdir(r.p("d3"), 0o755))
	r.e("rename d3 d2 (over non-empty dir)", unix.Rename(r.p("d3"), r.p("d2")))
	r.e("rename b d3 (file over dir)", unix.Rename(r.p("b"), r.p("d3")))
	r.e("rename d3 b (dir over file)", unix.Rename(r.p("d3"), r.p("b")))
	r.e("rename d2 d2/sub (into itself)", unix.Rename(r.p("d2"), r.p("d2/sub")))
	r.e("rename missing c", unix.Rename(r.p("missing"), r.p("c")))
	r.mustWrite("c", []byte("CCCC"))
	r.e("renameat2 c b NOREPLACE (exists)", unix.Renameat2(unix.AT_FDCWD, r.p("c"), unix.AT_FDCWD, r.p("b"), unix.RENAME_NOREPLACE))
	r.e("renameat2 c new NOREPLACE", unix.Renameat2(unix.AT_FDCWD, r.p("c"), unix.AT_FDCWD, r.p("new"), unix.RENAME_NOREPLACE))
	r.add("content new", readContent(r.p("new")))
	r.e("renameat2 new d3 EXCHANGE (file<->dir)", unix.Renameat2(unix.AT_FDCWD, r.p("new"), unix.AT_FDCWD, r.p("d3"), unix.RENAME_EXCHANGE))
	r.stat("new")
	r.stat("d3")
	r.add("content d3", readContent(r.p("d3")))
	r.e("renameat2 new missing EXCHANGE", unix.Renameat2(unix.AT_FDCWD, r.p("new"), unix.AT_FDCWD, r.p("missing"), unix.RENAME_EXCHANGE))
	r.e("renameat2 new d3 EXCHANGE|NOREPLACE", unix.Renameat2(unix.AT_FDCWD, r.p("new"), unix.AT_FDCWD, r.p("d3"), unix.RENAME_EXCHANGE|unix.RENAME_NOREPLACE))
	// Cross-directory rename updates the parents' link counts.
	r.v("nlink d2 before", "%s", nlink(r.p("d2")))
	r.e("rename new d2/moved (dir across dirs)", unix.Rename(r.p("new"), r.p("d2/moved")))
	r.v("nlink d2 after", "%s", nlink(r.p("d2")))
	r.e("link d3 h (hard link)", unix.Link(r.p("d3"), r.p("h")))
	r.e("rename d3 h (two names of one inode)", unix.Rename(r.p("d3"), r.p("h")))
	r.stat("d3")
	r.stat("h")
	// An open file survives being renamed.
	r.mustWrite("open", []byte("still here"))
	if fd, ok := openFlagsCase(r, "open open", "open", unix.O_RDONLY, 0); ok {
		r.e("rename open d2/renamed", unix.Rename(r.p("open"), r.p("d2/renamed")))
		buf := make([]byte, 32)
		n, err := unix.Pread(fd, buf, 0)
		r.v("read renamed open file", "%q %s", buf[:max(n, 0)], errName(err))
		unix.Close(fd)
	}
	r.add("listing", dirListing(r.dir))
	r.add("listing d2", dirListing(r.p("d2")))
	r.add("host view listing d2", dirListing(r.host("d2")))
}

func caseLink(r *rec) {
	r.mustWrite("f", []byte("linked"))
	r.e("link f g", unix.Link(r.p("f"), r.p("g")))
	r.stat("f")
	r.stat("g")
	var a, b unix.Stat_t
	unix.Lstat(r.p("f"), &a)
	unix.Lstat(r.p("g"), &b)
	r.v("same inode", "%v", a.Ino == b.Ino && a.Dev == b.Dev)
	r.e("link f g (exists)", unix.Link(r.p("f"), r.p("g")))
	r.e("link missing x", unix.Link(r.p("missing"), r.p("x")))
	r.e("mkdir d", unix.Mkdir(r.p("d"), 0o755))
	r.e("link d dl (dir)", unix.Link(r.p("d"), r.p("dl")))
	r.e("link f d/h", unix.Link(r.p("f"), r.p("d/h")))
	r.stat("f")
	r.e("unlink f", unix.Unlink(r.p("f")))
	r.stat("g")
	r.add("content d/h", readContent(r.p("d/h")))
	r.e("symlink s -> g", unix.Symlink("g", r.p("s")))
	r.e("linkat s sl (no follow: links the symlink)", unix.Linkat(unix.AT_FDCWD, r.p("s"), unix.AT_FDCWD, r.p("sl"), 0))
	r.stat("sl")
	r.e("linkat s sf AT_SYMLINK_FOLLOW", unix.Linkat(unix.AT_FDCWD, r.p("s"), unix.AT_FDCWD, r.p("sf"), unix.AT_SYMLINK_FOLLOW))
	r.stat("sf")
	r.add("host view g", statString(r.host("g"), false))
}

func caseSymlink(r *rec) {
	r.mustWrite("t", []byte("target"))
	r.e("symlink l -> t", unix.Symlink("t", r.p("l")))
	r.stat("l")
	r.add("stat l (follow)", statString(r.p("l"), true))
	r.add("readlink l", readlink(r.p("l")))
	r.add("content via l", readContent(r.p("l")))
	r.e("symlink dangling -> nowhere/x", unix.Symlink("nowhere/x", r.p("dangling")))
	r.add("stat dangling (follow)", statString(r.p("dangling"), true))
	r.stat("dangling")
	r.e("symlink l (exists)", unix.Symlink("x", r.p("l")))
	r.add("readlink t (not a link)", readlink(r.p("t")))
	r.e("symlink loop1 -> loop2", unix.Symlink("loop2", r.p("loop1")))
	r.e("symlink loop2 -> loop1", unix.Symlink("loop1", r.p("loop2")))
	r.add("content via loop1", readContent(r.p("loop1")))
	long := strings.Repeat("a/", 2047) + "b" // 4095 bytes
	r.e("symlink long target (4095)", unix.Symlink(long, r.p("long")))
	got := readlink(r.p("long"))
	r.v("readlink long", "len=%d equal=%v", len(got), got == long)
	r.e("symlink too long target (4096)", unix.Symlink(long+"c", r.p("toolong")))
	r.e("symlink abs -> /proc/self", unix.Symlink("/proc/self", r.p("abs")))
	r.add("readlink abs", readlink(r.p("abs")))
	r.e("mkdir d", unix.Mkdir(r.p("d"), 0o755))
	r.e("symlink d/up -> ../t", unix.Symlink("../t", r.p("d/up")))
	r.add("content via d/up", readContent(r.p("d/up")))
	r.e("symlink dl -> d", unix.Symlink("d", r.p("dl")))
	r.add("listing via dl/", dirListing(r.p("dl")+"/"))
	r.add("host view readlink l", readlink(r.host("l")))
}

func readlink(p string) string {
	buf := make([]byte, 8192)
	n, err := unix.Readlink(p, buf)
	if err != nil {
		return errName(err)
	}
	return string(buf[:n])
}

func caseMknod(r *rec) {
	mk := func(name string, mode uint32, dev int) {
		r.e(fmt.Sprintf("mknod %s %s", name, typeName(mode)), unix.Mknod(r.p(name), mode, dev))
		r.stat(name)
		r.add("host view "+name, statString(r.host(name), false))
	}
	mk("fifo", unix.S_IFIFO|0o640, 0)
	mk("sock", unix.S_IFSOCK|0o600, 0)
	mk("null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	mk("loop", unix.S_IFBLK|0o660, int(unix.Mkdev(7, 0)))
	mk("whiteout", unix.S_IFCHR|0o000, int(unix.Mkdev(0, 0))) // overlayfs whiteout
	mk("reg", unix.S_IFREG|0o644, 0)
	r.e("mkfifo fifo2 0600", unix.Mkfifo(r.p("fifo2"), 0o600))
	r.stat("fifo2")
	r.e("mknod fifo (exists)", unix.Mknod(r.p("fifo"), unix.S_IFIFO|0o644, 0))
	// A FIFO on the mount is a local pipe: both ends open in this process.
	rfd, err := unix.Open(r.p("fifo"), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if r.e("open fifo read nonblock", err) {
		wfd, err := unix.Open(r.p("fifo"), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if r.e("open fifo write nonblock", err) {
			_, err := unix.Write(wfd, []byte("ping"))
			r.e("write fifo", err)
			buf := make([]byte, 8)
			n, err := unix.Read(rfd, buf)
			r.v("read fifo", "%q %s", buf[:max(n, 0)], errName(err))
			unix.Close(wfd)
		}
		unix.Close(rfd)
	}
	// Device nodes are compared as inodes only: opening one depends on the
	// mount's nodev flag, not on the file system.
	r.add("listing", dirListing(r.dir))
}

func caseReaddir(r *rec) {
	r.add("listing empty", dirListing(r.dir))
	for i := 0; i < 60; i++ {
		r.mustWrite(fmt.Sprintf("file-%03d", i), nil)
	}
	for i := 0; i < 5; i++ {
		unix.Mkdir(r.p(fmt.Sprintf("dir-%d", i)), 0o755)
	}
	unix.Symlink("file-000", r.p("link"))
	unix.Mkfifo(r.p("fifo"), 0o644)
	r.add("listing", dirListing(r.dir))
	// Small buffers force many getdents calls; the result must not change.
	fd, err := unix.Open(r.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if r.e("open dir", err) {
		ents, err := readDirFd(fd, 512)
		r.v("getdents with 512-byte buffer", "n=%d %s", len(ents), errName(err))
		_, err = unix.Seek(fd, 0, unix.SEEK_SET)
		r.e("rewinddir", err)
		again, err := readDirFd(fd, 1<<16)
		r.v("getdents after rewind", "n=%d %s", len(again), errName(err))
		unix.Close(fd)
	}
	r.add("host view listing", dirListing(r.host()))
	r.e("mkdir sub", unix.Mkdir(r.p("sub"), 0o755))
	r.mustWrite("sub/one", nil)
	r.add("listing sub", dirListing(r.p("sub")))
	r.add("readdir file", dirListing(r.p("file-001")))
}

// caseReaddirConcurrent reads a directory in small chunks while entries are
// added and removed. POSIX leaves added/removed names unspecified, but
// every untouched name must be returned exactly once.
func caseReaddirConcurrent(r *rec) {
	const n = 300
	for i := 0; i < n; i++ {
		if !r.mustWrite(fmt.Sprintf("keep-%03d", i), nil) {
			return
		}
	}
	for i := 0; i < 50; i++ {
		r.mustWrite(fmt.Sprintf("gone-%03d", i), nil)
	}
	fd, err := unix.Open(r.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if !r.e("open dir", err) {
		return
	}
	defer unix.Close(fd)
	seen := map[string]int{}
	buf := make([]byte, 1024)
	calls := 0
	for {
		nr, err := unix.Getdents(fd, buf)
		if err != nil {
			r.e("getdents", err)
			break
		}
		if nr == 0 {
			break
		}
		calls++
		for _, e := range parseDirents(buf[:nr]) {
			seen[e.name]++
		}
		if calls == 2 { // mutate mid-stream
			for i := 0; i < 50; i++ {
				os.Remove(r.p(fmt.Sprintf("gone-%03d", i)))
				os.WriteFile(r.p(fmt.Sprintf("new-%03d", i)), nil, 0o644)
			}
		}
	}
	missing, dup := 0, 0
	for i := 0; i < n; i++ {
		switch seen[fmt.Sprintf("keep-%03d", i)] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	r.v("untouched entries", "missing=%d duplicated=%d", missing, dup)
	_, err = unix.Seek(fd, 0, unix.SEEK_SET)
	r.e("rewinddir", err)
	ents, err := readDirFd(fd, 4096)
	var names []string
	for _, e := range ents {
		names = append(names, e.name)
	}
	sort.Strings(names)
	nk, nn, ng := 0, 0, 0
	for _, nm := range names {
		switch {
		case strings.HasPrefix(nm, "keep-"):
			nk++
		case strings.HasPrefix(nm, "new-"):
			nn++
		case strings.HasPrefix(nm, "gone-"):
			ng++
		}
	}
	r.v("after rewind", "keep=%d new=%d gone=%d total=%d %s", nk, nn, ng, len(names), errName(err))
}

func caseLongNames(r *rec) {
	n255 := strings.Repeat("n", 255)
	n256 := strings.Repeat("n", 256)
	r.e("create 255-byte name", os.WriteFile(r.p(n255), []byte("long"), 0o644))
	r.add("stat 255", statString(r.p(n255), false))
	r.add("content 255", readContent(r.p(n255)))
	r.e("create 256-byte name", os.WriteFile(r.p(n256), nil, 0o644))
	r.add("stat 256", statString(r.p(n256), false))
	d255 := strings.Repeat("d", 255)
	r.e("mkdir 255", unix.Mkdir(r.p(d255), 0o755))
	l255 := strings.Repeat("l", 255)
	r.e("symlink 255 -> 255", unix.Symlink(n255, r.p(l255)))
	r.add("readlink 255", fmt.Sprint(len(readlink(r.p(l255)))))
	r.e("rename 255 -> d255/255", unix.Rename(r.p(n255), r.p(d255, n255)))
	r.e("setxattr on 255", unix.Setxattr(r.p(d255, n255), "user.k", []byte("v"), 0))
	names, err := dirNames(r.dir)
	var lens []int
	for _, n := range names {
		lens = append(lens, len(n))
	}
	r.v("readdir name lengths", "%v %s", lens, errName(err))
	r.add("host view content", readContent(filepath.Join(r.host(d255), n255)))
	// A name with every byte but '/' and NUL.
	var odd []byte
	for c := 1; c < 256; c++ {
		if c != '/' {
			odd = append(odd, byte(c))
		}
	}
	r.e("create name with bytes 1..255", os.WriteFile(r.p(string(odd[:200])), nil, 0o644))
	r.add("stat odd name", statString(r.p(string(odd[:200])), false))
}

// caseDeepPaths builds a tree deeper than PATH_MAX using only *at calls on
// directory fds, as a local file system allows.
func caseDeepPaths(r *rec) {
	const levels = 24 // 24 × 201 bytes ≈ 4.8 KiB > PATH_MAX (4096)
	comp := strings.Repeat("p", 200)
	fd, err := unix.Open(r.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if !r.e("open case dir", err) {
		return
	}
	fds := []int{fd}
	defer func() {
		for _, f := range fds {
			unix.Close(f)
		}
	}()
	var firstErr error
	for i := 0; i < levels; i++ {
		cur := fds[len(fds)-1]
		if err := unix.Mkdirat(cur, comp, 0o755); err != nil {
			firstErr = fmt.Errorf("level %d: %w", i, err)
			break
		}
		nfd, err := unix.Openat(cur, comp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			firstErr = fmt.Errorf("open level %d: %w", i, err)
			break
		}
		fds = append(fds, nfd)
	}
	r.v("mkdirat chain", "depth=%d %s", len(fds)-1, errName(firstErr))
	bottom := fds[len(fds)-1]
	f, err := unix.Openat(bottom, "leaf", unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if r.e("openat leaf O_CREAT", err) {
		_, err := unix.Write(f, []byte("deep"))
		r.e("write leaf", err)
		unix.Close(f)
	}
	var st unix.Stat_t
	r.e("fstatat leaf", unix.Fstatat(bottom, "leaf", &st, unix.AT_SYMLINK_NOFOLLOW))
	r.v("leaf", "size=%d", st.Size)
	r.e("renameat leaf leaf2", unix.Renameat(bottom, "leaf", bottom, "leaf2"))
	r.e("symlinkat", unix.Symlinkat("leaf2", bottom, "sl"))
	f, err = unix.Openat(bottom, "sl", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if r.e("openat via symlink", err) {
		buf := make([]byte, 8)
		n, err := unix.Read(f, buf)
		r.v("read leaf2", "%q %s", buf[:max(n, 0)], errName(err))
		unix.Close(f)
	}
	r.e("fchmodat leaf2", unix.Fchmodat(bottom, "leaf2", 0o600, 0))
	r.e("setxattr via /proc/self/fd path", unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d", bottom), "user.deep", []byte("1"), 0))
	r.e("unlinkat sl", unix.Unlinkat(bottom, "sl", 0))
	r.e("unlinkat leaf2", unix.Unlinkat(bottom, "leaf2", 0))
	// The full path string exceeds PATH_MAX for both.
	full := r.dir + strings.Repeat("/"+comp, levels)
	r.e("open full path", func() error {
		fd, err := unix.Open(full, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}())
}

func caseOpenUnlinked(r *rec) {
	if !r.mustWrite("f", []byte("before unlink")) {
		return
	}
	fd, ok := openFlagsCase(r, "open f O_RDWR", "f", unix.O_RDWR, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	r.e("unlink f", unix.Unlink(r.p("f")))
	r.stat("f")
	var st unix.Stat_t
	r.e("fstat", unix.Fstat(fd, &st))
	r.v("fstat after unlink", "nlink=%d size=%d", st.Nlink, st.Size)
	buf := make([]byte, 64)
	n, err := unix.Pread(fd, buf, 0)
	r.v("pread after unlink", "%q %s", buf[:max(n, 0)], errName(err))
	n, err = unix.Pwrite(fd, pattern(100000, 4), 13)
	r.v("pwrite 100000 after unlink", "%d %s", n, errName(err))
	r.e("fstat", unix.Fstat(fd, &st))
	r.v("size after write", "%d", st.Size)
	big := make([]byte, 100013)
	n, err = unix.Pread(fd, big, 0)
	r.v("read back", "%d %s %s", n, errName(err), content(big[:max(n, 0)]))
	r.e("ftruncate 5", unix.Ftruncate(fd, 5))
	r.e("fchmod 0600", unix.Fchmod(fd, 0o600))
	r.e("fstat", unix.Fstat(fd, &st))
	r.add("fstat", fmtStat(&st))
	r.add("listing", dirListing(r.dir))
	// A second file: open, unlink, create a new one by the same name.
	r.mustWrite("g", []byte("old"))
	if fd2, ok := openFlagsCase(r, "open g", "g", unix.O_RDONLY, 0); ok {
		r.e("unlink g", unix.Unlink(r.p("g")))
		r.mustWrite("g", []byte("new"))
		buf := make([]byte, 8)
		n, err := unix.Pread(fd2, buf, 0)
		r.v("old fd reads", "%q %s", buf[:max(n, 0)], errName(err))
		unix.Close(fd2)
		r.add("content g", readContent(r.p("g")))
	}
}
