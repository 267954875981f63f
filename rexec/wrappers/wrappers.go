// Package wrappers holds the logic of the DPU-side wrappers that send host
// work through rexec (CNI plugins, mount/umount, modprobe) and installs their
// scripts (contrib/wrappers) with `offloadctl wrappers install`.
package wrappers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dpu-offload/offload/rexec"
)

// RunFunc runs cmd on the host and returns the shell-style exit code; errors
// (refusal, lost link) are reported by it on stderr and turned into a code.
type RunFunc func(ctx context.Context, cmd *rexec.Cmd) int

// Runner runs wrapped commands on the host.
type Runner struct {
	Config  rexec.WrapperConfig
	Run     RunFunc
	Environ []string // the wrapper's own environment
	Cwd     string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
}

// hostPath is the PATH given to host processes: helpers of mount and of
// CNI plugins (iptables, ip) are found through it.
const hostPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// CNI runs the CNI plugin named plugin on the host. The CNI_* environment and
// the network configuration on stdin go with it; CNI_PATH is replaced by the
// host's plugin directory, since a plugin there runs its IPAM plugin there.
// On ADD the host network namespace at CNI_NETNS is created first (same
// path on both sides); on DEL a netns-owning plugin removes it afterwards.
func (r *Runner) CNI(ctx context.Context, plugin string) int {
	if plugin == "" || strings.ContainsRune(plugin, '/') {
		return r.cniError(fmt.Sprintf("bad plugin name %q", plugin))
	}
	env := []string{hostPath}
	var command, netns string
	for _, kv := range r.Environ {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "CNI_PATH":
			continue
		case k == "CNI_COMMAND":
			command = v
		case k == "CNI_NETNS":
			netns = v
		}
		if strings.HasPrefix(k, "CNI_") {
			env = append(env, kv)
		}
	}
	env = append(env, "CNI_PATH="+r.Config.CNIHostDir)

	if command == "ADD" && netns != "" {
		if code := r.netns(ctx, "add", netns); code != 0 {
			return r.cniError(fmt.Sprintf("create host network namespace %s: helper exited %d", netns, code))
		}
	}
	code := r.Run(ctx, &rexec.Cmd{
		Path:   filepath.Join(r.Config.CNIHostDir, plugin),
		Env:    env,
		Dir:    "/",
		Stdin:  r.Stdin,
		Stdout: r.Stdout,
		Stderr: r.Stderr,
	})
	if command == "DEL" && netns != "" && code == 0 && slices.Contains(r.Config.NetnsOwners, plugin) {
		if c := r.netns(ctx, "del", netns); c != 0 {
			fmt.Fprintf(r.Stderr, "rexec cni wrapper: remove host network namespace %s: helper exited %d\n", netns, c)
		}
	}
	return code
}

func (r *Runner) netns(ctx context.Context, op, path string) int {
	return r.Run(ctx, &rexec.Cmd{
		Path:   r.Config.NetnsHelper,
		Args:   []string{"netns", op, path},
		Env:    []string{hostPath},
		Dir:    "/",
		Stdout: r.Stderr, // keep the plugin's stdout pure JSON
		Stderr: r.Stderr,
	})
}

// cniError reports a wrapper failure as the CNI spec's error result.
func (r *Runner) cniError(msg string) int {
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "code": 999, "msg": "rexec cni wrapper: " + msg})
	fmt.Fprintln(r.Stdout, string(b))
	return 1
}

// Mount runs `mount args…` on the host when its target lies beneath a
// shared prefix. It returns remote=false when the mount is local, for the
// caller to exec the DPU's own mount.
func (r *Runner) Mount(ctx context.Context, args []string) (code int, remote bool) {
	return r.mountLike(ctx, r.Config.HostMount, args, MountTarget)
}

// Umount is Mount for umount.
func (r *Runner) Umount(ctx context.Context, args []string) (code int, remote bool) {
	return r.mountLike(ctx, r.Config.HostUmount, args, UmountTarget)
}

func (r *Runner) mountLike(ctx context.Context, bin string, args []string, target func([]string) (string, bool)) (int, bool) {
	t, ok := target(args)
	if !ok || !IsShared(t, r.Cwd, r.Config.SharedPrefixes) {
		return 0, false
	}
	return r.Run(ctx, &rexec.Cmd{
		Path: bin, Args: args, Env: []string{hostPath}, Dir: r.Cwd,
		Stdin: nil, Stdout: r.Stdout, Stderr: r.Stderr,
	}), true
}

// Modprobe runs modprobe on the host: the DPU's modules are not the host's.
func (r *Runner) Modprobe(ctx context.Context, args []string) int {
	return r.Run(ctx, &rexec.Cmd{
		Path: r.Config.HostModprobe, Args: args, Env: []string{hostPath}, Dir: "/",
		Stdout: r.Stdout, Stderr: r.Stderr,
	})
}

// IsShared reports whether target (relative ones are taken from cwd) lies
// at or beneath one of prefixes.
func IsShared(target, cwd string, prefixes []string) bool {
	if !filepath.IsAbs(target) {
		if cwd == "" {
			return false
		}
		target = filepath.Join(cwd, target)
	}
	target = filepath.Clean(target)
	for _, p := range prefixes {
		p = filepath.Clean(p)
		if !filepath.IsAbs(p) {
			continue
		}
		if target == p || strings.HasPrefix(target, strings.TrimSuffix(p, "/")+"/") {
			return true
		}
	}
	return false
}

// Options of util-linux mount(8) and umount(8) that take a value as the
// next argument.
var (
	mountValueOpts = map[string]bool{
		"-t": true, "--types": true, "-o": true, "--options": true, "-O": true, "--test-opts": true,
		"-L": true, "--label": true, "-U": true, "--uuid": true, "-N": true, "--namespace": true,
		"-T": true, "--fstab": true, "--source": true, "--target": true, "--target-prefix": true,
		"--options-mode": true, "--options-source": true,
	}
	umountValueOpts = map[string]bool{
		"-t": true, "--types": true, "-O": true, "--test-opts": true, "-N": true, "--namespace": true,
	}
)

// MountTarget finds the mount point in mount(8) arguments: --target, or the
// last of the one or two operands. ok is false when there is none (mount -a,
// listing) or when the arguments are beyond what it understands.
func MountTarget(args []string) (string, bool) {
	return target(args, mountValueOpts, true)
}

// UmountTarget finds the mount point or device umount(8) acts on.
func UmountTarget(args []string) (string, bool) {
	return target(args, umountValueOpts, false)
}

func target(args []string, valueOpts map[string]bool, mount bool) (string, bool) {
	var operands []string
	var explicit string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			operands = append(operands, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			operands = append(operands, a)
			continue
		}
		name, val, hasVal := strings.Cut(a, "=")
		if strings.HasPrefix(a, "--") {
			if valueOpts[name] {
				if !hasVal {
					if i+1 >= len(args) {
						return "", false
					}
					i++
					val = args[i]
				}
				if name == "--target" {
					explicit = val
				}
			}
			if name == "--all" {
				return "", false
			}
			continue
		}
		// Short options, possibly grouped (-nt tmpfs, -ttmpfs): the first
		// one that takes a value consumes the rest of the word or the next
		// argument.
		for j := 1; j < len(a); j++ {
			opt := "-" + string(a[j])
			if opt == "-a" {
				return "", false
			}
			if valueOpts[opt] {
				if j+1 == len(a) {
					i++
				}
				break
			}
		}
	}
	if explicit != "" {
		return explicit, true
	}
	switch {
	case len(operands) == 1:
		return operands[0], true
	case len(operands) == 2 && mount:
		return operands[1], true
	}
	return "", false
}
