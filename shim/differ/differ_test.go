package differ

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/internal/testlayer"
	"github.com/dpu-offload/offload/plugin"
	"github.com/dpu-offload/offload/shim"
)

// rig is a host agent (the real plugin executor serving only its unpack
// channel, through package transport on a unix socket), a DPU content store
// and this differ served over gRPC, reached through containerd's own proxy
// differ client, as containerd reaches a proxy_plugins entry.
type rig struct {
	shared  string // the shared prefix (DPU and host see the same path here)
	cs      content.Store
	svc     *Service
	applier diff.Comparer
	apply   diff.Applier
}

func newRig(t *testing.T, hostCfg func(*plugin.Config), agentAddr string) *rig {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if !testing.Verbose() {
		log.SetLevel("warn")
	}
	root := t.TempDir()
	r := &rig{shared: filepath.Join(root, "snapshots")}
	if err := os.MkdirAll(r.shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if agentAddr == "" {
		cfg := plugin.DefaultConfig()
		cfg.StateDir, cfg.BundleDir, cfg.RuncRoot = filepath.Join(root, "state"), filepath.Join(root, "bundles"), filepath.Join(root, "runc")
		cfg.AllowedMountPrefixes = []string{r.shared}
		if hostCfg != nil {
			hostCfg(&cfg)
		}
		host, err := plugin.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := transport.ParseAddress("unix://" + filepath.Join(root, "agent.sock"))
		if err != nil {
			t.Fatal(err)
		}
		mux, err := transport.Listen(context.Background(), addr, transport.Security{})
		if err != nil {
			t.Fatal(err)
		}
		go host.ServeUnpack(mux.Channel(transport.ChannelUnpack))
		go mux.Serve()
		t.Cleanup(func() { mux.Close(); host.Close() })
		agentAddr = addr.String()
	}

	contentRoot := filepath.Join(root, "content")
	os.MkdirAll(contentRoot, 0o700)
	agent, err := shim.ParseConfig([]byte(fmt.Sprintf("agent_address = %q\n[timeouts]\ndial = \"2s\"\n", agentAddr)))
	if err != nil {
		t.Fatal(err)
	}
	r.svc, err = New(Config{Agent: agent, ContentRoot: contentRoot, SharedPrefixes: []string{r.shared}})
	if err != nil {
		t.Fatal(err)
	}
	if r.cs, err = local.NewStore(contentRoot); err != nil {
		t.Fatal(err)
	}

	l, err := Listen(filepath.Join(root, "run", "differ.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "run", "differ.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("differ socket: %v %v", fi.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.svc.Serve(ctx, l) }()
	conn, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-done
		l.Close()
	})
	d := diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn))
	r.applier, r.apply = d.(diff.Comparer), d.(diff.Applier)
	return r
}

func (r *rig) put(t *testing.T, l testlayer.Layer) {
	t.Helper()
	if err := content.WriteBlob(context.Background(), r.cs, l.Desc.Digest.String(), bytes.NewReader(l.Blob), l.Desc); err != nil {
		t.Fatal(err)
	}
}

func nsCtx() context.Context {
	return namespaces.WithNamespace(context.Background(), "testns")
}

func mkdirs(t *testing.T, dirs ...string) {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func bind(dir string) []mount.Mount {
	return []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}
}

func overlay(upper, work string, lowers ...string) []mount.Mount {
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + strings.Join(lowers, ":")}}}
}

// applyBoth applies two layers onto snapshots under base: the first onto a
// bind mount, the second onto an overlay upperdir.
func applyBoth(t *testing.T, a diff.Applier, base string, l1, l2 testlayer.Layer) []ocispec.Descriptor {
	t.Helper()
	mkdirs(t, filepath.Join(base, "1/fs"), filepath.Join(base, "2/fs"), filepath.Join(base, "2/work"))
	var out []ocispec.Descriptor
	for _, s := range []struct {
		l testlayer.Layer
		m []mount.Mount
	}{
		{l1, bind(filepath.Join(base, "1/fs"))},
		{l2, overlay(filepath.Join(base, "2/fs"), filepath.Join(base, "2/work"), filepath.Join(base, "1/fs"))},
	} {
		d, err := a.Apply(nsCtx(), s.l.Desc, s.m)
		if err != nil {
			t.Fatalf("apply %s: %v", s.l.Desc.Digest, err)
		}
		out = append(out, d)
	}
	return out
}

// TestHostExtractsSharedSnapshots: layers for snapshots on the shared prefix
// are extracted by the host (counted), the trees equal containerd's own
// applier's, and the applied descriptors carry the diff IDs.
func TestHostExtractsSharedSnapshots(t *testing.T) {
	r := newRig(t, nil, "")
	l1, l2 := testlayer.Pair(t)
	r.put(t, l1)
	r.put(t, l2)

	got := applyBoth(t, r.apply, filepath.Join(r.shared, "ours"), l1, l2)
	if st := r.svc.Stats(); st.Host != 2 || st.Local != 0 {
		t.Fatalf("stats %+v, want both layers extracted by the host", st)
	}
	want := applyBoth(t, apply.NewFileSystemApplier(r.cs), filepath.Join(t.TempDir(), "ref"), l1, l2)
	for i := range got {
		if got[i].Digest != want[i].Digest || got[i].Size != want[i].Size || got[i].MediaType != ocispec.MediaTypeImageLayer {
			t.Errorf("layer %d: %v, containerd's applier %v", i+1, got[i], want[i])
		}
	}
	if got[0].Digest != l1.DiffID || got[1].Digest != l2.DiffID {
		t.Errorf("diff IDs %s %s, want %s %s", got[0].Digest, got[1].Digest, l1.DiffID, l2.DiffID)
	}
}

// TestLocalWhenNotShared: a snapshot off the shared prefix, and a layer
// with stream-processor payloads, are extracted here, not sent.
func TestLocalWhenNotShared(t *testing.T) {
	r := newRig(t, nil, "")
	l1, l2 := testlayer.Pair(t)
	r.put(t, l1)
	r.put(t, l2)
	base := filepath.Join(t.TempDir(), "elsewhere")
	got := applyBoth(t, r.apply, base, l1, l2)
	if st := r.svc.Stats(); st.Host != 0 || st.Local != 2 {
		t.Fatalf("stats %+v, want both layers extracted on the DPU", st)
	}
	if got[0].Digest != l1.DiffID || got[1].Digest != l2.DiffID {
		t.Errorf("diff IDs %s %s, want %s %s", got[0].Digest, got[1].Digest, l1.DiffID, l2.DiffID)
	}
	if _, err := os.Stat(filepath.Join(base, "1/fs/bin/busybox")); err != nil {
		t.Error(err)
	}
	// A snapshot on the share whose shape the host does not take (two
	// mounts) is extracted here too.
	if (&Service{prefixes: []string{"/s"}}).onShare(append(bind("/s/1"), bind("/s/2")...)) {
		t.Error("two mounts judged offloadable")
	}
	if (&Service{prefixes: []string{"/s"}}).onShare(overlay("/s/2/fs", "/s/2/work", "/s/1/fs", "/etc")) {
		t.Error("a lowerdir off the share judged offloadable")
	}
	if (&Service{prefixes: []string{"/s"}}).onShare(bind("/s/../etc")) {
		t.Error("dot-dot judged on the share")
	}
}

// TestHostDeclines: a host that declines (unpack disabled) leaves the layer
// to the DPU; a host that refuses (the path is outside its allowed
// prefixes) fails the apply with that kind; an unreachable agent fails with
// Unavailable; Compare is left to the next differ.
func TestHostDeclines(t *testing.T) {
	l1, _ := testlayer.Pair(t)

	r := newRig(t, func(c *plugin.Config) { c.Unpack.Disabled = true }, "")
	r.put(t, l1)
	mkdirs(t, filepath.Join(r.shared, "1/fs"))
	if _, err := r.apply.Apply(nsCtx(), l1.Desc, bind(filepath.Join(r.shared, "1/fs"))); err != nil {
		t.Fatal(err)
	}
	if st := r.svc.Stats(); st.Declined != 1 || st.Local != 1 || st.Host != 0 {
		t.Fatalf("stats %+v", st)
	}

	r = newRig(t, func(c *plugin.Config) { c.AllowedMountPrefixes = []string{"/nonexistent-prefix"} }, "")
	r.put(t, l1)
	mkdirs(t, filepath.Join(r.shared, "1/fs"))
	_, err := r.apply.Apply(nsCtx(), l1.Desc, bind(filepath.Join(r.shared, "1/fs")))
	if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "outside the allowed mount prefixes") {
		t.Fatalf("refused by the host: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.shared, "1/fs")); len(ents) != 0 {
		t.Fatalf("a refused layer was extracted: %v", ents)
	}

	r = newRig(t, nil, "unix://"+filepath.Join(t.TempDir(), "no-agent.sock"))
	r.put(t, l1)
	mkdirs(t, filepath.Join(r.shared, "1/fs"))
	if _, err := r.apply.Apply(nsCtx(), l1.Desc, bind(filepath.Join(r.shared, "1/fs"))); !errdefs.IsUnavailable(err) {
		t.Fatalf("no agent: %v", err)
	}
	if _, err := r.applier.Compare(nsCtx(), bind("/a"), bind("/b")); !errdefs.IsNotImplemented(err) {
		t.Fatalf("compare: %v", err)
	}
	// A layer type that needs a stream processor containerd has and this
	// differ has not: NotImplemented, so the diff service tries walking.
	enc := l1
	enc.Desc.MediaType = ocispec.MediaTypeImageLayerGzip + "+encrypted"
	if _, err := r.apply.Apply(nsCtx(), enc.Desc, bind("/elsewhere")); !errdefs.IsNotImplemented(err) {
		t.Fatalf("a layer needing a stream processor: %v", err)
	}
}

// TestAgentWithoutUnpackChannel: an agent that closes the unpack channel
// unanswered (one that predates it) is treated as declining.
func TestAgentWithoutUnpackChannel(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "old-agent.sock")
	addr, _ := transport.ParseAddress("unix://" + sock)
	mux, err := transport.Listen(context.Background(), addr, transport.Security{})
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	go mux.Serve() // no channel registered: the mux closes every connection

	r := newRig(t, nil, addr.String())
	l1, _ := testlayer.Pair(t)
	r.put(t, l1)
	mkdirs(t, filepath.Join(r.shared, "1/fs"))
	if _, err := r.apply.Apply(nsCtx(), l1.Desc, bind(filepath.Join(r.shared, "1/fs"))); err != nil {
		t.Fatal(err)
	}
	if st := r.svc.Stats(); st.Declined != 1 || st.Local != 1 {
		t.Fatalf("stats %+v", st)
	}
}

var _ net.Listener = (*unlinkListener)(nil)
