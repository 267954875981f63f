package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
	unpackv1 "github.com/dpu-offload/offload/api/unpack/v1"
	"github.com/dpu-offload/offload/rexec"
)

// TestOneListenerAllChannels runs the real binary and uses the runtime,
// stdio and rexec channels of its single listener; qtfs is configured too.
// rexec's exact exit code shows the agent's subreaper does not steal the
// exits of children it did not start.
func TestOneListenerAllChannels(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "offload-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	export := filepath.Join(dir, "export")
	os.Mkdir(export, 0o755)
	sock := filepath.Join(dir, "agent.sock")
	cfg := fmt.Sprintf(`listen = "unix://%s"
[runtime]
state_dir = "%s/state"
bundle_dir = "%s/bundles"
runc_root = "%s/runc"
allowed_mount_prefixes = ["%s"]
[[rexec.allow]]
path = "/bin/sh"
[[qtfs.export]]
name = "x"
path = "%s"
`, sock, dir, dir, dir, export, export)
	cfgPath := filepath.Join(dir, "agent.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if !strings.Contains(logs.String(), "containers keep running") {
			t.Errorf("no clean shutdown in log:\n%s", logs.String())
		}
	}()
	addr, err := transport.ParseAddress("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var rc *ttrpc.Client
	for i := 0; ; i++ {
		conn, err := transport.Dial(ctx, addr, transport.Security{}, transport.ChannelRuntime)
		if err == nil {
			rc = ttrpc.NewClient(conn)
			break
		}
		if i > 100 {
			t.Fatalf("agent not listening: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer rc.Close()
	h, err := runtimev1.NewAgentClient(rc).Hello(ctx, &runtimev1.HelloRequest{ProtocolVersion: 1, Client: "test"})
	if err != nil || h.ProtocolVersion != 1 || h.AgentPid != uint32(cmd.Process.Pid) {
		t.Fatalf("hello: %v %v", h, err)
	}

	sc, err := transport.Dial(ctx, addr, transport.Security{}, transport.ChannelStdio)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	runtimev1.WriteStdioFrame(sc, &runtimev1.StdioAttach{Process: &runtimev1.ProcessRef{Namespace: "n", ContainerId: "none"}})
	var ar runtimev1.StdioAttachResponse
	if err := runtimev1.ReadStdioFrame(sc, &ar); err != nil || !strings.Contains(ar.Error, "not found") {
		t.Fatalf("stdio attach to an unknown container: %v %q", err, ar.Error)
	}

	rx := rexec.NewClient(rexec.TransportDialer(addr, transport.Security{}))
	var out bytes.Buffer
	st, err := rx.Run(ctx, &rexec.Cmd{Path: "/bin/sh", Args: []string{"-c", "echo via-rexec; exit 5"}, Stdout: &out})
	if err != nil || st.Code != 5 || out.String() != "via-rexec\n" {
		t.Fatalf("rexec: %+v %v %q", st, err, out.String())
	}
	uc, err := transport.Dial(ctx, addr, transport.Security{}, transport.ChannelUnpack)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	unpackv1.WriteFrame(uc, &unpackv1.ApplyRequest{ProtocolVersion: unpackv1.Version_VERSION_1, MediaType: "application/vnd.oci.image.layer.v1.tar",
		Digest: "sha256:" + strings.Repeat("0", 64), Mounts: []*unpackv1.Mount{{Type: "bind", Source: "/etc", Options: []string{"rbind"}}}})
	if rep, err := unpackv1.ReadReply(uc); err != nil || rep.GetError() == nil || !strings.Contains(rep.GetError().GetMessage(), "outside the allowed mount prefixes") {
		t.Fatalf("unpack onto /etc: %v %v", rep, err)
	}

	if !strings.Contains(logs.String(), "channels=\"[runtime stdio unpack rexec qtfs]\"") {
		t.Errorf("not every channel served:\n%s", logs.String())
	}
}

// syncBuffer is the agent's stderr, written by os/exec's copier while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
