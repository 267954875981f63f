package wrappers

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dpu-offload/offload/rexec"
)

func TestMountTarget(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		target string
		ok     bool
	}{
		{[]string{"-t", "tmpfs", "-o", "size=1m", "tmpfs", "/var/lib/kubelet/pods/x"}, "/var/lib/kubelet/pods/x", true},
		{[]string{"--bind", "/a", "/b"}, "/b", true},
		{[]string{"-o", "bind", "/a", "b"}, "b", true},
		{[]string{"-ttmpfs", "none", "/m"}, "/m", true},
		{[]string{"-nt", "tmpfs", "none", "/m"}, "/m", true},
		{[]string{"--types=tmpfs", "none", "/m"}, "/m", true},
		{[]string{"--target", "/t", "--source", "none", "-t", "tmpfs"}, "/t", true},
		{[]string{"-o", "remount,ro", "/m"}, "/m", true},
		{[]string{"--make-private", "/m"}, "/m", true},
		{[]string{"-a"}, "", false},
		{[]string{"-t", "tmpfs", "-a"}, "", false},
		{[]string{}, "", false},
		{[]string{"-t"}, "", false},
		{[]string{"a", "b", "c"}, "", false},
		{[]string{"-t", "tmpfs", "--", "-weird-source", "/m"}, "/m", true},
	} {
		got, ok := MountTarget(tc.args)
		if got != tc.target || ok != tc.ok {
			t.Errorf("MountTarget(%q) = %q, %v; want %q, %v", tc.args, got, ok, tc.target, tc.ok)
		}
	}
	for _, tc := range []struct {
		args   []string
		target string
		ok     bool
	}{
		{[]string{"/m"}, "/m", true},
		{[]string{"-l", "-f", "/m"}, "/m", true},
		{[]string{"-t", "tmpfs", "/m"}, "/m", true},
		{[]string{"-a"}, "", false},
		{[]string{"/a", "/b"}, "", false},
	} {
		got, ok := UmountTarget(tc.args)
		if got != tc.target || ok != tc.ok {
			t.Errorf("UmountTarget(%q) = %q, %v; want %q, %v", tc.args, got, ok, tc.target, tc.ok)
		}
	}
}

func TestIsShared(t *testing.T) {
	prefixes := []string{"/var/lib/kubelet", "/run/shared/"}
	for _, tc := range []struct {
		target, cwd string
		want        bool
	}{
		{"/var/lib/kubelet", "", true},
		{"/var/lib/kubelet/pods/a", "", true},
		{"/var/lib/kubelet2", "", false},
		{"/var/lib", "", false},
		{"/var/lib/kubelet/../docker", "", false},
		{"pods/a", "/var/lib/kubelet", true},
		{"../x", "/var/lib/kubelet", false},
		{"pods/a", "", false},
		{"/run/shared/x", "", true},
	} {
		if got := IsShared(tc.target, tc.cwd, prefixes); got != tc.want {
			t.Errorf("IsShared(%q, %q) = %v", tc.target, tc.cwd, got)
		}
	}
}

// recorder stands in for the host: it records what would run there.
type recorder struct {
	cmds  []*rexec.Cmd
	stdin []string
	code  int
}

func (r *recorder) run(_ context.Context, c *rexec.Cmd) int {
	r.cmds = append(r.cmds, c)
	if c.Stdin != nil {
		b, _ := io.ReadAll(c.Stdin)
		r.stdin = append(r.stdin, string(b))
	}
	return r.code
}

func TestCNIEnvironmentAndNetns(t *testing.T) {
	cfg, err := rexec.LoadClientConfig(filepath.Join(t.TempDir(), "none.toml"), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		plugin, command string
		calls           []string // paths run on the host, in order
	}{
		{"bridge", "ADD", []string{"/usr/local/bin/rexec netns add /run/netns/cni-1", "/usr/lib/cni/bridge"}},
		{"bridge", "DEL", []string{"/usr/lib/cni/bridge", "/usr/local/bin/rexec netns del /run/netns/cni-1"}},
		{"portmap", "DEL", []string{"/usr/lib/cni/portmap"}},
		{"bridge", "CHECK", []string{"/usr/lib/cni/bridge"}},
	} {
		rec := &recorder{}
		var out bytes.Buffer
		r := &Runner{Config: cfg.Wrappers, Run: rec.run, Stdin: strings.NewReader(`{"cniVersion":"1.0.0"}`), Stdout: &out, Stderr: io.Discard,
			Environ: []string{"CNI_COMMAND=" + tc.command, "CNI_NETNS=/run/netns/cni-1", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin", "CNI_CONTAINERID=c1", "SECRET=x", "PATH=/dpu"}}
		if code := r.CNI(context.Background(), tc.plugin); code != 0 {
			t.Fatalf("%s %s: exit %d", tc.plugin, tc.command, code)
		}
		var calls []string
		for _, c := range rec.cmds {
			calls = append(calls, strings.Join(append([]string{c.Path}, c.Args...), " "))
		}
		if !slices.Equal(calls, tc.calls) {
			t.Errorf("%s %s: ran %q, want %q", tc.plugin, tc.command, calls, tc.calls)
		}
		plugin := rec.cmds[slices.IndexFunc(rec.cmds, func(c *rexec.Cmd) bool { return c.Path == "/usr/lib/cni/"+tc.plugin })]
		wantEnv := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND=" + tc.command,
			"CNI_NETNS=/run/netns/cni-1", "CNI_IFNAME=eth0", "CNI_CONTAINERID=c1", "CNI_PATH=/usr/lib/cni"}
		if !slices.Equal(plugin.Env, wantEnv) {
			t.Errorf("plugin env %q, want %q", plugin.Env, wantEnv)
		}
		if !slices.Contains(rec.stdin, `{"cniVersion":"1.0.0"}`) {
			t.Errorf("stdin config not passed: %q", rec.stdin)
		}
	}

	// A failing netns helper is a CNI error result, and the plugin never runs.
	rec := &recorder{code: 1}
	var out bytes.Buffer
	r := &Runner{Config: cfg.Wrappers, Run: rec.run, Stdout: &out, Stderr: io.Discard, Environ: []string{"CNI_COMMAND=ADD", "CNI_NETNS=/run/netns/x"}}
	if code := r.CNI(context.Background(), "bridge"); code != 1 || len(rec.cmds) != 1 {
		t.Errorf("exit %d after %d host runs", code, len(rec.cmds))
	}
	var res struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Code != 999 || !strings.Contains(res.Msg, "/run/netns/x") {
		t.Errorf("CNI error result %q: %v", out.String(), err)
	}
	if code := r.CNI(context.Background(), "../evil"); code != 1 {
		t.Errorf("bad plugin name ran: %d", code)
	}
}

func TestMountRunsOnHostOnlyForSharedTargets(t *testing.T) {
	rec := &recorder{code: 7}
	r := &Runner{Config: rexec.WrapperConfig{SharedPrefixes: []string{"/var/lib/kubelet"}, HostMount: "/usr/bin/mount"}, Run: rec.run, Cwd: "/"}
	if code, remote := r.Mount(context.Background(), []string{"-t", "tmpfs", "tmpfs", "/var/lib/kubelet/pods/p"}); !remote || code != 7 {
		t.Errorf("shared target: remote=%v code=%d", remote, code)
	}
	if _, remote := r.Mount(context.Background(), []string{"-t", "tmpfs", "tmpfs", "/mnt"}); remote {
		t.Error("local target ran on the host")
	}
	if len(rec.cmds) != 1 || rec.cmds[0].Path != "/usr/bin/mount" || rec.cmds[0].Args[3] != "/var/lib/kubelet/pods/p" {
		t.Errorf("host runs %+v", rec.cmds)
	}
}

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	bin, cni := filepath.Join(dir, "bin"), filepath.Join(dir, "cni")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(bin, 0o755))
	must(os.WriteFile(filepath.Join(bin, "mount"), []byte("\x7fELF real mount"), 0o755))
	opts := InstallOptions{Dir: bin, CNIDir: cni, CNIPlugins: []string{"bridge", "host-local"}, Rexec: "/usr/local/bin/rexec"}
	if _, err := Install(opts); err == nil || !strings.Contains(err.Error(), "not a wrapper") {
		t.Fatalf("overwrote a real binary: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(bin, "mount")); string(b) != "\x7fELF real mount" {
		t.Fatal("real binary changed")
	}
	must(os.Remove(filepath.Join(bin, "mount")))
	written, err := Install(opts)
	must(err)
	if len(written) != 5 {
		t.Errorf("wrote %q", written)
	}
	// Reinstalling over our own wrappers is fine.
	opts.Rexec = "/opt/rexec"
	if _, err := Install(opts); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(cni, "bridge"))
	must(err)
	st, _ := os.Stat(filepath.Join(cni, "bridge"))
	if !strings.Contains(string(b), `"${REXEC_BIN:-/opt/rexec}" wrap cni`) || strings.Contains(string(b), "@REXEC@") || st.Mode().Perm() != 0o755 {
		t.Errorf("bridge wrapper %o:\n%s", st.Mode().Perm(), b)
	}
	if _, err := Install(InstallOptions{Dir: bin, Rexec: "rexec"}); err == nil {
		t.Error("relative rexec path accepted")
	}
	if _, err := Install(InstallOptions{CNIDir: cni, CNIPlugins: []string{"../x"}, Rexec: "/r"}); err == nil {
		t.Error("plugin name with a slash accepted")
	}
}

func TestModprobeRunsOnHost(t *testing.T) {
	rec := &recorder{code: 0}
	r := &Runner{Config: rexec.WrapperConfig{HostModprobe: "/usr/sbin/modprobe"}, Run: rec.run}
	if code := r.Modprobe(context.Background(), []string{"-q", "overlay"}); code != 0 {
		t.Fatal(code)
	}
	if len(rec.cmds) != 1 || rec.cmds[0].Path != "/usr/sbin/modprobe" || !slices.Equal(rec.cmds[0].Args, []string{"-q", "overlay"}) {
		t.Errorf("host runs %+v", rec.cmds)
	}
}
