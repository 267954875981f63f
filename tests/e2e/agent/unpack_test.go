//go:build e2e

package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dpu-offload/offload/internal/testlayer"
	"github.com/dpu-offload/offload/tests/testbed"
)

// side is one containerd of the testbed with a namespace of its own.
type side struct {
	name string
	run  func(ctx context.Context, args ...string) (testbed.Result, error)
	ns   string
	tar  string // the big image exported from the side's default namespace
}

func (s side) ctr(t *testing.T, d time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	res, err := s.run(ctx, append([]string{"ctr", "-n", s.ns}, args...)...)
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		t.Fatalf("%s: ctr %v: %v\n%s", s.name, args, err, res.Stdout)
	}
	return res.Stdout
}

// layerDirs prepares an active snapshot on the image's top layer and
// returns the lowerdirs of its overlay mount, top layer first: the
// directories the image's layers were extracted into.
func (s side) layerDirs(t *testing.T) []string {
	t.Helper()
	parents := map[string]bool{}
	var keys []string
	for _, line := range strings.Split(s.ctr(t, time.Minute, "snapshots", "ls"), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 2 {
			keys = append(keys, f[0])
			if len(f) == 3 {
				parents[f[1]] = true
			}
		}
	}
	var top string
	for _, k := range keys {
		if !parents[k] {
			top = k
		}
	}
	out := s.ctr(t, time.Minute, "snapshots", "prepare", "--mounts", "unpack-check", top)
	t.Cleanup(func() { s.ctr(t, time.Minute, "snapshots", "rm", "unpack-check") })
	var ms []struct{ Options []string }
	if err := json.Unmarshal([]byte(out), &ms); err != nil || len(ms) != 1 {
		t.Fatalf("%s: snapshot mounts %q: %v", s.name, out, err)
	}
	for _, o := range ms[0].Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(v, ":")
		}
	}
	t.Fatalf("%s: no lowerdir in %v", s.name, ms[0].Options)
	return nil
}

// TestImageUnpackOnHost: the DPU containerd, whose overlayfs snapshotter
// root is the qtfs share of the host's identical path, imports the big image
// into a fresh namespace through both of containerd's unpack paths (the
// client's diff service, `ctr images import --local`, and the transfer
// service, `ctr images import`). offload-differ hands every layer to
// offload-agent, which extracts it natively; the layer directories are
// identical, entry by entry, to what the host's reference containerd
// extracts locally; and a container runs from the image through
// io.containerd.offload.v1.
func TestImageUnpackOnHost(t *testing.T) {
	id := fmt.Sprintf("unpack-%d", os.Getpid())
	dpuSide := side{name: "dpu", run: testbed.DPU, ns: id, tar: "/tmp/" + id + ".tar"}
	hostSide := side{name: "host", run: testbed.Host, ns: id, tar: filepath.Join(testbed.RunDir, id+".tar")}
	xfer := dpuSide
	xfer.ns = id + "-xfer"
	for _, s := range []side{dpuSide, hostSide} {
		s.ns = "default"
		s.ctr(t, time.Minute, "images", "export", "--platform", "linux/amd64", s.tar, testbed.BigImage)
	}
	t.Cleanup(func() {
		for _, s := range []side{dpuSide, xfer, hostSide} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			s.run(ctx, "ctr", "-n", s.ns, "images", "rm", "--sync", testbed.BigImage)
			s.run(ctx, "ctr", "namespaces", "rm", s.ns)
			s.run(ctx, "rm", "-f", s.tar)
			cancel()
		}
	})
	before := differLog(t)

	var took []time.Duration
	for _, s := range []side{dpuSide, hostSide} {
		start := time.Now()
		s.ctr(t, 5*time.Minute, "images", "import", "--local", "--platform", "linux/amd64", s.tar)
		took = append(took, time.Since(start))
	}
	t.Logf("ctr images import --local of %s: DPU %v, host %v (%.2fx)", testbed.BigImage, took[0], took[1], took[0].Seconds()/took[1].Seconds())
	xfer.ctr(t, 5*time.Minute, "images", "import", "--platform", "linux/amd64", dpuSide.tar)

	// Every layer of both imports went to the host; none was extracted on
	// the DPU.
	log := strings.TrimPrefix(differLog(t), before)
	for _, ns := range []string{dpuSide.ns, xfer.ns} {
		host := regexp.MustCompile(`(?m)"layer extracted on the host".*namespace=`+regexp.QuoteMeta(ns)+`(?:\s|$)`).FindAllString(log, -1)
		local := regexp.MustCompile(`(?m)extracted on the DPU.*namespace=`+regexp.QuoteMeta(ns)+`(?:\s|$)`).FindAllString(log, -1)
		if len(host) != 4 || len(local) != 0 {
			t.Errorf("namespace %s: %d layers extracted on the host, %d on the DPU; want 4 and 0\n%s", ns, len(host), len(local), log)
		}
	}

	// The DPU's layer directories are on host storage (same paths) and
	// equal the host containerd's own extraction.
	ours, ref := dpuSide.layerDirs(t), hostSide.layerDirs(t)
	if len(ours) != 4 || len(ref) != 4 {
		t.Fatalf("layer dirs: dpu %v, host %v", ours, ref)
	}
	for i := range ours {
		if !strings.HasPrefix(ours[i], testbed.SnapshotsDir+"/") {
			t.Fatalf("DPU layer dir %s is not on the shared snapshot root", ours[i])
		}
		testlayer.DiffTrees(t, fmt.Sprintf("layer %d", len(ours)-i), testlayer.Tree(t, ours[i]), testlayer.Tree(t, ref[i]))
	}

	out := dpuSide.ctr(t, 2*time.Minute, "run", "--rm", "--runtime", "io.containerd.offload.v1", testbed.BigImage, id,
		"sh", "-c", "echo unpacked-on-host; ls /data | wc -l")
	if !strings.Contains(out, "unpacked-on-host") {
		t.Fatalf("container from the image unpacked on the host: %q", out)
	}
}

func differLog(t *testing.T) string {
	t.Helper()
	return testbed.MustDPU(t, "cat", "/var/log/offload-differ.log")
}
