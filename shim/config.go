package shim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/dpu-offload/offload/api/transport"
)

// DefaultConfigPath is read when the runtime options name no config.
const DefaultConfigPath = "/etc/offload/shim.toml"

// bundleConfigName is the resolved config the shim writes into each bundle at
// Create, so that `delete` can reach the agent after the shim process died
// (containerd passes `delete` no runtime options).
const bundleConfigName = "offload-shim.toml"

// Config is the shim's configuration (docs/containerd-shim-offload-v1.md).
type Config struct {
	// AgentAddress is the offload-agent endpoint:
	// unix:///path.sock, tcp://IP:PORT or vsock://CID:PORT.
	AgentAddress string    `toml:"agent_address"`
	TLS          TLSConfig `toml:"tls"`
	Timeouts     Timeouts  `toml:"timeouts"`
}

// TLSConfig names the DPU's client certificate for mTLS on tcp:// addresses.
type TLSConfig struct {
	CAFile   string `toml:"ca_file"`
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// Insecure allows plain TCP; logged loudly.
	Insecure bool `toml:"insecure"`
}

// Timeouts bound the shim's waits on the host.
type Timeouts struct {
	// Dial bounds one connection attempt (runtime or stdio channel).
	Dial Duration `toml:"dial"`
	// RPC bounds each control RPC except Wait, which waits for the process.
	RPC Duration `toml:"rpc"`
	// StdioDrain bounds how long a process's TaskExit waits for its stdout
	// and stderr to drain (a background child can hold a pipe open forever).
	StdioDrain Duration `toml:"stdio_drain"`
	// StdioStall ends that wait early for an output whose write to its DPU
	// endpoint has been blocked this long (a FIFO nobody reads any more,
	// e.g. `ctr run -d` after ctr exited); its bytes still flow later.
	StdioStall Duration `toml:"stdio_stall"`
}

// Duration is a time.Duration written as a Go duration string ("5s").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler for go-toml.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (c *Config) setDefaults() {
	if c.Timeouts.Dial == 0 {
		c.Timeouts.Dial = Duration(10 * time.Second)
	}
	if c.Timeouts.RPC == 0 {
		c.Timeouts.RPC = Duration(60 * time.Second)
	}
	if c.Timeouts.StdioDrain == 0 {
		c.Timeouts.StdioDrain = Duration(5 * time.Second)
	}
	if c.Timeouts.StdioStall == 0 {
		c.Timeouts.StdioStall = Duration(time.Second)
	}
}

// Validate checks that the config can reach an agent.
func (c *Config) Validate() error {
	if c.AgentAddress == "" {
		return errors.New("agent_address is required")
	}
	addr, err := transport.ParseAddress(c.AgentAddress)
	if err != nil {
		return fmt.Errorf("agent_address: %w", err)
	}
	if addr.Network == transport.NetworkTCP && !c.TLS.Insecure {
		if c.TLS.CAFile == "" || c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			return errors.New("tcp agent_address needs tls.ca_file, tls.cert_file and tls.key_file (or tls.insecure = true)")
		}
	}
	return nil
}

// ParseConfig decodes a TOML config; unknown keys are errors.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var sme *toml.StrictMissingError
		if errors.As(err, &sme) {
			return nil, fmt.Errorf("%w: %s", errdefs.ErrInvalidArgument, sme.String())
		}
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return &c, nil
}

// LoadConfigFile reads and parses a config file.
func LoadConfigFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read shim config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("shim config %s: %w", path, err)
	}
	return c, nil
}

// ConfigFromOptions resolves the config from containerd's runtime options:
// ConfigPath (ctr --runtime-config-path, or config_path in the CRI handler's
// options) names a file; otherwise ConfigBody (the CRI handler's whole
// options table) is the config; otherwise DefaultConfigPath.
func ConfigFromOptions(opts *runtimeoptions.Options) (*Config, error) {
	switch {
	case opts != nil && opts.ConfigPath != "":
		return LoadConfigFile(opts.ConfigPath)
	case opts != nil && len(opts.ConfigBody) > 0:
		c, err := ParseConfig(opts.ConfigBody)
		if err != nil {
			return nil, fmt.Errorf("runtime options: %w", err)
		}
		return c, nil
	default:
		return LoadConfigFile(DefaultConfigPath)
	}
}

// ConfigFromAny resolves the config from a Create request's options. Options
// of another runtime's type are an error rather than silently ignored.
func ConfigFromAny(a *anypb.Any) (*Config, error) {
	if a == nil || a.GetTypeUrl() == "" {
		return ConfigFromOptions(nil)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("%w: runtime options %q: %w", errdefs.ErrInvalidArgument, a.GetTypeUrl(), err)
	}
	opts, ok := v.(*runtimeoptions.Options)
	if !ok {
		return nil, fmt.Errorf("%w: runtime options of type %T; io.containerd.offload.v1 takes runtimeoptions.v1.Options (config_path or an options table)", errdefs.ErrInvalidArgument, v)
	}
	return ConfigFromOptions(opts)
}

// Marshal renders the config as TOML (written into bundles for `delete`).
func (c *Config) Marshal() ([]byte, error) {
	return toml.Marshal(c)
}

// Security returns the transport security for dialling the agent.
func (c *Config) Security() transport.Security {
	return transport.Security{
		CAFile:   c.TLS.CAFile,
		CertFile: c.TLS.CertFile,
		KeyFile:  c.TLS.KeyFile,
		Insecure: c.TLS.Insecure,
	}
}
