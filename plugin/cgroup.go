package plugin

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

const cgroupRoot = "/sys/fs/cgroup"

// containerCgroup is the cgroup runc placed a container's init in, loaded
// once at create so stats and OOM counters work after the init is gone.
// On a hybrid host runc uses the v1 controllers, as does the agent.
type containerCgroup struct {
	v1 cgroup1.Cgroup
	v2 *cgroup2.Manager
	// memDir holds memory.oom_control (v1) or memory.events (v2).
	memDir string
	// procPath is the path /proc/<pid>/cgroup shows for members: the
	// memory controller's (v1) or the unified one (v2).
	procPath string
}

// holds reports whether a /proc/<pid>/cgroup text places the process in
// this cgroup. (A zombie on a pure v1 host shows "/" everywhere and is not
// recognised.)
func (c *containerCgroup) holds(procCgroup string) bool {
	for _, line := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[2] != c.procPath {
			continue
		}
		// A zombie has left its v1 cgroups ("/") but still shows its
		// unified one, which runc sets to the same path on a hybrid host.
		if parts[1] == "" {
			return true
		}
		for _, ctrl := range strings.Split(parts[1], ",") {
			if c.v2 == nil && ctrl == "memory" {
				return true
			}
		}
	}
	return false
}

func loadCgroup(pid int) (*containerCgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		group, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup2 path of %d: %w", pid, err)
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("load cgroup2 %s: %w", group, err)
		}
		return &containerCgroup{v2: m, memDir: filepath.Join(cgroupRoot, group), procPath: group}, nil
	}
	paths, err := cgroup1.ParseCgroupFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, fmt.Errorf("cgroups of %d: %w", pid, err)
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		return nil, fmt.Errorf("load cgroup1 of %d: %w", pid, err)
	}
	c := &containerCgroup{v1: cg}
	if p, ok := paths["memory"]; ok {
		c.memDir = filepath.Join(cgroupRoot, "memory", p)
		c.procPath = p
	}
	return c, nil
}

// stats returns io.containerd.cgroups.v1.Metrics or v2.Metrics as an Any.
func (c *containerCgroup) stats() (*anypb.Any, error) {
	var m interface{}
	var err error
	if c.v2 != nil {
		m, err = c.v2.Stat()
	} else {
		m, err = c.v1.Stat(cgroup1.IgnoreNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	return typeurl.MarshalAnyToProto(m)
}

// oomKills reads the cgroup's OOM-kill counter. ok is false when the file
// or the counter is missing (cgroup removed, old kernel).
func (c *containerCgroup) oomKills() (n uint64, ok bool) {
	if c.memDir == "" {
		return 0, false
	}
	file := "memory.oom_control"
	if c.v2 != nil {
		file = "memory.events"
	}
	f, err := os.Open(filepath.Join(c.memDir, file))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if k == "oom_kill" {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// watchOOM calls notify on every OOM notification of the cgroup until stop
// is called or the cgroup is removed. v1: an eventfd registered on
// memory.oom_control; v2: inotify on memory.events. Both fds are
// non-blocking and parked in Go's netpoller, so a watch costs a goroutine,
// not a thread.
func (c *containerCgroup) watchOOM(notify func()) (stop func(), err error) {
	if c.v2 != nil {
		ec, errc := c.v2.EventChan()
		done := make(chan struct{})
		go func() {
			for {
				select {
				case <-done:
					return
				case _, ok := <-ec:
					if !ok {
						return
					}
					notify()
				case <-errc:
					return
				}
			}
		}()
		return func() { close(done) }, nil
	}
	if c.memDir == "" {
		return func() {}, nil
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := os.NewFile(uintptr(efd), "oom-eventfd")
	oc, err := os.Open(filepath.Join(c.memDir, "memory.oom_control"))
	if err != nil {
		ev.Close()
		return nil, fmt.Errorf("open memory.oom_control: %w", err)
	}
	defer oc.Close() // the registration holds its own reference
	reg := fmt.Sprintf("%d %d", efd, oc.Fd())
	if err := os.WriteFile(filepath.Join(c.memDir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		ev.Close()
		return nil, fmt.Errorf("register OOM eventfd: %w", err)
	}
	go func() {
		buf := make([]byte, 8)
		for {
			if _, err := ev.Read(buf); err != nil {
				return // closed by stop
			}
			// The eventfd also fires when the cgroup is removed.
			if _, err := os.Stat(c.memDir); err != nil {
				return
			}
			notify()
		}
	}()
	return func() { ev.Close() }, nil
}
