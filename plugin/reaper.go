package plugin

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The agent is a child subreaper: when `runc create`/`runc exec --detach`
// exit, the container's init and exec processes are re-parented to the
// agent, so their exit status is ours to collect. Unlike containerd's shim
// reaper we never wait4(-1): each process we know is watched through a
// non-blocking pidfd registered with Go's netpoller (no thread per process),
// and reaped with wait4(pid). That leaves every other child of the daemon
// (runc invocations through os/exec, the embedded rexec server's processes)
// to whoever started it, without stealing their exit statuses.

// SetSubreaper marks the calling process as a child subreaper.
func SetSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}

// exitInfo is a reaped process's status in the shell's convention: the exit
// code, or 128+signal for a process killed by a signal (as the runc shim
// reports it).
type exitInfo struct {
	Status   uint32
	ExitedAt time.Time
	// Known is false when the process was not our child (adopted after an
	// agent restart) and its status could not be collected.
	Known bool
}

// pidWatch is an open pidfd of a process we will reap.
type pidWatch struct {
	pid int
	f   *os.File
}

// watchPid opens a pidfd for pid. It works for a zombie too, so a process
// that exits before we look is still collected.
func watchPid(pid int) (*pidWatch, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &pidWatch{pid: pid, f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// signal sends sig through the pidfd, so a recycled pid is never hit.
func (w *pidWatch) signal(sig unix.Signal) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return err
	}
	return serr
}

// wait blocks (parked in the netpoller) until the process exits, then reaps
// it. The pidfd is closed afterwards.
func (w *pidWatch) wait() exitInfo {
	defer w.f.Close()
	rc, err := w.f.SyscallConn()
	if err != nil {
		return exitInfo{Status: 255, ExitedAt: time.Now()}
	}
	var info exitInfo
	rerr := rc.Read(func(fd uintptr) bool {
		// A pidfd polls readable once the process has exited.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		switch {
		case errors.Is(err, unix.EINTR), err == nil && n == 0:
			return false // not yet: park until readable
		case err != nil:
			return true // give up; reported as status 255
		}
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(w.pid, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			info.ExitedAt = time.Now()
			if err != nil { // ECHILD: not our child (adopted)
				info.Status = 255
				return true
			}
			break
		}
		info.Known = true
		switch {
		case ws.Signaled():
			info.Status = 128 + uint32(ws.Signal())
		default:
			info.Status = uint32(ws.ExitStatus())
		}
		return true
	})
	if rerr != nil && info.ExitedAt.IsZero() {
		return exitInfo{Status: 255, ExitedAt: time.Now()}
	}
	return info
}

// In a container that shares the host's pid namespace, a process whose
// parent dies is re-parented to the nearest subreaper — the agent — instead
// of the container's init, and would stay a zombie. reapOrphans collects
// such zombies: children of the agent that no watch owns and that sit in
// the cgroup of a host-pid container. Matching by cgroup leaves alone every
// other child of the daemon (runc invocations, the rexec server's
// processes), whose exits belong to whoever started them.
func reapOrphans(owned func(pid int) bool, inContainer func(cgroupFile string) bool) (reaped int) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0
	}
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil || owned(pid) || !isZombie(pid) {
				continue
			}
			cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if err != nil || !inContainer(string(cg)) {
				continue
			}
			var ws unix.WaitStatus
			if n, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && n == pid {
				reaped++
			}
		}
	}
	return reaped
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command, which may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}
