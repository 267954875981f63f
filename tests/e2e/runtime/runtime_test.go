//go:build e2e

package runtime

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// Output arrives on the caller's side; the container's process is a host
// process, and (offload) not one of the DPU side's.
func TestEchoAndHostPid(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		res := r.run(t, newID(t, r, "echo"), nil, "echo", "hello", "from", r.name)
		if res.code != 0 || res.stdout != "hello from "+r.name+"\n" {
			t.Fatalf("echo: code %d stdout %q stderr %q", res.code, res.stdout, res.stderr)
		}
		id := newID(t, r, "pid")
		marker := "4242" + strconv.Itoa(os.Getpid())
		r.detach(t, id, nil, "sleep", marker)
		pid := r.taskPid(t, id)
		if got := hostCmdline(pid); got != "sleep "+marker {
			t.Fatalf("host /proc/%d/cmdline = %q, want the container's sleep", pid, got)
		}
		if r.offload {
			res, err := testbed.DPU(context.Background(), "cat", fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(res.Stdout, marker) {
				t.Errorf("the container's process %d is visible on the DPU side", pid)
			}
			out, err := testbed.DPU(context.Background(), "ps", "-o", "args")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out.Stdout, "sleep "+marker) {
				t.Errorf("DPU side runs the container's process:\n%s", out.Stdout)
			}
		}
	})
}

func TestExitCodes(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		if res := r.run(t, newID(t, r, "exit7"), nil, "sh", "-c", "exit 7"); res.code != 7 {
			t.Errorf("sh -c 'exit 7': ctr exited %d (%s)", res.code, res.stderr)
		}
		// SIGKILL to the init: 137.
		id := newID(t, r, "kill")
		r.detach(t, id, nil)
		r.mustCtr(t, "task", "kill", "-s", "SIGKILL", id)
		r.waitStatus(t, id, "STOPPED")
		if got := r.exitStatus(t, id); got != 137 {
			t.Errorf("SIGKILL: exit status %d, want 137", got)
		}
		// SIGTERM: a pid-1 init ignores it without a handler (so the
		// init of a pid namespace cannot show 143); an exec'd process
		// dies of it: 143.
		id = newID(t, r, "term")
		r.detach(t, id, nil)
		done := make(chan result, 1)
		go func() {
			done <- r.ctr(t, time.Minute, nil, "task", "exec", "--exec-id", "sleeper", id, "sleep", "100000")
		}()
		r.waitExec(t, id, "sleeper")
		r.mustCtr(t, "task", "kill", "--exec-id", "sleeper", "-s", "SIGTERM", id)
		if res := <-done; res.code != 143 {
			t.Errorf("exec killed by SIGTERM: ctr exited %d, want 143 (%s)", res.code, res.stderr)
		}
	})
}

// exitStatus waits for the task (started with -d) and returns its status
// through `ctr task delete`, which prints nothing but exits... so read it
// from `ctr task ls` / events instead: delete reports it in its error text.
func (r rt) exitStatus(t *testing.T, id string) int {
	t.Helper()
	res := r.ctr(t, time.Minute, nil, "task", "delete", id)
	// ctr task delete prints "task <id> exit with non-zero exit code N".
	m := regexp.MustCompile(`exit code (\d+)`).FindStringSubmatch(res.stderr + res.stdout)
	if res.code != 0 || m == nil {
		if res.code == 0 {
			return 0
		}
		t.Fatalf("task delete %s: %d %s", id, res.code, res.stderr)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitExec waits until exec execID of id shows in `ctr task ps`.
func (r rt) waitExec(t *testing.T, id, execID string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		res := r.ctr(t, time.Minute, nil, "task", "ps", id)
		if strings.Contains(res.stdout, execID) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: exec %s of %s never listed by task ps", r.name, execID, id)
}

func TestExec(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		id := newID(t, r, "exec")
		r.detach(t, id, nil)
		res := r.ctr(t, time.Minute, nil, "task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo out; echo err >&2; exit 3")
		if res.code != 3 || res.stdout != "out\n" || !strings.Contains(res.stderr, "err\n") {
			t.Errorf("exec: code %d stdout %q stderr %q", res.code, res.stdout, res.stderr)
		}
		// With a terminal: the exec sees a tty of the size of ours.
		out, code := r.ptyRun(t, 30, 100, nil, "task", "exec", "-t", "--exec-id", "e2", id, "sh", "-c", "sleep 1; tty; stty size; exit 4")
		if code != 4 || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "30 100") {
			t.Errorf("exec -t: code %d output %q", code, out)
		}
	})
}

func TestRunTerminalResize(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		id := newID(t, r, "tty")
		args := append([]string{"run", "--rm", "-t"}, r.runFlags...)
		// sleep: ctr sets the size only after the task started (the
		// same race for every runtime).
		args = append(args, testbed.BusyboxImage, id, "sh", "-c", `sleep 1; stty size; read x; stty size; exit 6`)
		t.Cleanup(func() { r.remove(t, id) })
		out, code := r.ptyRun(t, 24, 80, func(p *ptySession) {
			p.waitFor(t, regexp.MustCompile(`24 80`))
			p.resize(t, 40, 132)
			time.Sleep(500 * time.Millisecond) // SIGWINCH → ctr → ResizePty
			p.write(t, "go\r")
			p.waitFor(t, regexp.MustCompile(`40 132`))
		}, args...)
		if code != 6 {
			t.Errorf("ctr run -t exited %d, want 6; output %q", code, out)
		}
	})
}

func TestStdin(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		// The input arrives after the task started: ctr calls CloseIO
		// only once it is there (its stdin closer is set after NewTask).
		pr, pw := io.Pipe()
		go func() {
			time.Sleep(1500 * time.Millisecond)
			pw.Write([]byte("hi\nthere\n"))
			pw.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		args := append([]string{"ctr", "run", "--rm"}, r.runFlags...)
		cmd := r.side(ctx, append(args, testbed.BusyboxImage, newID(t, r, "stdin"), "cat")...)
		cmd.Stdin = pr
		out, err := cmd.Output()
		if err != nil || string(out) != "hi\nthere\n" {
			t.Errorf("echo | ctr run cat: %q %v", out, err)
		}
	})
}

func TestPauseResumePsMetrics(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		id := newID(t, r, "pause")
		r.detach(t, id, []string{"--memory-limit", "67108864"}, "sh", "-c", "sleep 100000 & exec sleep 100001")
		pid := r.taskPid(t, id)
		r.mustCtr(t, "task", "pause", id)
		r.waitStatus(t, id, "PAUSED")
		if st := hostState(pid); st != "S" && st != "D" {
			// frozen tasks sleep in the freezer
			t.Logf("state of paused %d: %q", pid, st)
		}
		r.mustCtr(t, "task", "resume", id)
		r.waitStatus(t, id, "RUNNING")

		ps := r.mustCtr(t, "task", "ps", id)
		var pids []int
		for _, line := range strings.Split(ps, "\n")[1:] {
			if f := strings.Fields(line); len(f) > 0 {
				p, err := strconv.Atoi(f[0])
				if err != nil {
					t.Fatalf("task ps line %q", line)
				}
				pids = append(pids, p)
			}
		}
		if len(pids) != 2 {
			t.Errorf("task ps lists %d pids, want 2 (two sleeps):\n%s", len(pids), ps)
		}
		for _, p := range pids {
			if c := hostCmdline(p); !strings.HasPrefix(c, "s") {
				t.Errorf("task ps pid %d is %q on the host", p, c)
			}
		}

		m := r.mustCtr(t, "task", "metrics", id)
		limit := metric(m, "memory.limit_in_bytes")
		if limit != "67108864" {
			t.Errorf("metrics memory.limit_in_bytes %q, want 67108864\n%s", limit, m)
		}
		// The numbers are the host cgroup's.
		cg := hostCgroup(t, pid, "memory")
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", cg, "memory.limit_in_bytes"))
		if err != nil || strings.TrimSpace(string(b)) != limit {
			t.Errorf("host cgroup %s limit %q %v, metrics %q", cg, b, err, limit)
		}
		if n := metric(m, "pids.current"); n != "2" {
			t.Errorf("metrics pids.current %q, want 2", n)
		}
	})
}

func metric(table, name string) string {
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

func hostState(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(string(b))
	if len(f) > 2 {
		return f[2]
	}
	return ""
}

// hostCgroup returns a host process's cgroup path in a v1 controller.
func hostCgroup(t *testing.T, pid int, ctrl string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			for _, c := range strings.Split(parts[1], ",") {
				if c == ctrl {
					return parts[2]
				}
			}
		}
	}
	t.Fatalf("no %s cgroup for %d", ctrl, pid)
	return ""
}

// A memory hog under --memory-limit: TaskOOM is published, then TaskExit
// with 137.
func TestOOM(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		id := newID(t, r, "oom")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		ev := r.side(ctx, "ctr", "events")
		evOut, err := ev.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := ev.Start(); err != nil {
			t.Fatal(err)
		}
		var topics []string
		var mu sync.Mutex
		gotExit := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(evOut)
			for sc.Scan() {
				line := sc.Text()
				if !strings.Contains(line, id) {
					continue
				}
				// "DATE TIME ZONE UTC NAMESPACE TOPIC {json}"
				var topic string
				for _, f := range strings.Fields(line) {
					if strings.HasPrefix(f, "/tasks/") {
						topic = f
						break
					}
				}
				mu.Lock()
				topics = append(topics, topic)
				mu.Unlock()
				if topic == "/tasks/exit" {
					close(gotExit)
					return
				}
			}
		}()
		time.Sleep(500 * time.Millisecond) // the subscription is in place
		res := r.run(t, id, []string{"--memory-limit", "33554432"}, "sh", "-c", `x=0123456789; while :; do x="$x$x"; done`)
		if res.code != 137 {
			t.Errorf("memory hog: ctr exited %d, want 137 (%s)", res.code, res.stderr)
		}
		select {
		case <-gotExit:
		case <-time.After(30 * time.Second):
		}
		cancel()
		ev.Wait()
		mu.Lock()
		defer mu.Unlock()
		oom, exit := -1, -1
		for i, tp := range topics {
			switch tp {
			case "/tasks/oom":
				if oom < 0 {
					oom = i
				}
			case "/tasks/exit":
				exit = i
			}
		}
		if oom < 0 || exit < 0 || oom > exit {
			t.Errorf("events for %s: %v; want /tasks/oom before /tasks/exit", id, topics)
		}
	})
}

// 100 MB to stdout arrive byte-exact, also when the writer exits right
// after its last write.
func TestStdoutVolume(t *testing.T) {
	const n = 100 << 20
	line := "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	want := sha256.New()
	var written int
	for written < n {
		chunk := line + "\n"
		if written+len(chunk) > n {
			chunk = chunk[:n-written]
		}
		want.Write([]byte(chunk))
		written += len(chunk)
	}
	wantSum := fmt.Sprintf("%x", want.Sum(nil))
	forEachRuntime(t, func(t *testing.T, r rt) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		args := append([]string{"ctr", "run", "--rm"}, r.runFlags...)
		args = append(args, testbed.BusyboxImage, newID(t, r, "volume"), "sh", "-c", fmt.Sprintf("yes %s | head -c %d; exit 0", line, n))
		cmd := r.side(ctx, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		t0 := time.Now()
		got, _ := io.Copy(h, out)
		err = cmd.Wait()
		d := time.Since(t0)
		if err != nil || got != n || fmt.Sprintf("%x", h.Sum(nil)) != wantSum {
			t.Fatalf("100 MB stdout: %d bytes, err %v, checksum match %v", got, err, fmt.Sprintf("%x", h.Sum(nil)) == wantSum)
		}
		t.Logf("%s: 100 MiB stdout in %.2fs (%.0f MiB/s)", r.name, d.Seconds(), 100/d.Seconds())
	})
}

func TestParallel20(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		var wg sync.WaitGroup
		errs := make(chan string, 20)
		ids := make([]string, 20)
		for i := range ids {
			ids[i] = newID(t, r, "par")
		}
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := r.run(t, ids[i], nil, "echo", ids[i])
				if res.code != 0 || res.stdout != ids[i]+"\n" {
					errs <- fmt.Sprintf("%s: code %d stdout %q stderr %q", ids[i], res.code, res.stdout, res.stderr)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})
}

// TestKillUnreadDetached: a detached container that keeps writing to stdout
// after ctr went away (nobody reads its FIFO: the pipes fill and it blocks)
// must report its exit on SIGKILL about as fast as the runc shim, which
// publishes it at once — not after the agent's and the shim's drain bounds.
func TestKillUnreadDetached(t *testing.T) {
	took := map[string]time.Duration{}
	forEachRuntime(t, func(t *testing.T, r rt) {
		id := newID(t, r, "unread")
		r.detach(t, id, nil, "sh", "-c", "while :; do echo 0123456789abcdefghijklmnopqrstuvwxyz; done")
		time.Sleep(2 * time.Second) // ctr has exited; FIFO, pipe and sockets fill
		if st := r.taskStatus(t, id); st != "RUNNING" {
			t.Fatalf("%s: task %s is %q before the kill", r.name, id, st)
		}
		t0 := time.Now()
		r.mustCtr(t, "task", "kill", "-s", "SIGKILL", id)
		deadline := t0.Add(30 * time.Second)
		for r.taskStatus(t, id) != "STOPPED" {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no exit 30s after SIGKILL", r.name)
			}
			time.Sleep(50 * time.Millisecond)
		}
		took[r.name] = time.Since(t0)
		t.Logf("%s: exit seen %s after SIGKILL", r.name, took[r.name].Round(time.Millisecond))
	})
	o, ok1 := took[offloadRT.name]
	ref, ok2 := took[referenceRT.name]
	if !ok1 || !ok2 {
		return
	}
	t.Logf("exit after SIGKILL of an unread detached container: offload %s, runc %s", o.Round(time.Millisecond), ref.Round(time.Millisecond))
	if o > 3*time.Second && o > 3*ref {
		t.Errorf("offload reports the exit %s after SIGKILL (runc %s); want under 3s", o.Round(time.Millisecond), ref.Round(time.Millisecond))
	}
}
