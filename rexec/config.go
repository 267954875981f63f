package rexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"

	"github.com/pelletier/go-toml/v2"

	"github.com/dpu-offload/offload/api/transport"
)

// DefaultClientConfigPath is where the rexec client and the wrappers read
// their settings when no --config is given.
const DefaultClientConfigPath = "/etc/offload/rexec.toml"

// ClientConfig is the DPU side's rexec.toml:
//
//	addr = "tcp://192.0.2.1:7700"
//	tls_dir = "/etc/offload/certs"
//
//	[wrappers]
//	shared_prefixes = ["/var/lib/kubelet"]
type ClientConfig struct {
	// Addr is the server's transport address (unix://, tcp://, vsock://).
	Addr string `toml:"addr"`
	// TLSDir is a directory written by `offloadctl certs generate`; the DPU
	// side's certificate and key are used from it.
	TLSDir string `toml:"tls_dir"`
	// Security spells out the transport security instead of TLSDir.
	Security transport.Security `toml:"security"`
	// Wrappers configures the CNI, mount and modprobe wrappers.
	Wrappers WrapperConfig `toml:"wrappers"`
}

// WrapperConfig says where the wrappers find things on each side.
type WrapperConfig struct {
	// CNIHostDir is the directory of the real CNI plugins on the host; it
	// replaces CNI_PATH for the plugin that runs there.
	CNIHostDir string `toml:"cni_host_dir"`
	// NetnsHelper is the host path of the rexec binary, run as
	// `rexec netns add|del PATH` to keep the host's network namespace at
	// the path the DPU uses.
	NetnsHelper string `toml:"netns_helper"`
	// NetnsOwners are the CNI plugins whose DEL removes the host network
	// namespace (after the plugin ran). Other plugins in a chain leave it.
	NetnsOwners []string `toml:"netns_owners"`
	// SharedPrefixes are the directories shared with the host through qtfs
	// at the same path: a mount or umount whose target lies beneath one
	// runs on the host, any other locally.
	SharedPrefixes []string `toml:"shared_prefixes"`
	// HostMount, HostUmount and HostModprobe are the host binaries the
	// wrappers run; LocalMount and LocalUmount the DPU's own.
	HostMount    string `toml:"host_mount"`
	HostUmount   string `toml:"host_umount"`
	HostModprobe string `toml:"host_modprobe"`
	LocalMount   string `toml:"local_mount"`
	LocalUmount  string `toml:"local_umount"`
}

// withDefaults fills unset wrapper settings.
func (w WrapperConfig) withDefaults() WrapperConfig {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&w.CNIHostDir, "/usr/lib/cni")
	def(&w.NetnsHelper, "/usr/local/bin/rexec")
	def(&w.HostMount, "/usr/bin/mount")
	def(&w.HostUmount, "/usr/bin/umount")
	def(&w.HostModprobe, "/usr/sbin/modprobe")
	def(&w.LocalMount, "/usr/bin/mount")
	def(&w.LocalUmount, "/usr/bin/umount")
	if w.NetnsOwners == nil {
		w.NetnsOwners = []string{"bridge", "ptp", "macvlan", "ipvlan", "host-device", "vlan"}
	}
	return w
}

// LoadClientConfig reads a client config file. A missing file gives an
// empty config unless mustExist.
func LoadClientConfig(path string, mustExist bool) (*ClientConfig, error) {
	cfg := &ClientConfig{}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !mustExist {
			cfg.Wrappers = cfg.Wrappers.withDefaults()
			return cfg, nil
		}
		return nil, fmt.Errorf("read rexec config: %w", err)
	}
	if err := decodeStrict(b, cfg); err != nil {
		return nil, fmt.Errorf("rexec config %s: %w", path, err)
	}
	cfg.Wrappers = cfg.Wrappers.withDefaults()
	return cfg, nil
}

// SecurityConfig returns the transport security the config asks for.
func (c *ClientConfig) SecurityConfig() transport.Security {
	if c.TLSDir != "" {
		sec := transport.DPUSecurity(c.TLSDir)
		sec.AllowedCIDs = c.Security.AllowedCIDs
		return sec
	}
	return c.Security
}

// TransportDialer dials addr's rexec channel with sec.
func TransportDialer(addr transport.Address, sec transport.Security) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		return transport.Dial(ctx, addr, sec, transport.ChannelRexec)
	}
}

// ServeConfig is the file `rexec serve --config` reads: where to listen and
// the same [rexec] table offload-agent embeds.
//
//	listen = "tcp://192.0.2.1:7700"
//	tls_dir = "/etc/offload/certs"
//
//	[[rexec.allow]]
//	path = "/usr/lib/cni/bridge"
type ServeConfig struct {
	Listen   string             `toml:"listen"`
	TLSDir   string             `toml:"tls_dir"`
	Security transport.Security `toml:"security"`
	Rexec    ServerConfig       `toml:"rexec"`
}

// LoadServeConfig reads a `rexec serve` config file.
func LoadServeConfig(path string) (*ServeConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rexec serve config: %w", err)
	}
	cfg := &ServeConfig{}
	if err := decodeStrict(b, cfg); err != nil {
		return nil, fmt.Errorf("rexec serve config %s: %w", path, err)
	}
	return cfg, nil
}

// SecurityConfig returns the listening side's transport security.
func (c *ServeConfig) SecurityConfig() transport.Security {
	if c.TLSDir != "" {
		sec := transport.HostSecurity(c.TLSDir)
		sec.AllowedCIDs = c.Security.AllowedCIDs
		sec.Insecure = c.Security.Insecure
		return sec
	}
	return c.Security
}

func decodeStrict(b []byte, v any) error {
	d := toml.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return fmt.Errorf("%s", sm.String())
		}
		return err
	}
	return nil
}
