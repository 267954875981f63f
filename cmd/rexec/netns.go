package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// netnsCommand is the host-side helper the CNI wrappers run through rexec:
// it keeps a network namespace bound at the same path the DPU uses.
var netnsCommand = &cli.Command{
	Name:  "netns",
	Usage: "host helper: create or remove a network namespace bound at PATH",
	Subcommands: []*cli.Command{
		{Name: "add", ArgsUsage: "PATH", Usage: "create a network namespace at PATH (nothing to do if one is there)", Action: func(c *cli.Context) error {
			p, err := netnsPath(c)
			if err != nil {
				return err
			}
			return netnsAdd(p)
		}},
		{Name: "del", ArgsUsage: "PATH", Usage: "unmount and remove the network namespace at PATH (nothing to do if none)", Action: func(c *cli.Context) error {
			p, err := netnsPath(c)
			if err != nil {
				return err
			}
			return netnsDel(p)
		}},
	},
}

func netnsPath(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("netns %s: want one PATH", c.Command.Name)
	}
	p := c.Args().First()
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return "", fmt.Errorf("netns: %q is not a clean absolute path", p)
	}
	return p, nil
}

func isNetns(p string) bool {
	var st unix.Statfs_t
	return unix.Statfs(p, &st) == nil && st.Type == unix.NSFS_MAGIC
}

func netnsAdd(p string) error {
	if isNetns(p) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("netns add: %w", err)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return fmt.Errorf("netns add: create mount point: %w", err)
	}
	f.Close()
	// Unshare on a locked thread that is never unlocked, so the runtime
	// discards the thread (and its namespace) when the goroutine ends.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind %s: %w", src, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(p)
		return fmt.Errorf("netns add %s: %w", p, err)
	}
	return nil
}

func netnsDel(p string) error {
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns del %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netns del %s: %w", p, err)
	}
	return nil
}
