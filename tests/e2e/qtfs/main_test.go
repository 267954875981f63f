//go:build e2e

// Package qtfs_test runs qtfs across the testbed: `qtfs serve` on the host
// side (tcp://192.0.2.1 with mTLS on the veth), `qtfs mount` inside the DPU
// side, and checks on the host what the DPU did.
package qtfs_test

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/tests/testbed"
)

// port is chosen at random per run (see setup), so concurrent runs of this
// suite do not meet each other's server.
var port string

// bed is set up by TestMain. Its directory is under /var/tmp, which both
// sides see at the same path (the exports live there, on the host).
var bed struct {
	dir    string
	qtfs   string
	certs  string
	addr   string
	rw, ro string // exported host directories
	ctd    string // exported at the same path the DPU mounts it (containerd snapshots)
	log    string
	server *exec.Cmd
	done   chan struct{}
}

func TestMain(m *testing.M) {
	testbed.MainWith(m, setup, func() {
		stopServer()
		os.RemoveAll(bed.dir)
		if bed.ctd != "" {
			os.RemoveAll(bed.ctd)
		}
	})
}

func setup() error {
	var err error
	if bed.dir, err = os.MkdirTemp("/var/tmp", "qtfs-e2e-"); err != nil {
		return err
	}
	os.Chmod(bed.dir, 0o755)
	bed.qtfs = filepath.Join(bed.dir, "qtfs")
	cmd := exec.Command("go", "build", "-o", bed.qtfs, "./cmd/qtfs")
	cmd.Dir = "../../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/qtfs: %v\n%s", err, out)
	}
	bed.certs = filepath.Join(bed.dir, "certs")
	if err := transport.GenerateCerts(bed.certs, []string{testbed.HostIP}); err != nil {
		return err
	}
	bed.rw = filepath.Join(bed.dir, "rw")
	bed.ro = filepath.Join(bed.dir, "ro")
	for _, d := range []string{bed.rw, bed.ro} {
		if err := os.Mkdir(d, 0o777); err != nil {
			return err
		}
		os.Chmod(d, 0o777)
	}
	// /var/lib is private to each side, so the DPU can mount the export at
	// the host's own path: the overlay mounts containerd computes are then
	// valid on the host.
	bed.ctd = "/var/lib/qtfs-e2e-snapshots-" + filepath.Base(bed.dir)
	if err := os.MkdirAll(bed.ctd, 0o711); err != nil {
		return err
	}
	bed.log = filepath.Join(bed.dir, "serve.log")
	var err2 error
	for try := 0; try < 5; try++ {
		port = strconv.Itoa(20000 + mrand.IntN(20000))
		bed.addr = "tcp://" + testbed.HostIP + ":" + port
		if err2 = startServer(); err2 == nil {
			return nil
		}
	}
	return err2
}

func startServer() error {
	lf, err := os.OpenFile(bed.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	var logStart int64
	if fi, err := lf.Stat(); err == nil {
		logStart = fi.Size()
	}
	bed.server = testbed.HostCommand(context.Background(), bed.qtfs, "serve", "--listen", bed.addr,
		"--tls-dir", bed.certs, "--export", "rw="+bed.rw, "--export", "ro="+bed.ro+":ro", "--export", "ctd="+bed.ctd)
	bed.server.Stdout, bed.server.Stderr = lf, lf
	if err := bed.server.Start(); err != nil {
		lf.Close()
		return err
	}
	bed.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); lf.Close(); close(done) }(bed.server, bed.done)
	// Wait until it listens: it logs "qtfs: serving" once the listener is up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(bed.log)
		if int64(len(b)) > logStart && strings.Contains(string(b[logStart:]), "qtfs: serving") {
			return nil
		}
		select {
		case <-bed.done:
			return fmt.Errorf("qtfs serve exited: %s", b[min(int64(len(b)), logStart):])
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qtfs serve not listening on %s", bed.addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stopServer() {
	if bed.server == nil || bed.server.Process == nil {
		return
	}
	syscall.Kill(-bed.server.Process.Pid, syscall.SIGTERM)
	select {
	case <-bed.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-bed.server.Process.Pid, syscall.SIGKILL)
		<-bed.done
	}
	bed.server = nil
}

// mount mounts export on the DPU side at a fresh mountpoint in the DPU's
// private /run and returns it; the mount is removed when the test ends.
func mount(t *testing.T, export string, extra ...string) string {
	t.Helper()
	mnt := "/run/" + filepath.Base(bed.dir) + "/" + strings.ReplaceAll(t.Name(), "/", "_")
	args := append([]string{bed.qtfs, "mount", "--daemon", "--allow-other", "--tls-dir", bed.certs}, extra...)
	args = append(args, bed.addr, export, mnt)
	testbed.MustDPU(t, "mkdir", "-p", mnt)
	testbed.MustDPU(t, args...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if r, err := testbed.DPU(ctx, bed.qtfs, "umount", mnt); err != nil || r.ExitCode != 0 {
			testbed.DPU(ctx, bed.qtfs, "umount", "--lazy", mnt)
		}
		testbed.DPU(ctx, "rmdir", mnt, filepath.Dir(mnt))
	})
	return mnt
}

func dpuSh(t *testing.T, script string) string {
	t.Helper()
	return testbed.MustDPU(t, "sh", "-c", script)
}

func hostFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func contains(t *testing.T, out, want string) {
	t.Helper()
	if !strings.Contains(out, want) {
		t.Fatalf("output %q does not contain %q", out, want)
	}
}
