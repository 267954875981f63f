package escape

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// mustFail runs op at p and records a violation if it succeeded.
func (c *caseRun) mustFail(what string, o op, p string) {
	err := o.fn(p)
	c.note("%s: %s => %s", what, o.name, errName(err))
	if err == nil {
		c.violation("%s: %s succeeded (must be refused)", what, o.name)
	}
}

// anyOutcome runs op at p and records its outcome; only the host-side
// snapshot judges it.
func (c *caseRun) anyOutcome(what string, o op, p string) {
	c.note("%s: %s => %s", what, o.name, errName(o.fn(p)))
}

func caseDotDot(c *caseRun) {
	var parent, mntParent, top, viaDots unix.Stat_t
	if err := unix.Stat(filepath.Join(c.l.Mount, ".."), &mntParent); err != nil {
		c.violation("stat mount/..: %v", err)
	}
	if err := unix.Stat(filepath.Dir(c.l.Mount), &parent); err != nil {
		c.violation("stat dirname(mount): %v", err)
	}
	if mntParent.Dev != parent.Dev || mntParent.Ino != parent.Ino {
		c.violation("mount/.. is not the mount point's parent on the client (dev %d ino %d, want dev %d ino %d)",
			mntParent.Dev, mntParent.Ino, parent.Dev, parent.Ino)
	}
	if err := os.MkdirAll(filepath.Join(c.mnt, "a", "b"), 0o755); err != nil {
		c.violation("mkdir through mount: %v", err)
		return
	}
	unix.Stat(c.l.Mount, &top)
	if err := unix.Stat(filepath.Join(c.mnt, "a", "b", "..", "..", ".."), &viaDots); err != nil {
		c.violation("stat case/a/b/../../..: %v", err)
	}
	if top.Dev != viaDots.Dev || top.Ino != viaDots.Ino {
		c.violation("case/a/b/../../.. is not the mount root")
	}
	// A create through ".." lands in the export, next to a.
	p := c.mnt + "/a/b/../../made-via-dotdot"
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		c.violation("create via ..: %v", err)
	} else if _, err := os.Lstat(filepath.Join(c.host, "made-via-dotdot")); err != nil {
		c.violation("file created via .. is not in the export on the host: %v", err)
	}
	// Walking up out of the mount and back down the host's relative path
	// to the outside directory reaches nothing on the client.
	for _, o := range fileOps {
		c.mustFail("host-relative path via ..", o, filepath.Join(c.mnt, c.relOut, "sentinel"))
	}
	fd, err := unix.Open(c.l.Mount, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		how := unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH}
		nfd, err := unix.Openat2(fd, c.name+"/../../x", &how)
		c.note("openat2 RESOLVE_BENEATH %s/../../x => %s", c.name, errName(err))
		if err == nil {
			unix.Close(nfd)
			c.violation("openat2 RESOLVE_BENEATH escaped the mount root")
		}
		unix.Close(fd)
	}
}

// caseRelLink: symlinks in the export leading out by a relative path.
// The client resolves them from the mount (to nothing, by the layout
// rule); the server must neither follow them for no-follow operations.
func caseRelLink(c *caseRun) {
	c.hostSymlink("out-file", filepath.Join(c.relOut, "sentinel"))
	c.hostSymlink("out-dir", filepath.Join(c.relOut, "sentdir"))
	c.hostFile("keep", "keep")
	for _, o := range fileOps {
		c.mustFail("follow relative link", o, filepath.Join(c.mnt, "out-file"))
	}
	for _, o := range dirOps(c, 0) {
		c.mustFail("through relative dir link", o, filepath.Join(c.mnt, "out-dir"))
	}
	for _, o := range noFollowOps {
		c.anyOutcome("no-follow on relative link", o, filepath.Join(c.mnt, "out-file"))
	}
	c.checkLinkIntact("out-file", filepath.Join(c.relOut, "sentinel"))
	// A link created through the mount is stored verbatim, never resolved.
	if err := unix.Symlink(filepath.Join(c.relOut, "sentinel"), filepath.Join(c.mnt, "made-link")); err != nil {
		c.note("symlink through mount => %s", errName(err))
	} else {
		c.checkLinkIntact("made-link", filepath.Join(c.relOut, "sentinel"))
		for _, o := range noFollowOps {
			c.anyOutcome("no-follow on link made through the mount", o, filepath.Join(c.mnt, "made-link"))
		}
	}
}

func caseAbsLink(c *caseRun) {
	c.hostSymlink("abs-file", filepath.Join(c.l.Outside, "sentinel"))
	c.hostSymlink("abs-dir", filepath.Join(c.l.Outside, "sentdir"))
	c.hostFile("keep", "keep")
	if c.outVisible {
		c.note("the outside directory is visible to the client at %s: client-followed operations on absolute links are not run (the client kernel would legitimately reach it)", c.l.Outside)
	} else {
		for _, o := range fileOps {
			c.mustFail("follow absolute link", o, filepath.Join(c.mnt, "abs-file"))
		}
		for _, o := range dirOps(c, 0) {
			c.mustFail("through absolute dir link", o, filepath.Join(c.mnt, "abs-dir"))
		}
	}
	for _, o := range noFollowOps {
		c.anyOutcome("no-follow on absolute link", o, filepath.Join(c.mnt, "abs-file"))
	}
	c.checkLinkIntact("abs-file", filepath.Join(c.l.Outside, "sentinel"))
}

// checkLinkIntact verifies on the host that a symlink is still a symlink
// with the same target (a server resolving it would have replaced it).
func (c *caseRun) checkLinkIntact(name, target string) {
	got, err := os.Readlink(filepath.Join(c.host, name))
	if err != nil || got != target {
		c.note("host %s: readlink => %q %v (was %q)", name, got, err, target)
	}
}

// swapToLink replaces the host file name by a symlink leading out, after
// the client has looked it up (so the client still holds the old node).
func (c *caseRun) swapToLink(name, target string) error {
	tmp := filepath.Join(c.host, name+".swap")
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	// Exchange, so directories can be swapped too; the old entry stays
	// under name+".swap".
	return unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, filepath.Join(c.host, name), unix.RENAME_EXCHANGE)
}

// caseSwapFile: the client looks up a regular file; the host then replaces
// it by a symlink to the outside sentinel; the client operates on the name
// it still has cached. A server that works by host path follows the link.
func caseSwapFile(c *caseRun) {
	for i, o := range fileOps {
		name := fmt.Sprintf("f%d", i)
		c.hostFile(name, "victim")
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(c.mnt, name), &st); err != nil {
			c.violation("client lookup of %s: %v", name, err)
			continue
		}
		if err := c.swapToLink(name, filepath.Join(c.relOut, "sentinel")); err != nil {
			c.violation("host swap: %v", err)
			continue
		}
		c.anyOutcome("after host swapped file for link out", o, filepath.Join(c.mnt, name))
	}
}

// caseSwapFd: like caseSwapFile, but the client holds an open descriptor.
func caseSwapFd(c *caseRun) {
	fdOps := []struct {
		name string
		fn   func(fd int) error
	}{
		{"fchmod 0777", func(fd int) error { return unix.Fchmod(fd, 0o777) }},
		{"fchown 4321:4321", func(fd int) error { return unix.Fchown(fd, 4321, 4321) }},
		{"ftruncate 1", func(fd int) error { return unix.Ftruncate(fd, 1) }},
		{"pwrite", func(fd int) error { _, err := unix.Pwrite(fd, []byte("ESCAPED"), 0); return err }},
		{"fsetxattr user.escaped", func(fd int) error { return unix.Fsetxattr(fd, "user.escaped", []byte("1"), 0) }},
		{"futimens", func(fd int) error {
			return unix.UtimesNanoAt(fd, "", []unix.Timespec{{Sec: 7}, {Sec: 7}}, unix.AT_EMPTY_PATH)
		}},
		{"fallocate 1MiB", func(fd int) error { return unix.Fallocate(fd, 0, 0, 1<<20) }},
		{"fsync", func(fd int) error { return unix.Fsync(fd) }},
	}
	for i, o := range fdOps {
		name := fmt.Sprintf("f%d", i)
		c.hostFile(name, "victim")
		fd, err := unix.Open(filepath.Join(c.mnt, name), unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			c.violation("client open %s: %v", name, err)
			continue
		}
		if err := c.swapToLink(name, filepath.Join(c.relOut, "sentinel")); err != nil {
			c.violation("host swap: %v", err)
		}
		err = o.fn(fd)
		c.note("open fd after host swapped file for link out: %s => %s", o.name, errName(err))
		buf := make([]byte, 16)
		n, _ := unix.Pread(fd, buf, 0)
		if n >= 8 && string(buf[:8]) == "SENTINEL" {
			c.violation("open fd now reads the outside sentinel after %s", o.name)
		}
		unix.Close(fd)
	}
}

// caseSwapDirRace: a host goroutine keeps exchanging a directory of the
// export with a symlink leading out (renameat2 RENAME_EXCHANGE), while the
// client walks into it and creates, modifies and moves entries. Bounded by
// Layout.RaceFor.
func caseSwapDirRace(c *caseRun) {
	real := filepath.Join(c.host, "d")
	alt := filepath.Join(c.host, "d.alt")
	if err := os.Mkdir(real, 0o755); err != nil {
		c.violation("setup: %v", err)
		return
	}
	c.hostFile("d/inner", "export inner\n")
	c.hostFile("keep", "keep")
	if err := os.Symlink(filepath.Join(c.relOut, "sentdir"), alt); err != nil {
		c.violation("setup: %v", err)
		return
	}
	// The sentinel twin named like d/inner sits right in Outside/sentdir.
	var swaps atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Mostly a directory (so the client's cached lookup is a
			// directory), briefly the link: the window a path-based
			// server resolves through.
			if err := unix.Renameat2(unix.AT_FDCWD, real, unix.AT_FDCWD, alt, unix.RENAME_EXCHANGE); err == nil {
				swaps.Add(1)
			}
			for i := 0; i < 2000; i++ {
				_ = i * i
			}
			if err := unix.Renameat2(unix.AT_FDCWD, real, unix.AT_FDCWD, alt, unix.RENAME_EXCHANGE); err == nil {
				swaps.Add(1)
			}
			time.Sleep(100 * time.Microsecond)
			// Keep d/inner present in whichever entry is the real directory.
			for _, p := range []string{real, alt} {
				if st, err := os.Lstat(p); err == nil && st.IsDir() {
					if _, err := os.Lstat(filepath.Join(p, "inner")); err != nil {
						os.WriteFile(filepath.Join(p, "inner"), []byte("export inner\n"), 0o644)
					}
				}
			}
		}
	}()
	deadline := time.Now().Add(c.l.RaceFor)
	iters, oks := 0, 0
	for time.Now().Before(deadline) {
		// Start each round from a lookup that saw the directory.
		for t0 := time.Now(); time.Since(t0) < 100*time.Millisecond; {
			if st, err := os.Lstat(filepath.Join(c.mnt, "d")); err == nil && st.IsDir() {
				break
			}
		}
		for _, o := range dirOps(c, iters) {
			if o.fn(filepath.Join(c.mnt, "d")) == nil {
				oks++
			}
		}
		iters++
	}
	close(stop)
	wg.Wait()
	// Leave "d" a directory again so cleanup by the caller is simple.
	if st, err := os.Lstat(real); err == nil && !st.IsDir() {
		unix.Renameat2(unix.AT_FDCWD, real, unix.AT_FDCWD, alt, unix.RENAME_EXCHANGE)
	}
	c.note("race: %d client rounds (%d operations succeeded), %d host swaps in %v", iters, oks, swaps.Load(), c.l.RaceFor)
	if swaps.Load() == 0 || iters == 0 {
		c.violation("race did not run (swaps %d, rounds %d)", swaps.Load(), iters)
	}
}

func caseHardlinkOut(c *caseRun) {
	c.hostSymlink("abs-file", filepath.Join(c.l.Outside, "sentinel"))
	c.hostSymlink("rel-file", filepath.Join(c.relOut, "sentinel"))
	link := func(what, from, to string, flags int) {
		err := unix.Linkat(unix.AT_FDCWD, from, unix.AT_FDCWD, to, flags)
		c.note("%s => %s", what, errName(err))
		if err == nil {
			var a, b unix.Stat_t
			if unix.Stat(filepath.Join(c.l.Outside, "sentinel"), &a) == nil && unix.Lstat(filepath.Join(c.host, filepath.Base(to)), &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
				c.violation("%s: the export now holds a hard link to the outside sentinel", what)
			}
		}
	}
	if c.outVisible {
		link("link outside sentinel into the mount", filepath.Join(c.l.Outside, "sentinel"), filepath.Join(c.mnt, "hl0"), 0)
	}
	link("linkat absolute link AT_SYMLINK_FOLLOW", filepath.Join(c.mnt, "abs-file"), filepath.Join(c.mnt, "hl1"), unix.AT_SYMLINK_FOLLOW)
	link("linkat relative link AT_SYMLINK_FOLLOW", filepath.Join(c.mnt, "rel-file"), filepath.Join(c.mnt, "hl2"), unix.AT_SYMLINK_FOLLOW)
	link("linkat relative link (no follow)", filepath.Join(c.mnt, "rel-file"), filepath.Join(c.mnt, "hl3"), 0)
	for i, flags := range []int{0, unix.AT_SYMLINK_FOLLOW} {
		name := fmt.Sprintf("f%d", i)
		c.hostFile(name, "victim")
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(c.mnt, name), &st); err != nil {
			c.violation("client lookup: %v", err)
			continue
		}
		if err := c.swapToLink(name, filepath.Join(c.relOut, "sentinel")); err != nil {
			c.violation("host swap: %v", err)
		}
		link(fmt.Sprintf("link %s after host swapped it for a link out (flags %d)", name, flags),
			filepath.Join(c.mnt, name), filepath.Join(c.mnt, fmt.Sprintf("swap-hl%d", i)), flags)
	}
}

func caseRenameOut(c *caseRun) {
	c.hostFile("x", "export file")
	if c.outVisible {
		err := unix.Rename(filepath.Join(c.mnt, "x"), filepath.Join(c.l.Outside, "x"))
		c.note("rename mount file to the outside path => %s", errName(err))
		if err == nil {
			c.violation("rename from the mount to the outside directory succeeded")
		}
	}
	err := unix.Rename(filepath.Join(c.mnt, "x"), filepath.Join(c.mnt, c.relOut, "x"))
	c.note("rename to host-relative ../outside path => %s", errName(err))
	// Directory swapped for a link out between lookup and rename.
	for i := 0; i < 3; i++ {
		d := fmt.Sprintf("d%d", i)
		if err := os.Mkdir(filepath.Join(c.host, d), 0o755); err != nil {
			c.violation("setup: %v", err)
			return
		}
		c.hostFile(d+"/victim", "export victim")
		c.hostFile(fmt.Sprintf("mv%d", i), "to be moved")
		var st unix.Stat_t
		unix.Lstat(filepath.Join(c.mnt, d, "victim"), &st)
		if err := c.swapToLink(d, filepath.Join(c.relOut, "sentdir")); err != nil {
			c.violation("host swap: %v", err)
			continue
		}
		switch i {
		case 0:
			err = unix.Rename(filepath.Join(c.mnt, fmt.Sprintf("mv%d", i)), filepath.Join(c.mnt, d, "moved-in"))
			c.note("rename file into swapped dir => %s", errName(err))
		case 1:
			err = unix.Rename(filepath.Join(c.mnt, d, "victim"), filepath.Join(c.mnt, "taken"))
			c.note("rename victim out of swapped dir => %s", errName(err))
		case 2:
			err = unix.Renameat2(unix.AT_FDCWD, filepath.Join(c.mnt, fmt.Sprintf("mv%d", i)), unix.AT_FDCWD, filepath.Join(c.mnt, d, "victim"), unix.RENAME_EXCHANGE)
			c.note("rename exchange with victim in swapped dir => %s", errName(err))
		}
	}
}

func caseNoDev(c *caseRun) {
	for _, d := range []struct {
		name string
		mode uint32
		dev  int
	}{
		{"null-twin", unix.S_IFCHR | 0o666, int(unix.Mkdev(1, 3))},
		{"mem-twin", unix.S_IFCHR | 0o600, int(unix.Mkdev(1, 1))},
		{"loop-twin", unix.S_IFBLK | 0o600, int(unix.Mkdev(7, 0))},
	} {
		err := unix.Mknod(filepath.Join(c.mnt, d.name), d.mode, d.dev)
		c.note("mknod %s => %s", d.name, errName(err))
		if err == nil {
			c.violation("mknod of device %s on a nodev export succeeded", d.name)
		}
		if _, err := os.Lstat(filepath.Join(c.host, d.name)); err == nil {
			c.violation("device node %s exists on the host", d.name)
		}
	}
	// Not a device: overlayfs whiteouts (char 0:0) are how containerd's
	// overlay snapshotter records deletions; noted, not judged.
	err := unix.Mknod(filepath.Join(c.mnt, "whiteout"), unix.S_IFCHR, 0)
	c.note("mknod whiteout (char 0:0) => %s", errName(err))
}

// caseReadOnly: every modifying operation must answer EROFS and the
// export must be unchanged on the host; reading still works.
func caseReadOnly(c *caseRun) {
	c.hostFile("file", "read-only content")
	c.hostFile("dir/inner", "inner")
	c.hostSymlink("link", "file")
	unix.Setxattr(filepath.Join(c.host, "file"), "user.k", []byte("v"), 0)
	before, err := takeSnapshot(c.l.HostExport)
	if err != nil {
		c.violation("snapshot: %v", err)
		return
	}
	m := func(n string) string { return filepath.Join(c.mnt, n) }
	openOp := func(flags int) func(string) error {
		return func(p string) error {
			fd, err := unix.Open(p, flags|unix.O_CLOEXEC, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}
	}
	ops := []struct {
		o op
		p string
	}{
		{op{"create", openOp(unix.O_CREAT | unix.O_WRONLY)}, m("new")},
		{op{"open O_WRONLY", openOp(unix.O_WRONLY)}, m("file")},
		{op{"open O_RDWR", openOp(unix.O_RDWR)}, m("file")},
		{op{"open O_RDONLY|O_TRUNC", openOp(unix.O_RDONLY | unix.O_TRUNC)}, m("file")},
		{op{"mkdir", func(p string) error { return unix.Mkdir(p, 0o755) }}, m("newdir")},
		{op{"rmdir", unix.Rmdir}, m("dir")},
		{op{"unlink", unix.Unlink}, m("file")},
		{op{"unlink symlink", unix.Unlink}, m("link")},
		{op{"rename", func(p string) error { return unix.Rename(p, m("renamed")) }}, m("file")},
		{op{"link", func(p string) error { return unix.Link(p, m("hardlink")) }}, m("file")},
		{op{"symlink", func(p string) error { return unix.Symlink("file", p) }}, m("newlink")},
		{op{"mkfifo", func(p string) error { return unix.Mkfifo(p, 0o644) }}, m("fifo")},
		{op{"chmod", func(p string) error { return unix.Chmod(p, 0o777) }}, m("file")},
		{op{"chown", func(p string) error { return unix.Chown(p, 4321, 4321) }}, m("file")},
		{op{"truncate", func(p string) error { return unix.Truncate(p, 0) }}, m("file")},
		{op{"utimensat now", func(p string) error { return unix.UtimesNanoAt(unix.AT_FDCWD, p, nil, 0) }}, m("file")},
		{op{"setxattr", func(p string) error { return unix.Setxattr(p, "user.new", []byte("v"), 0) }}, m("file")},
		{op{"removexattr", func(p string) error { return unix.Removexattr(p, "user.k") }}, m("file")},
		{op{"lsetxattr trusted on symlink", func(p string) error { return unix.Lsetxattr(p, "trusted.x", []byte("v"), 0) }}, m("link")},
		{op{"create in subdir", openOp(unix.O_CREAT | unix.O_WRONLY)}, m("dir/new")},
	}
	for _, x := range ops {
		err := x.o.fn(x.p)
		c.note("%s => %s", x.o.name, errName(err))
		if err != unix.EROFS {
			c.violation("%s on a read-only export: got %s, want EROFS", x.o.name, errName(err))
		}
	}
	if b, err := os.ReadFile(m("file")); err != nil || string(b) != "read-only content" {
		c.violation("reading the read-only export: %q %v", b, err)
	}
	after, err := takeSnapshot(c.l.HostExport)
	if err != nil {
		c.violation("snapshot after: %v", err)
		return
	}
	c.rep.Violations = append(c.rep.Violations, before.diff(after, "export")...)
}
