package qtfs_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func hostStat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return &st
}

// TestOperations exercises the operations issue 3 lists, checking results on
// the host side of the export.
func TestOperations(t *testing.T) {
	tb := newTestbed(t, tbOpts{})

	t.Run("CreateExclTruncAppend", func(t *testing.T) {
		p := tb.dpu("f")
		must(t, os.WriteFile(p, []byte("0123456789"), 0o644))
		if _, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, os.ErrExist) {
			t.Fatalf("O_EXCL on existing file: %v", err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		f.Write([]byte("ab"))
		f.Close()
		if b, _ := os.ReadFile(tb.host("f")); string(b) != "0123456789ab" {
			t.Fatalf("append: host has %q", b)
		}
		f, err = os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
		must(t, err)
		f.Close()
		if st := hostStat(t, tb.host("f")); st.Size != 0 {
			t.Fatalf("O_TRUNC: size %d", st.Size)
		}
	})

	t.Run("SetattrChmodChownTruncateUtimens", func(t *testing.T) {
		p := tb.dpu("attr")
		must(t, os.WriteFile(p, []byte("hello world"), 0o600))
		must(t, unix.Chmod(p, 0o4751))
		must(t, os.Chown(p, 1234, 5678))
		must(t, os.Truncate(p, 5))
		mt := time.Unix(1_000_000_000, 123456789)
		must(t, os.Chtimes(p, mt, mt))
		must(t, unix.Chmod(p, 0o4751)) // chown cleared setuid
		st := hostStat(t, tb.host("attr"))
		if st.Mode&07777 != 0o4751 || st.Uid != 1234 || st.Gid != 5678 || st.Size != 5 || st.Mtim.Sec != mt.Unix() || st.Mtim.Nsec != 123456789 {
			t.Fatalf("host stat %+v", st)
		}
		must(t, os.Chmod(p, 0))
		fi, err := os.Stat(p)
		must(t, err)
		if fi.Mode().Perm() != 0 {
			t.Fatalf("mode 0 reported as %v", fi.Mode())
		}
	})

	t.Run("RenameFlags", func(t *testing.T) {
		must(t, os.WriteFile(tb.dpu("ra"), []byte("a"), 0o644))
		must(t, os.WriteFile(tb.dpu("rb"), []byte("b"), 0o644))
		err := unix.Renameat2(unix.AT_FDCWD, tb.dpu("ra"), unix.AT_FDCWD, tb.dpu("rb"), unix.RENAME_NOREPLACE)
		if err != unix.EEXIST {
			t.Fatalf("RENAME_NOREPLACE: %v", err)
		}
		must(t, unix.Renameat2(unix.AT_FDCWD, tb.dpu("ra"), unix.AT_FDCWD, tb.dpu("rb"), unix.RENAME_EXCHANGE))
		a, _ := os.ReadFile(tb.host("ra"))
		b, _ := os.ReadFile(tb.host("rb"))
		if string(a) != "b" || string(b) != "a" {
			t.Fatalf("RENAME_EXCHANGE: ra=%q rb=%q", a, b)
		}
		must(t, os.Mkdir(tb.dpu("rdir"), 0o755))
		must(t, os.Rename(tb.dpu("ra"), tb.dpu("rdir/moved")))
		if b, _ := os.ReadFile(tb.host("rdir/moved")); string(b) != "b" {
			t.Fatalf("rename into dir: %q", b)
		}
	})

	t.Run("LinkSymlinkMknod", func(t *testing.T) {
		must(t, os.WriteFile(tb.dpu("lsrc"), []byte("x"), 0o644))
		must(t, os.Link(tb.dpu("lsrc"), tb.dpu("ldst")))
		if st := hostStat(t, tb.host("lsrc")); st.Nlink != 2 {
			t.Fatalf("nlink %d", st.Nlink)
		}
		must(t, os.Symlink("../somewhere/else", tb.dpu("sl")))
		if l, err := os.Readlink(tb.host("sl")); err != nil || l != "../somewhere/else" {
			t.Fatalf("symlink on host: %q %v", l, err)
		}
		must(t, unix.Mkfifo(tb.dpu("fifo"), 0o640))
		if st := hostStat(t, tb.host("fifo")); st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o777 != 0o640 {
			t.Fatalf("fifo mode %o", st.Mode)
		}
		must(t, unix.Mknod(tb.dpu("sock"), unix.S_IFSOCK|0o600, 0))
		// whiteout (0/0 char device) is allowed, a real device is not
		must(t, unix.Mknod(tb.dpu("wh"), unix.S_IFCHR|0o600, 0))
		if err := unix.Mknod(tb.dpu("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != unix.EPERM {
			t.Fatalf("mknod of /dev/null clone: %v", err)
		}
		if _, err := os.Lstat(tb.host("null")); !os.IsNotExist(err) {
			t.Fatalf("device created on host: %v", err)
		}
	})

	t.Run("Xattrs", func(t *testing.T) {
		p := tb.dpu("x")
		must(t, os.WriteFile(p, nil, 0o644))
		must(t, unix.Setxattr(p, "user.k", []byte("v1"), 0))
		must(t, unix.Setxattr(p, "trusted.overlay.opaque", []byte("y"), 0))
		buf := make([]byte, 64)
		n, err := unix.Getxattr(tb.host("x"), "trusted.overlay.opaque", buf)
		if err != nil || string(buf[:n]) != "y" {
			t.Fatalf("trusted xattr on host: %q %v", buf[:n], err)
		}
		n, err = unix.Listxattr(p, buf)
		must(t, err)
		if !strings.Contains(string(buf[:n]), "user.k") {
			t.Fatalf("listxattr: %q", buf[:n])
		}
		if _, err := unix.Getxattr(p, "user.k", make([]byte, 1)); err != unix.ERANGE {
			t.Fatalf("small buffer: %v", err)
		}
		must(t, unix.Removexattr(p, "user.k"))
		if _, err := unix.Getxattr(p, "user.k", buf); err != unix.ENODATA {
			t.Fatalf("removed xattr: %v", err)
		}
		if err := unix.Setxattr(p, "trusted.overlay.opaque", []byte("z"), unix.XATTR_CREATE); err != unix.EEXIST {
			t.Fatalf("XATTR_CREATE on existing: %v", err)
		}
	})

	t.Run("FallocateSeekCopyRange", func(t *testing.T) {
		p := tb.dpu("sparse")
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
		must(t, err)
		defer f.Close()
		must(t, unix.Fallocate(int(f.Fd()), 0, 0, 1<<20))
		if st := hostStat(t, tb.host("sparse")); st.Size != 1<<20 || st.Blocks == 0 {
			t.Fatalf("fallocate: %+v", st)
		}
		must(t, f.Truncate(0))
		f.WriteAt([]byte("data"), 4<<20)
		off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
		must(t, err)
		if off < 1<<20 {
			t.Fatalf("SEEK_DATA found %d", off)
		}
		hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
		must(t, err)
		if hole != 0 {
			t.Fatalf("SEEK_HOLE %d", hole)
		}
		g, err := os.Create(tb.dpu("copy"))
		must(t, err)
		defer g.Close()
		f.WriteAt([]byte("head"), 0)
		var offIn int64
		n, err := unix.CopyFileRange(int(f.Fd()), &offIn, int(g.Fd()), nil, 4, 0)
		if err != nil || n != 4 {
			t.Fatalf("copy_file_range: %d %v", n, err)
		}
		if b, _ := os.ReadFile(tb.host("copy")); string(b) != "head" {
			t.Fatalf("copied %q", b)
		}
	})

	t.Run("Locks", func(t *testing.T) {
		p := tb.dpu("lock")
		must(t, os.WriteFile(p, nil, 0o644))
		f1, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		defer f1.Close()
		f2, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		defer f2.Close()
		must(t, unix.Flock(int(f1.Fd()), unix.LOCK_EX|unix.LOCK_NB))
		if err := unix.Flock(int(f2.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
			t.Fatalf("second flock: %v", err)
		}
		// the lock is held on the host: a host process sees it
		h, err := os.OpenFile(tb.host("lock"), os.O_RDWR, 0)
		must(t, err)
		defer h.Close()
		if err := unix.Flock(int(h.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
			t.Fatalf("host flock while DPU holds it: %v", err)
		}
		must(t, unix.Flock(int(f1.Fd()), unix.LOCK_UN))
		must(t, unix.Flock(int(f2.Fd()), unix.LOCK_EX|unix.LOCK_NB))
		must(t, unix.Flock(int(f2.Fd()), unix.LOCK_UN))

		// POSIX lock held on the host: an OFD lock from the host conflicts.
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 10}
		must(t, unix.FcntlFlock(f1.Fd(), unix.F_SETLK, &lk))
		hl := unix.Flock_t{Type: unix.F_WRLCK, Start: 5, Len: 1}
		if err := unix.FcntlFlock(h.Fd(), unix.F_OFD_SETLK, &hl); err != unix.EAGAIN && err != unix.EACCES {
			t.Fatalf("host lock over DPU POSIX lock: %v", err)
		}
		// close() of any fd of the owner drops its POSIX locks
		f3, _ := os.Open(p)
		f3.Close()
		hl = unix.Flock_t{Type: unix.F_WRLCK, Start: 5, Len: 1}
		must(t, unix.FcntlFlock(h.Fd(), unix.F_OFD_SETLK, &hl))
	})

	t.Run("SharedMmapWrite", func(t *testing.T) {
		p := tb.dpu("mmap")
		must(t, os.WriteFile(p, make([]byte, 8192), 0o644))
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		m, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		must(t, err)
		copy(m[4096:], "mmapped")
		must(t, unix.Msync(m, unix.MS_SYNC))
		if b, _ := os.ReadFile(tb.host("mmap")); !bytes.Equal(b[4096:4103], []byte("mmapped")) {
			t.Fatalf("msync did not reach the host: %q", b[4096:4103])
		}
		copy(m[0:], "second")
		must(t, unix.Munmap(m))
		must(t, f.Close())
		if b, _ := os.ReadFile(tb.host("mmap")); !bytes.Equal(b[:6], []byte("second")) {
			t.Fatalf("munmap+close did not reach the host: %q", b[:6])
		}
	})

	t.Run("StatfsFsync", func(t *testing.T) {
		var a, b unix.Statfs_t
		must(t, unix.Statfs(tb.mnt, &a))
		must(t, unix.Statfs(tb.export, &b))
		if a.Blocks != b.Blocks || a.Bsize != b.Bsize {
			t.Fatalf("statfs %+v vs %+v", a, b)
		}
		f, err := os.Create(tb.dpu("sync"))
		must(t, err)
		f.Write([]byte("x"))
		must(t, f.Sync())
		must(t, unix.Fdatasync(int(f.Fd())))
		f.Close()
	})

	t.Run("LargeIO", func(t *testing.T) {
		data := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB
		must(t, os.WriteFile(tb.dpu("big"), data, 0o644))
		h, err := os.ReadFile(tb.host("big"))
		must(t, err)
		if !bytes.Equal(h, data) {
			t.Fatal("host content differs")
		}
		d, err := os.ReadFile(tb.dpu("big"))
		must(t, err)
		if !bytes.Equal(d, data) {
			t.Fatal("read back differs")
		}
	})

	t.Run("HostChangesVisible", func(t *testing.T) {
		must(t, os.WriteFile(tb.dpu("hc"), []byte("old"), 0o644))
		if _, err := os.Stat(tb.dpu("hc-new")); !os.IsNotExist(err) {
			t.Fatal(err)
		}
		must(t, os.WriteFile(tb.host("hc"), []byte("new content"), 0o644))
		must(t, os.WriteFile(tb.host("hc-new"), nil, 0o644))
		deadline := time.Now().Add(1100 * time.Millisecond)
		for {
			b, _ := os.ReadFile(tb.dpu("hc"))
			_, err := os.Stat(tb.dpu("hc-new"))
			if string(b) == "new content" && err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("host change not visible within 1s: %q %v", b, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// TestCredentials checks that files get the caller's uid/gid and the exact
// mode (umask applied once, setuid/setgid kept, setgid directories inherited)
// and that permissions are enforced for non-root callers.
func TestCredentials(t *testing.T) {
	tb := newTestbed(t, tbOpts{})
	must(t, os.Chmod(tb.export, 0o777))
	for d := filepath.Dir(tb.mnt); d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		must(t, os.Chmod(d, 0o755))
	}
	must(t, os.Mkdir(tb.host("sgid"), 0o777))
	must(t, os.Chown(tb.host("sgid"), 0, 50))
	must(t, unix.Chmod(tb.host("sgid"), 0o2777))
	must(t, os.WriteFile(tb.host("rootonly"), []byte("secret"), 0o600))

	script := `umask 027 && touch f && mkdir d && chmod 4750 f && touch sgid/g && mkdir sgid/sd && ln -s target l && ` +
		`if cat rootonly 2>/dev/null; then echo READ-SECRET; fi; if touch rootonly 2>/dev/null; then echo WROTE; fi`
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = tb.mnt
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(out) != 0 {
		t.Fatalf("non-root caller bypassed permissions: %s", out)
	}
	check := func(name string, mode uint32, uid, gid uint32) {
		t.Helper()
		st := hostStat(t, tb.host(name))
		if st.Mode&07777 != mode || st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: mode %o uid %d gid %d, want %o %d %d", name, st.Mode&07777, st.Uid, st.Gid, mode, uid, gid)
		}
	}
	check("f", 0o4750, 1000, 1000)
	check("d", 0o750, 1000, 1000)
	check("sgid/g", 0o640, 1000, 50)
	check("sgid/sd", 0o2750, 1000, 50)
	if st := hostStat(t, tb.host("l")); st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("symlink owner %d:%d", st.Uid, st.Gid)
	}
}

// TestReadOnlyExport: reads work, every kind of write answers EROFS and
// nothing changes on the host.
func TestReadOnlyExport(t *testing.T) {
	tb := newTestbed(t, tbOpts{readOnly: true})
	must(t, os.WriteFile(tb.host("f"), []byte("content"), 0o644))
	must(t, os.Mkdir(tb.host("d"), 0o755))
	if b, err := os.ReadFile(tb.dpu("f")); err != nil || string(b) != "content" {
		t.Fatalf("read: %q %v", b, err)
	}
	for name, op := range map[string]func() error{
		"create":   func() error { return os.WriteFile(tb.dpu("new"), nil, 0o644) },
		"write":    func() error { _, err := os.OpenFile(tb.dpu("f"), os.O_WRONLY, 0); return err },
		"trunc":    func() error { return os.Truncate(tb.dpu("f"), 0) },
		"chmod":    func() error { return os.Chmod(tb.dpu("f"), 0o777) },
		"mkdir":    func() error { return os.Mkdir(tb.dpu("nd"), 0o755) },
		"rmdir":    func() error { return os.Remove(tb.dpu("d")) },
		"unlink":   func() error { return os.Remove(tb.dpu("f")) },
		"rename":   func() error { return os.Rename(tb.dpu("f"), tb.dpu("g")) },
		"link":     func() error { return os.Link(tb.dpu("f"), tb.dpu("g")) },
		"symlink":  func() error { return os.Symlink("f", tb.dpu("s")) },
		"mkfifo":   func() error { return unix.Mkfifo(tb.dpu("p"), 0o644) },
		"setxattr": func() error { return unix.Setxattr(tb.dpu("f"), "user.x", []byte("1"), 0) },
	} {
		if err := op(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
	ents, _ := os.ReadDir(tb.export)
	if len(ents) != 2 {
		t.Fatalf("host export changed: %v", ents)
	}
	if b, _ := os.ReadFile(tb.host("f")); string(b) != "content" {
		t.Fatal("host file changed")
	}
}

// TestOverlayOnQtfs: overlayfs with lower and upper dirs on a qtfs mount;
// whiteouts and opaque directories land on the host.
func TestOverlayOnQtfs(t *testing.T) {
	tb := newTestbed(t, tbOpts{})
	for _, d := range []string{"lower/dir", "upper", "work"} {
		must(t, os.MkdirAll(tb.host(d), 0o755))
	}
	must(t, os.WriteFile(tb.host("lower/gone"), []byte("x"), 0o644))
	must(t, os.WriteFile(tb.host("lower/dir/inner"), []byte("x"), 0o644))
	must(t, os.WriteFile(tb.host("lower/keep"), []byte("lower"), 0o644))
	merged := filepath.Join(t.TempDir(), "merged")
	must(t, os.Mkdir(merged, 0o755))
	opts := "lowerdir=" + tb.dpu("lower") + ",upperdir=" + tb.dpu("upper") + ",workdir=" + tb.dpu("work")
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay on qtfs: %v", err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)

	must(t, os.WriteFile(filepath.Join(merged, "keep"), []byte("upper"), 0o644))
	must(t, os.Remove(filepath.Join(merged, "gone")))
	must(t, os.RemoveAll(filepath.Join(merged, "dir")))
	must(t, os.Mkdir(filepath.Join(merged, "dir"), 0o755))
	must(t, os.WriteFile(filepath.Join(merged, "dir/new"), []byte("n"), 0o644))

	if b, _ := os.ReadFile(tb.host("upper/keep")); string(b) != "upper" {
		t.Fatalf("copy-up: %q", b)
	}
	st := hostStat(t, tb.host("upper/gone"))
	var wh [2]byte
	_, xerr := unix.Lgetxattr(tb.host("upper/gone"), "trusted.overlay.whiteout", wh[:])
	if !(st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0) && xerr != nil {
		t.Fatalf("no whiteout for removed lower file: mode %o rdev %d", st.Mode, st.Rdev)
	}
	var buf [8]byte
	n, err := unix.Getxattr(tb.host("upper/dir"), "trusted.overlay.opaque", buf[:])
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opaque dir xattr: %q %v", buf[:n], err)
	}
	ents, _ := os.ReadDir(filepath.Join(merged, "dir"))
	if len(ents) != 1 || ents[0].Name() != "new" {
		t.Fatalf("merged dir: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(merged, "gone")); !os.IsNotExist(err) {
		t.Fatalf("whiteout not honoured: %v", err)
	}
}

// TestHostPushInvalidation: with a long TTL, host changes still show up on
// the DPU quickly because the server pushes invalidations.
func TestHostPushInvalidation(t *testing.T) {
	tb := newTestbedTTL(t, 30*time.Second)
	must(t, os.WriteFile(tb.host("f"), []byte("v1"), 0o644))
	must(t, os.WriteFile(tb.host("gone"), []byte("x"), 0o644))
	if b, _ := os.ReadFile(tb.dpu("f")); string(b) != "v1" {
		t.Fatalf("%q", b)
	}
	os.Stat(tb.dpu("new"))
	os.Stat(tb.dpu("gone"))
	fi, _ := os.Stat(tb.dpu("f"))
	_ = fi
	must(t, os.WriteFile(tb.host("f"), []byte("version2"), 0o644))
	must(t, os.WriteFile(tb.host("new"), nil, 0o644))
	must(t, os.Remove(tb.host("gone")))
	must(t, os.Chmod(tb.host("f"), 0o600))
	deadline := time.Now().Add(time.Second)
	for {
		b, _ := os.ReadFile(tb.dpu("f"))
		_, errNew := os.Stat(tb.dpu("new"))
		_, errGone := os.Stat(tb.dpu("gone"))
		fi, _ := os.Stat(tb.dpu("f"))
		if string(b) == "version2" && errNew == nil && os.IsNotExist(errGone) && fi != nil && fi.Mode().Perm() == 0o600 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not invalidated with a 30s TTL: %q new=%v gone=%v mode=%v", b, errNew, errGone, fi.Mode())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestListingCacheCoherence: lookups answered from a directory listing never
// hide a change for longer than the TTL, even without host notifications,
// and never hide this client's own changes.
func TestListingCacheCoherence(t *testing.T) {
	tb := newTestbed(t, tbOpts{noNotify: true})
	must(t, os.Mkdir(tb.host("d"), 0o755))
	for i := 0; i < 50; i++ {
		must(t, os.WriteFile(tb.host("d/f"+strconv.Itoa(i)), []byte("x"), 0o644))
	}
	os.Stat(tb.dpu("d/f0")) // miss: lists d in the background
	time.Sleep(100 * time.Millisecond)

	// A listing never answers for a name the host would reject.
	if _, err := os.Stat(tb.dpu("d/" + strings.Repeat("n", 256))); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("256-byte name: %v, want ENAMETOOLONG", err)
	}

	// Own changes show at once.
	must(t, os.WriteFile(tb.dpu("d/f1"), []byte("longer content"), 0o644))
	if fi, err := os.Stat(tb.dpu("d/f1")); err != nil || fi.Size() != 14 {
		t.Fatalf("own write: %v %v", fi, err)
	}
	must(t, os.Remove(tb.dpu("d/f2")))
	if _, err := os.Stat(tb.dpu("d/f2")); !os.IsNotExist(err) {
		t.Fatalf("own unlink: %v", err)
	}
	must(t, os.WriteFile(tb.dpu("d/new"), nil, 0o600))
	if _, err := os.Stat(tb.dpu("d/new")); err != nil {
		t.Fatalf("own create: %v", err)
	}

	// A name the host creates is found by the next lookup at once, listing
	// or not (no notifications in this test).
	must(t, os.WriteFile(tb.host("d/fresh"), nil, 0o644))
	if _, err := os.Stat(tb.dpu("d/fresh")); err != nil {
		t.Fatalf("new host file not found right away: %v", err)
	}

	// Host changes show within the TTL (1s) plus a little.
	must(t, os.WriteFile(tb.host("d/f3"), []byte("host grew this"), 0o644))
	must(t, os.Remove(tb.host("d/f4")))
	must(t, os.WriteFile(tb.host("d/hostnew"), nil, 0o644))
	deadline := time.Now().Add(1500 * time.Millisecond)
	for {
		fi, err3 := os.Stat(tb.dpu("d/f3"))
		_, err4 := os.Stat(tb.dpu("d/f4"))
		_, errNew := os.Stat(tb.dpu("d/hostnew"))
		if err3 == nil && fi.Size() == 14 && os.IsNotExist(err4) && errNew == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host changes hidden past the TTL: f3=%v/%v f4=%v hostnew=%v", fi, err3, err4, errNew)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if hits := tb.m.Session().Info().PrefetchHits; hits == 0 {
		t.Fatal("no lookup was answered from a listing")
	}
}

// TestLockWait: a blocked lock wait is granted when the holder lets go, and
// a waiter that is interrupted by a signal returns instead of hanging.
func TestLockWait(t *testing.T) {
	tb := newTestbed(t, tbOpts{})
	p := tb.dpu("lk")
	must(t, os.WriteFile(p, nil, 0o644))
	holder, err := os.Open(p)
	must(t, err)
	defer holder.Close()
	must(t, unix.Flock(int(holder.Fd()), unix.LOCK_EX))

	// Interrupted wait: a handled (non-fatal) signal interrupts the waiter,
	// so the request must really stop waiting on the host.
	start := time.Now()
	script := `import fcntl, signal, sys
def onalarm(sig, frame):
    raise InterruptedError("interrupted")
signal.signal(signal.SIGALRM, onalarm)
f = open(sys.argv[1], "rb")
signal.alarm(1)
try:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("granted")
except InterruptedError:
    print("interrupted")
`
	out, err := exec.Command("python3", "-c", script, p).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "interrupted" {
		t.Fatalf("interrupted waiter: %v %q", err, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("interrupted waiter took %v", d)
	}

	// Granted wait.
	waiter := exec.Command("flock", "-x", p, "echo", "granted")
	var wout bytes.Buffer
	waiter.Stdout = &wout
	must(t, waiter.Start())
	time.Sleep(300 * time.Millisecond)
	must(t, unix.Flock(int(holder.Fd()), unix.LOCK_UN))
	done := make(chan error, 1)
	go func() { done <- waiter.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(wout.String(), "granted") {
			t.Fatalf("waiter: %v %q", err, wout.String())
		}
	case <-time.After(10 * time.Second):
		waiter.Process.Kill()
		t.Fatal("waiter not granted after release")
	}
}
