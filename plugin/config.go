package plugin

import (
	"fmt"
	"path/filepath"
	"time"
)

// Config is the executor's part of /etc/offload/agent.toml (the [runtime]
// table; see docs/offload-agent.md).
type Config struct {
	// StateDir holds one state.json per container so a restarted agent can
	// list and re-adopt them.
	StateDir string `toml:"state_dir"`
	// BundleDir is where host bundles (config.json, rootfs mount point) are
	// made: <bundle_dir>/<namespace>/<id>.
	BundleDir string `toml:"bundle_dir"`
	// RuncBinary is the runc executable (a name is looked up on PATH).
	RuncBinary string `toml:"runc_binary"`
	// RuncRoot is runc's --root; each namespace gets <runc_root>/<namespace>.
	RuncRoot string `toml:"runc_root"`
	// AllowedMountPrefixes are the host directories rootfs mounts and bind
	// mounts may come from (the shared snapshotter root, kubelet volumes).
	AllowedMountPrefixes []string `toml:"allowed_mount_prefixes"`
	// AllowHooks lets OCI hooks in a spec run (as root, on the host).
	AllowHooks bool `toml:"allow_hooks"`
	// DrainTimeout bounds how long an exit event waits for the process's
	// attached stdout/stderr to reach EOF (a background child can hold the
	// pipe open). Go duration syntax; default 10s.
	DrainTimeout string `toml:"drain_timeout"`
	// DrainStall ends that wait early for a stream whose write to the DPU
	// side has been blocked this long (nobody reads it there, e.g. a
	// detached container after ctr exited); its bytes still flow later.
	// Go duration syntax; default 1s.
	DrainStall string `toml:"drain_stall"`
	// EventBacklog is how many events are held for replay; default 4096.
	EventBacklog int `toml:"event_backlog"`
	// Unpack configures the unpack channel: image layers offload-differ
	// ships from the DPU, extracted beneath AllowedMountPrefixes.
	Unpack UnpackConfig `toml:"unpack"`

	// AgentVersion is reported by Hello (set by the main, not the file).
	AgentVersion string `toml:"-"`
	drainTimeout time.Duration
	drainStall   time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		StateDir:             "/var/lib/offload/agent",
		BundleDir:            "/run/offload/bundles",
		RuncBinary:           "runc",
		RuncRoot:             "/run/offload/runc",
		AllowedMountPrefixes: []string{"/var/lib/offload/snapshots"},
		DrainTimeout:         "10s",
		DrainStall:           "1s",
		EventBacklog:         4096,
		Unpack:               UnpackConfig{MaxConcurrent: 4},
	}
}

func (c *Config) validate() error {
	for name, p := range map[string]string{"state_dir": c.StateDir, "bundle_dir": c.BundleDir, "runc_root": c.RuncRoot} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("runtime.%s %q must be an absolute path", name, p)
		}
	}
	if c.RuncBinary == "" {
		c.RuncBinary = "runc"
	}
	if c.DrainTimeout == "" {
		c.DrainTimeout = "10s"
	}
	d, err := time.ParseDuration(c.DrainTimeout)
	if err != nil || d < 0 {
		return fmt.Errorf("runtime.drain_timeout %q: not a duration", c.DrainTimeout)
	}
	c.drainTimeout = d
	if c.DrainStall == "" {
		c.DrainStall = "1s"
	}
	d, err = time.ParseDuration(c.DrainStall)
	if err != nil || d < 0 {
		return fmt.Errorf("runtime.drain_stall %q: not a duration", c.DrainStall)
	}
	c.drainStall = d
	if c.EventBacklog <= 0 {
		c.EventBacklog = 4096
	}
	if c.Unpack.MaxConcurrent < 0 {
		return fmt.Errorf("runtime.unpack.max_concurrent %d: must not be negative", c.Unpack.MaxConcurrent)
	}
	if c.Unpack.MaxConcurrent == 0 {
		c.Unpack.MaxConcurrent = 4
	}
	return nil
}
