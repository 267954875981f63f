package server

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// fakeOpenByHandle makes open_by_handle_at answer ENOMEM for the next
// enomem calls (all of them if enomem < 0), then ask the kernel; it counts
// the calls.
func fakeOpenByHandle(t *testing.T, enomem int) *atomic.Int64 {
	var calls atomic.Int64
	var left atomic.Int64
	left.Store(int64(enomem))
	fake := func(mountFd int, h unix.FileHandle, flags int) (int, error) {
		calls.Add(1)
		if enomem < 0 || left.Add(-1) >= 0 {
			return -1, unix.ENOMEM
		}
		return unix.OpenByHandleAt(mountFd, h, flags)
	}
	openByHandleHook.Store(&fake)
	t.Cleanup(func() { openByHandleHook.Store(nil) })
	return &calls
}

// TestStaleHandleENOMEM: a node whose inode the host freed answers ENOENT,
// also when the kernel first says ENOMEM for its handle, as ext4 does while
// the freed inode number is being reused by a file under creation (this was
// go-fuse posixtest OpenSymlinkRace failing with "Open: cannot allocate
// memory"); ENOMEM that persists is reported.
func TestStaleHandleENOMEM(t *testing.T) {
	exp := t.TempDir()
	sock, _ := startServer(t, Export{Name: "e", Path: exp})
	c, hello := dialRaw(t, sock, "e")
	root := hello.Root.Node
	if err := os.Symlink("/etc/passwd", filepath.Join(exp, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(exp, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) uint64 {
		rep := c.call(&qtfsv1.Request{Op: qtfsv1.OpLookup, Node: root, Name: name})
		if rep.Errno != 0 {
			t.Fatalf("lookup %s: %v", name, syscall.Errno(rep.Errno))
		}
		return rep.Entry.Node
	}
	link, file := lookup("link"), lookup("file")

	// Live nodes are opened through their handles, unaffected by a
	// transient ENOMEM.
	calls := fakeOpenByHandle(t, 2)
	rep := c.call(&qtfsv1.Request{Op: qtfsv1.OpReadlink, Node: link})
	if calls.Load() == 0 {
		t.Skip("the export's file system has no file handles")
	}
	if rep.Errno != 0 || string(rep.Data) != "/etc/passwd" {
		t.Fatalf("readlink of a live symlink after ENOMEM: %v %q", syscall.Errno(rep.Errno), rep.Data)
	}

	// The host replaces both names: the nodes' inodes are freed.
	for _, n := range []string{"link", "file"} {
		if err := os.Remove(filepath.Join(exp, n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		what string
		req  qtfsv1.Request
	}{
		{"readlink", qtfsv1.Request{Op: qtfsv1.OpReadlink, Node: link}},
		{"getattr", qtfsv1.Request{Op: qtfsv1.OpGetAttr, Node: file}},
		{"open", qtfsv1.Request{Op: qtfsv1.OpOpen, Node: file, Flags: unix.O_RDONLY}},
	} {
		fakeOpenByHandle(t, 3)
		if e := c.errno(&tc.req); e != syscall.ENOENT {
			t.Errorf("%s of a freed inode, kernel said ENOMEM first: %v, want ENOENT", tc.what, e)
		}
	}

	// Memory that stays short is not hidden.
	fakeOpenByHandle(t, -1)
	start := time.Now()
	if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpGetAttr, Node: file}); e != syscall.ENOMEM {
		t.Errorf("getattr with open_by_handle_at failing ENOMEM for good: %v, want ENOMEM", e)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("persistent ENOMEM took %v to report", d)
	}
}

// TestStaleHandleInodeReuse races the kernel for real: opening stale file
// handles while other goroutines create files and symlinks that reuse the
// freed inode numbers. openHandle must answer ENOENT, never ENOMEM.
func TestStaleHandleInodeReuse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (open_by_handle_at)")
	}
	dir := t.TempDir()
	mfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	var stale []unix.FileHandle
	for i := 0; i < 64; i++ {
		p := filepath.Join(dir, fmt.Sprint("stale", i))
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, p, 0)
		if err != nil {
			t.Skipf("no file handles on %s: %v", dir, err)
		}
		stale = append(stale, h)
		os.Remove(p)
	}
	var raw atomic.Int64
	counting := func(mountFd int, h unix.FileHandle, flags int) (int, error) {
		fd, err := unix.OpenByHandleAt(mountFd, h, flags)
		if err == unix.ENOMEM {
			raw.Add(1)
		}
		return fd, err
	}
	openByHandleHook.Store(&counting)
	defer openByHandleHook.Store(nil)

	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				p := filepath.Join(dir, fmt.Sprint("new", w, "-", i%64))
				if i%2 == 0 {
					os.Symlink("/etc/passwd", p)
				} else if f, err := os.Create(p); err == nil {
					f.Close()
				}
				os.Remove(p)
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	errs := map[error]int{}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		for _, h := range stale {
			fd, err := openHandle(mfd, h, unix.O_PATH|unix.O_CLOEXEC|unix.O_NOFOLLOW)
			if err == nil {
				unix.Close(fd) // the same generation reused: not an error here
			}
			errs[err]++
		}
	}
	t.Logf("open_by_handle_at said ENOMEM %d times; openHandle answered %v", raw.Load(), errs)
	if n := errs[syscall.ENOMEM]; n > 0 {
		t.Fatalf("openHandle answered ENOMEM %d times for stale handles", n)
	}
}
