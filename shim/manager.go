package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// RuntimeName is the runtime type containerd knows this shim by.
const RuntimeName = "io.containerd.offload.v1"

// groupLabels are the spec annotations that put several containers into one
// shim (first match wins): our own, then the CRI sandbox (one shim per pod).
var groupLabels = []string{
	"io.containerd.offload.v1.group",
	"io.kubernetes.cri.sandbox-id",
}

// manager implements the shim binary's start, delete and -info actions.
type manager struct{ name string }

var _ cshim.Shim = manager{}

// NewManager returns the shim manager for containerd's pkg/shim.
func NewManager(name string) cshim.Shim { return manager{name: name} }

func (m manager) Name() string { return m.name }

// Start starts (or finds, for a grouped container) the long-running shim
// process serving the task API, and returns its socket address. The runtime
// options are checked here so a bad config fails `ctr run` at once.
func (m manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	var opts runtimeoptions.Options
	found, err := params.FindExtension(&opts)
	if err != nil {
		return nil, fmt.Errorf("runtime options: %w", err)
	}
	var po *runtimeoptions.Options
	if found {
		po = &opts
	}
	if _, err := ConfigFromOptions(po); err != nil {
		return nil, err
	}

	id := params.GetInstanceID()
	grouping := id
	if annotations, err := readAnnotations("config.json"); err != nil {
		return nil, err
	} else {
		for _, l := range groupLabels {
			if g, ok := annotations[l]; ok && g != "" {
				grouping = g
				break
			}
		}
	}

	socketDir := params.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	address, err := cshim.CreateSocketAddress(ctx, socketDir, params.GetContainerdGrpcAddress(), grouping, false)
	if err != nil {
		return nil, err
	}
	result := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc", Address: address}
	sock, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
		if cshim.CanConnect(address) {
			return result, nil // the group's shim is running
		}
		if err := cshim.RemoveSocket(address); err != nil {
			return nil, fmt.Errorf("remove stale shim socket: %w", err)
		}
		if sock, err = cshim.NewSocket(address); err != nil {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			sock.Close()
			_ = cshim.RemoveSocket(address)
		}
	}()
	f, err := sock.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()

	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", params.GetContainerdGrpcAddress()}
	if params.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+params.GetContainerdTtrpcAddress(), "GOMAXPROCS=2")
	cmd.ExtraFiles = []*os.File{f} // fd 3: the task API socket
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start shim process: %w", err)
	}
	go cmd.Wait() //nolint:errcheck // reaped here; the shim outlives this process anyway
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	if err := cshim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return nil, fmt.Errorf("adjust shim OOM score: %w", err)
	}
	return result, nil
}

func readAnnotations(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle spec: %w", err)
	}
	defer f.Close()
	var s struct {
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	if err := json.NewDecoder(f).Decode(&s); err != nil {
		return nil, fmt.Errorf("decode bundle spec: %w", err)
	}
	return s.Annotations, nil
}

// Stop implements `delete`: containerd runs it when the shim process is gone
// (or after a failed start). It force-deletes the host container through the
// agent named in the bundle's config copy and reports its exit.
func (m manager) Stop(ctx context.Context, id string) (cshim.StopStatus, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return cshim.StopStatus{}, err
	}
	bundle := filepath.Join(filepath.Dir(cwd), id)
	if o, ok := ctx.Value(cshim.OptsKey{}).(cshim.Opts); ok && o.BundlePath != "" {
		bundle = o.BundlePath
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return cshim.StopStatus{}, err
	}
	killed := cshim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(unix.SIGKILL)}

	cfg, err := LoadConfigFile(filepath.Join(bundle, bundleConfigName))
	if errors.Is(err, os.ErrNotExist) {
		// Create never reached the agent: nothing on the host.
		log.G(ctx).WithField("id", id).Debug("no agent config in bundle; nothing to delete on the host")
		return killed, nil
	}
	if err != nil {
		return cshim.StopStatus{}, err
	}
	link, err := dialAgent(ctx, cfg)
	if err != nil {
		return cshim.StopStatus{}, err
	}
	defer link.Close()
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeouts.RPC.D())
	defer cancel()
	resp, err := link.api.Delete(rctx, &runtimev1.DeleteRequest{
		Process: &runtimev1.ProcessRef{Namespace: ns, ContainerId: id},
		Force:   true,
	})
	if err != nil {
		err = fromAgent(err)
		if errdefs.IsNotFound(err) {
			return killed, nil
		}
		return cshim.StopStatus{}, fmt.Errorf("agent force delete %s: %w", id, err)
	}
	st := cshim.StopStatus{Pid: int(resp.Pid), ExitStatus: int(resp.ExitStatus), ExitedAt: protobuf.FromTimestamp(resp.ExitedAt)}
	if resp.ExitedAt == nil {
		st.ExitedAt = time.Now()
	}
	return st, nil
}

// Info answers `-info` without touching the host: the runtime's name and
// version, and the options it was given, echoed.
func (m manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	info := &types.RuntimeInfo{
		Name:    m.name,
		Version: &types.RuntimeVersion{Version: Version},
	}
	opts, err := cshim.ReadRuntimeOptions[*runtimeoptions.Options](optionsR)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("read runtime options: %w", err)
	}
	if opts != nil {
		if info.Options, err = typeurl.MarshalAnyToProto(opts); err != nil {
			return nil, err
		}
	}
	return info, nil
}
