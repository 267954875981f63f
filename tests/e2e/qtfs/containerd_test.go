//go:build e2e

package qtfs_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// TestContainerdSnapshotterOnQtfs: a containerd on the DPU side whose
// overlayfs snapshotter root is a qtfs mount of the host's identical path
// imports and unpacks localhost/offload/big:latest; the host then mounts the
// resulting overlay natively and runc runs a container in it.
func TestContainerdSnapshotterOnQtfs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	snaps := bed.ctd             // same path on both sides
	id := filepath.Base(bed.dir) // unique per run: concurrent runs do not meet
	run := "/run/" + id + "-ctd"
	local := "/var/lib/" + id + "-ctd-local"
	sock := run + "/containerd.sock"
	testbed.MustDPU(t, "mkdir", "-p", snaps, run)
	testbed.MustDPU(t, bed.qtfs, "mount", "--daemon", "--tls-dir", bed.certs, bed.addr, "ctd", snaps)
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if r, err := testbed.DPU(c, bed.qtfs, "umount", snaps); err != nil || r.ExitCode != 0 {
			testbed.DPU(c, bed.qtfs, "umount", "--lazy", snaps)
		}
		testbed.DPU(c, "rm", "-rf", run, local)
		testbed.DPU(c, "rmdir", snaps)
	})

	cfg := fmt.Sprintf(`version = 3
root = "%s"
state = "%s/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]

[grpc]
  address = "%s"

[plugins.'io.containerd.internal.v1.opt']
  path = "%s/opt"

[plugins.'io.containerd.snapshotter.v1.overlayfs']
  root_path = "%s/overlayfs"
`, local, run, sock, run, snaps)
	testbed.MustDPU(t, "sh", "-c", "cat > "+run+"/config.toml <<'EOF'\n"+cfg+"EOF")
	ctd := testbed.DPUCommand(ctx, "containerd", "--config", run+"/config.toml")
	logf, _ := os.Create(filepath.Join(bed.dir, "containerd.log"))
	ctd.Stdout, ctd.Stderr = logf, logf
	if err := ctd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-ctd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { ctd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-ctd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
	})
	ctr := func(args ...string) string {
		t.Helper()
		return testbed.MustDPU(t, append([]string{"ctr", "-a", sock}, args...)...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := testbed.DPU(ctx, "ctr", "-a", sock, "version")
		if err == nil && r.ExitCode == 0 {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(bed.dir, "containerd.log"))
			t.Fatalf("DPU containerd did not start: %s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Import (and unpack) the big image from the DPU's main containerd.
	testbed.MustDPU(t, "ctr", "-a", testbed.DPUContainerdAddress, "images", "export", "--platform", "linux/amd64", run+"/big.tar", testbed.BigImage)
	ctr("images", "import", "--snapshotter", "overlayfs", "--platform", "linux/amd64", run+"/big.tar")
	testbed.MustDPU(t, "rm", "-f", run+"/big.tar")
	ctr("containers", "create", "--snapshotter", "overlayfs", testbed.BigImage, "qtfs-e2e")
	defer testbed.DPU(context.Background(), "ctr", "-a", sock, "containers", "delete", "qtfs-e2e")
	out := ctr("snapshots", "--snapshotter", "overlayfs", "mounts", "/rootfs", "qtfs-e2e")
	m := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(m[1], "lowerdir="+snaps) {
		t.Fatalf("unexpected snapshot mount: %q", out)
	}
	t.Logf("overlay on the host: %s", m[1])

	// The layers are on host storage at the same paths: mount natively, run.
	bundle := filepath.Join(bed.dir, "ctd-bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	script := "set -e; mount -t overlay overlay -o " + m[1] + " " + rootfs + "; " +
		"cd " + bundle + " && runc spec && sed -i 's/\"terminal\": true/\"terminal\": false/; s/\"sh\"/\"sh\", \"-c\", \"echo qtfs-snapshot-ok; ls \\/\"/' config.json && " +
		"runc run " + id + "-ctd; rc=$?; umount " + rootfs + "; exit $rc"
	host := exec.CommandContext(ctx, testbed.Script(), "host", "--", "sh", "-c", script)
	res, err := host.CombinedOutput()
	if err != nil || !strings.Contains(string(res), "qtfs-snapshot-ok") {
		t.Fatalf("runc in the overlay unpacked through qtfs: %v\n%s", err, res)
	}
}
