package wrappers

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	scripts "github.com/dpu-offload/offload/contrib/wrappers"
)

// DefaultCNIPlugins are the plugins of Debian's containernetworking-plugins.
var DefaultCNIPlugins = []string{
	"bandwidth", "bridge", "dhcp", "firewall", "host-device", "host-local", "ipvlan", "loopback",
	"macvlan", "portmap", "ptp", "sbr", "static", "tuning", "vlan", "vrf",
}

// InstallOptions says where the wrappers go.
type InstallOptions struct {
	// Dir receives mount, umount and modprobe.
	Dir string
	// CNIDir receives one wrapper per name in CNIPlugins; empty skips them.
	CNIDir     string
	CNIPlugins []string
	// Rexec is the absolute path of the rexec binary the wrappers exec.
	Rexec string
	// Force overwrites files that are not wrappers.
	Force bool
}

// Install writes the wrappers and returns the paths written. An existing
// file is replaced only when it is a wrapper already (it carries the marker)
// or Force is set, so a real binary is never overwritten by accident.
func Install(o InstallOptions) ([]string, error) {
	if !filepath.IsAbs(o.Rexec) {
		return nil, fmt.Errorf("install wrappers: rexec path %q is not absolute", o.Rexec)
	}
	type file struct{ script, dst string }
	var files []file
	if o.Dir != "" {
		for _, n := range []string{"mount", "umount", "modprobe"} {
			files = append(files, file{n, filepath.Join(o.Dir, n)})
		}
	}
	if o.CNIDir != "" {
		for _, p := range o.CNIPlugins {
			if p == "" || filepath.Base(p) != p {
				return nil, fmt.Errorf("install wrappers: bad CNI plugin name %q", p)
			}
			files = append(files, file{"cni-plugin", filepath.Join(o.CNIDir, p)})
		}
	}
	var written []string
	for _, f := range files {
		b, err := fs.ReadFile(scripts.Scripts, f.script)
		if err != nil {
			return written, err
		}
		b = bytes.ReplaceAll(b, []byte("@REXEC@"), []byte(o.Rexec))
		if err := installFile(f.dst, b, o.Force); err != nil {
			return written, err
		}
		written = append(written, f.dst)
	}
	return written, nil
}

func installFile(dst string, content []byte, force bool) error {
	old, err := os.ReadFile(dst)
	switch {
	case err == nil:
		if !force && !bytes.Contains(old, []byte(scripts.Marker)) {
			return fmt.Errorf("install wrappers: %s exists and is not a wrapper (use --force to replace it)", dst)
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		// A directory, say: never replace that.
		return fmt.Errorf("install wrappers: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("install wrappers: %w", err)
	}
	// Write beside and rename, so a wrapper in use is never half-written.
	tmp := dst + ".rexec-tmp"
	if err := os.WriteFile(tmp, content, 0o755); err != nil {
		return fmt.Errorf("install wrappers: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install wrappers: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install wrappers: %w", err)
	}
	return nil
}
