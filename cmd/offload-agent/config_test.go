package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExampleConfigIsDefaults(t *testing.T) {
	cfg, err := loadConfig("../../contrib/offload-agent.toml", true)
	if err != nil {
		t.Fatal(err)
	}
	def := defaultConfig()
	if cfg.Listen != def.Listen || cfg.Runtime.StateDir != def.Runtime.StateDir ||
		cfg.Runtime.RuncRoot != def.Runtime.RuncRoot || len(cfg.Runtime.AllowedMountPrefixes) != 1 {
		t.Fatalf("example config differs from defaults: %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "agent.toml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := loadConfig(write("listen = \"unix:///x.sock\"\nbogus = 1\n"), true); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown top-level key: %v", err)
	}
	if _, err := loadConfig(write("[runtime]\nrunc = \"x\"\n"), true); err == nil {
		t.Fatal("unknown runtime key accepted")
	}
	if _, err := loadConfig(filepath.Join(dir, "missing.toml"), true); err == nil {
		t.Fatal("missing explicit config accepted")
	}
	if cfg, err := loadConfig(filepath.Join(dir, "missing.toml"), false); err != nil || cfg.Listen != defaultConfig().Listen {
		t.Fatalf("missing default config: %v %+v", err, cfg)
	}
	cfg, err := loadConfig(write("tls_dir = \"/etc/offload/certs\"\n[security]\nallowed_cids = [3]\n[[rexec.allow]]\npath = \"/bin/true\"\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	sec := cfg.security()
	if sec.CAFile != "/etc/offload/certs/ca.pem" || sec.CertFile != "/etc/offload/certs/host.pem" || len(sec.AllowedCIDs) != 1 {
		t.Fatalf("security from tls_dir: %+v", sec)
	}
	if cfg.Rexec == nil || len(cfg.Rexec.Allow) != 1 {
		t.Fatalf("rexec table: %+v", cfg.Rexec)
	}
	cfg, err = loadConfig(write("[qtfs]\nsession_grace_seconds = 5\n[[qtfs.export]]\nname = \"snapshots\"\npath = \"/var/lib/offload/snapshots\"\nread_only = true\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Qtfs == nil || len(cfg.Qtfs.Exports) != 1 || cfg.Qtfs.Exports[0].Name != "snapshots" || !cfg.Qtfs.Exports[0].ReadOnly {
		t.Fatalf("qtfs table: %+v", cfg.Qtfs)
	}
	if _, err := loadConfig(write("[[qtfs.export]]\nname = \"x\"\nbogus = 1\n"), true); err == nil {
		t.Fatal("unknown qtfs export key accepted")
	}
}
