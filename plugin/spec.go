package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// prepareSpec decodes the DPU's config.json and makes it safe and valid on
// the host: the root points at the host rootfs, hooks (host binaries run as
// root) are refused unless configured, bind mounts must come from allowed
// prefixes, and oom_score_adj is clamped to what the agent may set.
func (s *Service) prepareSpec(ctx context.Context, raw []byte, rootfs string) (*specs.Spec, error) {
	var spec specs.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, fmt.Errorf("decode OCI spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("OCI spec has no process: %w", errdefs.ErrInvalidArgument)
	}
	if spec.Hooks != nil && !s.cfg.AllowHooks {
		h := spec.Hooks
		//nolint:staticcheck // Prestart is deprecated but still honoured by runc.
		if len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer)+len(h.Poststart)+len(h.Poststop) > 0 {
			return nil, fmt.Errorf("OCI hooks run host binaries as root and are disabled (allow_hooks): %w", errdefs.ErrPermissionDenied)
		}
	}
	for _, m := range spec.Mounts {
		if !isBindMount(m) {
			continue
		}
		pp, err := s.policy.pin("bind mount source", m.Source)
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", m.Destination, err)
		}
		pp.f.Close()
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = rootfs
	s.clampOOMScoreAdj(ctx, spec.Process)
	return &spec, nil
}

func isBindMount(m specs.Mount) bool {
	if m.Type == "bind" || m.Type == "rbind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// clampOOMScoreAdj raises a negative oom_score_adj the agent may not set
// (lowering it needs CAP_SYS_RESOURCE) to the agent's own value, which it
// may always pass on. CRI asks -998 for the pause container; failing the
// pod over it would be worse than running it slightly more killable.
func (s *Service) clampOOMScoreAdj(ctx context.Context, p *specs.Process) {
	if p == nil || p.OOMScoreAdj == nil || s.canLowerOOMScore {
		return
	}
	if *p.OOMScoreAdj < s.ownOOMScoreAdj {
		log.G(ctx).Warnf("clamping oom_score_adj %d to %d: the agent lacks CAP_SYS_RESOURCE", *p.OOMScoreAdj, s.ownOOMScoreAdj)
		v := s.ownOOMScoreAdj
		p.OOMScoreAdj = &v
	}
}

// readOOMScoreAdj returns the calling process's oom_score_adj.
func readOOMScoreAdj() int {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return v
}

// hasCapSysResource reads CapEff from /proc/self/status.
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false
			}
			const capSysResource = 24
			return caps&(1<<capSysResource) != 0
		}
	}
	return false
}
