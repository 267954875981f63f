package posix

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv carries a JSON childRequest to a re-executed copy of the current
// binary. See the package comment.
const childEnv = "DPU_OFFLOAD_POSIX_CHILD"

// childRequest is what a helper process is asked to do.
type childRequest struct {
	UID, GID  uint32 // 0: stay root
	Umask     int    // -1: leave as inherited
	HolderPid int    // pid expected in F_GETLK answers
	Ops       []childOp
}

// childOp is one operation of the helper's tiny instruction set.
type childOp struct {
	Op    string
	Path  string
	Path2 string
	Flags int
	Mode  uint32
	Off   int64
	Len   int64
	Data  string
}

func init() {
	if s := os.Getenv(childEnv); s != "" {
		os.Exit(childMain(s))
	}
}

func childMain(s string) int {
	var req childRequest
	if err := json.Unmarshal([]byte(s), &req); err != nil {
		fmt.Fprintf(os.Stderr, "posix child: bad request: %v\n", err)
		return 2
	}
	if req.Umask >= 0 {
		unix.Umask(req.Umask)
	}
	if req.UID != 0 || req.GID != 0 {
		// Go applies these to every thread of the process.
		if err := unix.Setgroups(nil); err != nil {
			fmt.Fprintf(os.Stderr, "posix child: setgroups: %v\n", err)
			return 2
		}
		if err := unix.Setresgid(int(req.GID), int(req.GID), int(req.GID)); err != nil {
			fmt.Fprintf(os.Stderr, "posix child: setresgid: %v\n", err)
			return 2
		}
		if err := unix.Setresuid(int(req.UID), int(req.UID), int(req.UID)); err != nil {
			fmt.Fprintf(os.Stderr, "posix child: setresuid: %v\n", err)
			return 2
		}
	}
	out := make([]string, 0, len(req.Ops))
	for _, op := range req.Ops {
		out = append(out, doChildOp(op, req.HolderPid))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

func doChildOp(op childOp, holder int) string {
	switch op.Op {
	case "open":
		fd, err := unix.Open(op.Path, op.Flags|unix.O_CLOEXEC, op.Mode)
		if err == nil {
			unix.Close(fd)
		}
		return errName(err)
	case "create": // O_CREAT|O_EXCL, then report the resulting mode
		fd, err := unix.Open(op.Path, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, op.Mode)
		if err != nil {
			return errName(err)
		}
		unix.Close(fd)
		return "ok " + statString(op.Path, false)
	case "mkdir":
		if err := unix.Mkdir(op.Path, op.Mode); err != nil {
			return errName(err)
		}
		return "ok " + statString(op.Path, false)
	case "mkfifo":
		if err := unix.Mkfifo(op.Path, op.Mode); err != nil {
			return errName(err)
		}
		return "ok " + statString(op.Path, false)
	case "unlink":
		return errName(unix.Unlink(op.Path))
	case "rmdir":
		return errName(unix.Rmdir(op.Path))
	case "rename":
		return errName(unix.Rename(op.Path, op.Path2))
	case "link":
		return errName(unix.Link(op.Path, op.Path2))
	case "symlink":
		return errName(unix.Symlink(op.Path2, op.Path))
	case "chmod":
		return errName(unix.Chmod(op.Path, op.Mode))
	case "chown":
		return errName(unix.Chown(op.Path, int(op.Off), int(op.Len)))
	case "truncate":
		return errName(unix.Truncate(op.Path, op.Len))
	case "utimes-now":
		return errName(unix.UtimesNanoAt(unix.AT_FDCWD, op.Path, nil, 0))
	case "utimes-set":
		ts := []unix.Timespec{unix.NsecToTimespec(op.Off), unix.NsecToTimespec(op.Off)}
		return errName(unix.UtimesNanoAt(unix.AT_FDCWD, op.Path, ts, 0))
	case "access":
		return errName(unix.Faccessat(unix.AT_FDCWD, op.Path, op.Mode, 0))
	case "setxattr":
		return errName(unix.Setxattr(op.Path, op.Path2, []byte(op.Data), 0))
	case "getxattr":
		buf := make([]byte, 256)
		n, err := unix.Getxattr(op.Path, op.Path2, buf)
		if err != nil {
			return errName(err)
		}
		return fmt.Sprintf("ok %q", buf[:n])
	case "stat":
		return statString(op.Path, false)
	case "read":
		b, err := os.ReadFile(op.Path)
		if err != nil {
			return errName(err)
		}
		return fmt.Sprintf("ok %q", b)
	case "write":
		fd, err := unix.Open(op.Path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return errName(err)
		}
		defer unix.Close(fd)
		_, err = unix.Pwrite(fd, []byte(op.Data), op.Off)
		return errName(err)
	case "readdir":
		names, err := dirNames(op.Path)
		if err != nil {
			return errName(err)
		}
		return fmt.Sprint(names)
	case "flock":
		fd, err := unix.Open(op.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open " + errName(err)
		}
		defer unix.Close(fd)
		return errName(unix.Flock(fd, op.Flags|unix.LOCK_NB))
	case "setlk":
		fd, err := unix.Open(op.Path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open " + errName(err)
		}
		defer unix.Close(fd)
		lk := unix.Flock_t{Type: int16(op.Flags), Whence: 0, Start: op.Off, Len: op.Len}
		return errName(unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk))
	case "getlk":
		fd, err := unix.Open(op.Path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open " + errName(err)
		}
		defer unix.Close(fd)
		lk := unix.Flock_t{Type: int16(op.Flags), Whence: 0, Start: op.Off, Len: op.Len}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &lk); err != nil {
			return errName(err)
		}
		return fmt.Sprintf("type=%s start=%d len=%d pid-is-holder=%v", lockType(lk.Type), lk.Start, lk.Len, int(lk.Pid) == holder)
	}
	return "unknown op " + op.Op
}

func lockType(t int16) string {
	switch t {
	case unix.F_RDLCK:
		return "F_RDLCK"
	case unix.F_WRLCK:
		return "F_WRLCK"
	case unix.F_UNLCK:
		return "F_UNLCK"
	}
	return fmt.Sprint(t)
}

// runChild runs ops in a helper process and returns one outcome per op.
// A helper that cannot run yields a single outcome describing why, so the
// difference shows up in the comparison instead of aborting the run.
func runChild(req childRequest) []string {
	b, err := json.Marshal(req)
	if err != nil {
		return []string{"marshal: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return []string{fmt.Sprintf("child failed: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))}
	}
	var out []string
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return []string{fmt.Sprintf("child output: %v", err)}
	}
	return out
}

// child records the outcome of each op of a helper run as a step of r,
// labelling the step with the op and the path relative to the case dir.
func (r *rec) child(label string, req childRequest) {
	outs := runChild(req)
	if len(outs) != len(req.Ops) {
		r.add(label+" helper", fmt.Sprint(outs))
		return
	}
	for i, op := range req.Ops {
		r.add(fmt.Sprintf("%s: %s %s", label, op.Op, r.rel(op.Path)), outs[i])
	}
}
