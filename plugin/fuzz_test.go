package plugin

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// FuzzPrepareRootfs feeds arbitrary rootfs mounts (type, source, options
// from the wire) to the policy: it must refuse with InvalidArgument or
// PermissionDenied, or accept only paths beneath the allowed prefix —
// never panic.
func FuzzPrepareRootfs(f *testing.F) {
	dir := f.TempDir()
	pol, err := newMountPolicy([]string{dir})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("overlay", "overlay", "lowerdir="+dir+":"+dir+",upperdir="+dir+",workdir="+dir)
	f.Add("bind", dir, "rbind,ro")
	f.Add("bind", "/etc", "rbind")
	f.Add("overlay", "overlay", "lowerdir=/,index=off")
	f.Add("none", dir+"/../..", "bind")
	f.Add("overlay", "", "lowerdir=,upperdir")
	f.Fuzz(func(t *testing.T, typ, source, options string) {
		m := &runtimev1.Mount{Type: typ, Source: source, Options: strings.Split(options, ",")}
		pm, err := pol.prepareRootfs([]*runtimev1.Mount{m})
		if err != nil {
			if !errdefs.IsInvalidArgument(err) && !errdefs.IsPermissionDenied(err) {
				t.Fatalf("refusal without an errdefs class: %v", err)
			}
			return
		}
		defer pm.release()
		for _, p := range pm.pins {
			real, err := readlinkFd(p)
			if err != nil {
				t.Fatal(err)
			}
			if !pol.allows(real) {
				t.Fatalf("pinned %q outside %s", real, dir)
			}
		}
	})
}

// FuzzPrepareSpec feeds arbitrary config.json bytes: decode errors are
// InvalidArgument, and an accepted spec has its root on the host rootfs.
func FuzzPrepareSpec(f *testing.F) {
	s := &Service{cfg: DefaultConfig()}
	s.policy, _ = newMountPolicy([]string{f.TempDir()})
	f.Add([]byte(`{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","oomScoreAdj":-998},"root":{"path":"rootfs"}}`))
	f.Add([]byte(`{"process":{},"hooks":{"createRuntime":[{"path":"/bin/true"}]}}`))
	f.Add([]byte(`{"process":{},"mounts":[{"destination":"/x","type":"bind","source":"/etc"}]}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		spec, err := s.prepareSpec(context.Background(), raw, "/host/rootfs")
		if err != nil {
			if !errdefs.IsInvalidArgument(err) && !errdefs.IsPermissionDenied(err) {
				t.Fatalf("refusal without an errdefs class: %v", err)
			}
			return
		}
		if spec.Root == nil || spec.Root.Path != "/host/rootfs" {
			t.Fatalf("root not rewritten: %+v", spec.Root)
		}
		if a := spec.Process.OOMScoreAdj; a != nil && *a < s.ownOOMScoreAdj && !s.canLowerOOMScore {
			t.Fatalf("oom_score_adj %d not clamped", *a)
		}
	})
}
