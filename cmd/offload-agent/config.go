package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/pelletier/go-toml/v2"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/plugin"
	"github.com/dpu-offload/offload/qtfs/server"
	"github.com/dpu-offload/offload/rexec"
)

// DefaultConfigPath is read when --config is not given.
const DefaultConfigPath = "/etc/offload/agent.toml"

// Config is agent.toml. contrib/offload-agent.toml is a commented example.
type Config struct {
	// Listen is the one address every channel is served on.
	Listen string `toml:"listen"`
	// TLSDir is a directory written by `offloadctl certs`; it fills
	// security's ca/cert/key with the host's files.
	TLSDir   string `toml:"tls_dir"`
	LogLevel string `toml:"log_level"`
	// Security is transport.Security: ca, cert, key, insecure, allowed_cids.
	Security transport.Security  `toml:"security"`
	Runtime  plugin.Config       `toml:"runtime"`
	Qtfs     *server.Config      `toml:"qtfs"`
	Rexec    *rexec.ServerConfig `toml:"rexec"`
}

func defaultConfig() Config {
	return Config{
		Listen:   "unix:///run/offload/agent.sock",
		LogLevel: "info",
		Runtime:  plugin.DefaultConfig(),
	}
}

// loadConfig reads path over the defaults. A missing default file is fine
// (the defaults run containers on a local unix socket); a missing explicit
// one is an error. Unknown keys are errors.
func loadConfig(path string, explicit bool) (Config, error) {
	cfg := defaultConfig()
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return cfg, nil
		}
		return cfg, fmt.Errorf("read config: %w", err)
	}
	d := toml.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&cfg); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return cfg, fmt.Errorf("config %s: unknown keys:\n%s", path, sm.String())
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			return cfg, fmt.Errorf("config %s: %s", path, de.String())
		}
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// security is the listener's transport security.
func (c *Config) security() transport.Security {
	if c.TLSDir == "" {
		return c.Security
	}
	sec := transport.HostSecurity(c.TLSDir)
	sec.AllowedCIDs = c.Security.AllowedCIDs
	sec.Insecure = c.Security.Insecure
	return sec
}
