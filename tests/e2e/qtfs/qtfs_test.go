//go:build e2e

package qtfs_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// TestReadWriteOverMTLS: the DPU writes and reads through the mount; the host
// sees the same bytes, owners and modes.
func TestReadWriteOverMTLS(t *testing.T) {
	dir := filepath.Join(bed.rw, "rwtest")
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777) // the DPU user below creates files here
	os.WriteFile(filepath.Join(dir, "from-host"), []byte("host says hi"), 0o644)
	mnt := mount(t, "rw")
	out := dpuSh(t, "cd "+mnt+"/rwtest && cat from-host && echo dpu-data > from-dpu && mkdir d && ln -s from-dpu l && mv from-dpu d/moved && ls d")
	contains(t, out, "host says hi")
	contains(t, out, "moved")
	if got := hostFile(t, filepath.Join(dir, "d/moved")); got != "dpu-data\n" {
		t.Fatalf("host has %q", got)
	}
	// A non-root DPU user creates with its own uid/gid and umask.
	testbed.MustDPU(t, "chroot", "--userspec=1000:1000", "/", "sh", "-c", "umask 027; echo u > "+mnt+"/rwtest/user-file; mkdir "+mnt+"/rwtest/user-dir")
	for name, mode := range map[string]os.FileMode{"user-file": 0o640, "user-dir": 0o750 | os.ModeDir} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 1000 || st.Gid != 1000 || fi.Mode() != mode {
			t.Errorf("%s: %v %d:%d", name, fi.Mode(), st.Uid, st.Gid)
		}
	}
	// ... and cannot write a root-only file.
	os.WriteFile(filepath.Join(dir, "root-only"), []byte("x"), 0o644)
	r, _ := testbed.DPU(t.Context(), "chroot", "--userspec=1000:1000", "/", "sh", "-c", "echo y > "+mnt+"/rwtest/root-only")
	if r.ExitCode == 0 || hostFile(t, filepath.Join(dir, "root-only")) != "x" {
		t.Fatalf("unprivileged write to a root file: exit %d", r.ExitCode)
	}
	info := testbed.MustDPU(t, bed.qtfs, "info", mnt)
	contains(t, info, "connected")
	contains(t, info, "mkdir")
}

// TestReadOnlyExport: writes are refused with EROFS and the host is unchanged.
func TestReadOnlyExport(t *testing.T) {
	os.WriteFile(filepath.Join(bed.ro, "f"), []byte("ro content"), 0o644)
	mnt := mount(t, "ro")
	contains(t, dpuSh(t, "cat "+mnt+"/f"), "ro content")
	for _, cmd := range []string{"echo x > " + mnt + "/f", "touch " + mnt + "/new", "rm " + mnt + "/f", "mkdir " + mnt + "/d", "chmod 777 " + mnt + "/f"} {
		r, err := testbed.DPU(t.Context(), "sh", "-c", cmd)
		if err != nil {
			t.Fatal(err)
		}
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "Read-only file system") {
			t.Errorf("%s: exit %d, %q", cmd, r.ExitCode, r.Stderr)
		}
	}
	ents, _ := os.ReadDir(bed.ro)
	if len(ents) != 1 || hostFile(t, filepath.Join(bed.ro, "f")) != "ro content" {
		t.Fatalf("host export changed: %v", ents)
	}
}

// TestServerRestartDuringRead restarts `qtfs serve` on the host while a DPU
// process has a file open and is reading it; the read continues and returns
// the right bytes.
func TestServerRestartDuringRead(t *testing.T) {
	data := make([]byte, 16<<20)
	rand.Read(data)
	p := filepath.Join(bed.rw, "restart.bin")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data[4<<20:])
	mnt := mount(t, "rw", "--cache=none", "--timeout=60s")
	// Read 4 MiB, wait for the restart, read the rest from the same fd.
	reader := testbed.DPUCommand(t.Context(), "sh", "-c",
		"exec 3<"+mnt+"/restart.bin; dd bs=1M count=4 <&3 >/dev/null 2>&1; echo started; sleep 4; dd bs=1M <&3 2>/dev/null | sha256sum")
	out, err := reader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "started") {
		t.Fatalf("reader: %q %v", buf, err)
	}
	stopServer()
	time.Sleep(time.Second)
	if err := startServer(); err != nil {
		t.Fatal(err)
	}
	rest := make([]byte, 256)
	n, _ := out.Read(rest)
	if err := reader.Wait(); err != nil {
		t.Fatalf("reader: %v (%q)", err, rest[:n])
	}
	if !strings.HasPrefix(strings.TrimSpace(string(buf[7:])+string(rest[:n])), hex.EncodeToString(sum[:])) {
		t.Fatalf("read after restart: %q, want %s", rest[:n], hex.EncodeToString(sum[:]))
	}
	info := testbed.MustDPU(t, bed.qtfs, "info", mnt)
	if strings.Contains(info, "reconnects:  0") {
		t.Fatalf("no reconnect recorded:\n%s", info)
	}
}

// TestOverlayLayersOnQtfsRunOnHost: the DPU builds an overlay (lower + upper
// with a whiteout and an opaque directory) on the qtfs mount, as containerd's
// overlayfs snapshotter does; the host then mounts the same directories
// natively as overlayfs and runs a container in it with runc.
func TestOverlayLayersOnQtfsRunOnHost(t *testing.T) {
	mnt := mount(t, "rw")
	base := mnt + "/ovl"
	merged := "/run/" + filepath.Base(bed.dir) + "-merged"
	t.Cleanup(func() { testbed.DPU(context.Background(), "rmdir", merged) })
	dpuSh(t, "set -e; mkdir -p "+base+"/lower/bin "+base+"/lower/etc/sub "+base+"/upper "+base+"/work "+merged+"; "+
		"cp /bin/busybox "+base+"/lower/bin/busybox; echo lower > "+base+"/lower/etc/gone; echo inner > "+base+"/lower/etc/sub/inner; "+
		"mount -t overlay overlay -o lowerdir="+base+"/lower,upperdir="+base+"/upper,workdir="+base+"/work "+merged+"; "+
		"rm "+merged+"/etc/gone; rm -r "+merged+"/etc/sub; mkdir "+merged+"/etc/sub; "+
		"echo upper > "+merged+"/etc/sub/new; echo qtfs-overlay-ok > "+merged+"/etc/msg; umount "+merged+"")

	hb := filepath.Join(bed.rw, "ovl")
	bundle := filepath.Join(bed.dir, "bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	os.MkdirAll(rootfs, 0o755)
	script := "set -e; mount -t overlay overlay -o lowerdir=" + hb + "/lower,upperdir=" + hb + "/upper,workdir=" + hb + "/work " + rootfs + "; " +
		"cd " + bundle + " && runc spec && sed -i 's/\"terminal\": true/\"terminal\": false/; s/\"sh\"/\"\\/bin\\/busybox\", \"sh\", \"-c\", \"cat \\/etc\\/msg; ls \\/etc; ls \\/etc\\/sub\"/' config.json && " +
		"runc run " + filepath.Base(bed.dir) + "-ovl; rc=$?; umount " + rootfs + "; exit $rc"
	out := testbed.MustHost(t, "sh", "-c", script)
	contains(t, out, "qtfs-overlay-ok")
	if strings.Contains(out, "gone") || strings.Contains(out, "inner") || !strings.Contains(out, "new") {
		t.Fatalf("whiteout/opaque dir not honoured by the host's overlay:\n%s", out)
	}
}
