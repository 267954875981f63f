package rexec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeConfigFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "serve.toml")
	must(t, os.WriteFile(p, []byte(`
listen = "tcp://192.0.2.1:7700"
tls_dir = "/etc/offload/certs"

[[rexec.allow]]
path = "/usr/lib/cni/bridge"

[[rexec.allow]]
path = "/usr/bin/mount"
args = ["-t", "tmpfs", "tmpfs", "/var/lib/kubelet/.*"]
uid = 0
gid = 0

[[rexec.allow]]
path = "/bin/true"
args = []
`), 0o644))
	cfg, err := LoadServeConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Rexec.Allow
	if cfg.Listen != "tcp://192.0.2.1:7700" || len(a) != 3 || a[0].Args != nil || len(a[1].Args) != 4 || a[1].UID == nil || *a[1].UID != 0 {
		t.Fatalf("decoded %+v", cfg)
	}
	if a[2].Args == nil {
		t.Error("args = [] decoded as absent (would allow any arguments)")
	}
	if sec := cfg.SecurityConfig(); sec.CertFile != "/etc/offload/certs/host.pem" {
		t.Errorf("security %+v", sec)
	}
	l, err := newAllowlist(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.check("/bin/true", []string{"x"}); err == nil {
		t.Error("args = [] allowed an argument")
	}

	must(t, os.WriteFile(p, []byte("[[rexec.allow]]\npath = \"/bin/true\"\nargz = [\"x\"]\n"), 0o644))
	if _, err := LoadServeConfig(p); err == nil || !strings.Contains(err.Error(), "argz") {
		t.Errorf("unknown field: %v", err)
	}
}

func TestClientConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfg, err := LoadClientConfig(filepath.Join(dir, "missing.toml"), false)
	if err != nil || cfg.Wrappers.CNIHostDir != "/usr/lib/cni" {
		t.Fatalf("missing optional file: %+v %v", cfg, err)
	}
	if _, err := LoadClientConfig(filepath.Join(dir, "missing.toml"), true); err == nil {
		t.Error("missing required file accepted")
	}
	p := filepath.Join(dir, "rexec.toml")
	must(t, os.WriteFile(p, []byte(`
addr = "tcp://192.0.2.1:7700"
tls_dir = "/etc/offload/certs"
[wrappers]
shared_prefixes = ["/var/lib/kubelet"]
cni_host_dir = "/opt/host-cni"
`), 0o644))
	cfg, err = LoadClientConfig(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "tcp://192.0.2.1:7700" || cfg.Wrappers.CNIHostDir != "/opt/host-cni" || cfg.Wrappers.HostMount != "/usr/bin/mount" ||
		cfg.SecurityConfig().KeyFile != "/etc/offload/certs/dpu-key.pem" || len(cfg.Wrappers.SharedPrefixes) != 1 {
		t.Errorf("decoded %+v", cfg)
	}
}
