package rexec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
)

// ServerConfig configures a rexec server. offload-agent embeds it as its
// [rexec] table, `rexec serve --config` reads the same table:
//
//	[[rexec.allow]]
//	path = "/usr/lib/cni/bridge"
//
//	[[rexec.allow]]
//	path = "/usr/bin/mount"
//	args = ["-t", "tmpfs", "tmpfs", "/var/lib/kubelet/.*"]
//	uid = 0
type ServerConfig struct {
	// Allow lists the binaries clients may run. Nothing else runs.
	Allow []AllowRule `toml:"allow"`
}

// AllowRule allows one binary, optionally restricted to argument patterns
// and run under another user.
type AllowRule struct {
	// Path is the absolute path of the binary. Symlinks are resolved on both
	// sides: a request is allowed when its path resolves to the file this
	// path resolves to.
	Path string `toml:"path"`
	// Args, when present, restricts argv[1:]: the i-th argument must match the
	// i-th pattern (Go RE2 syntax, anchored at both ends) and the counts must
	// be equal. An empty list allows no arguments; no list allows any.
	Args []string `toml:"args,omitempty"`
	// Variadic lets the last Args pattern match every remaining argument
	// (zero or more of them).
	Variadic bool `toml:"variadic,omitempty"`
	// UID and GID, when set, are the credentials the process runs with
	// (supplementary groups are dropped). Unset: the server's own.
	UID *uint32 `toml:"uid,omitempty"`
	GID *uint32 `toml:"gid,omitempty"`
}

// Exit codes of refusals, as a shell reports them.
const (
	ExitNotAllowed = 126
	ExitNotFound   = 127
)

// RefusedError is a request the server did not run: not allowed (126), not
// found (127), or not startable (126).
type RefusedError struct {
	Code    int
	Message string
}

func (e *RefusedError) Error() string { return e.Message }

// Is lets callers test refusals with errdefs.
func (e *RefusedError) Is(target error) bool {
	switch e.Code {
	case ExitNotFound:
		return target == errdefs.ErrNotFound
	default:
		return target == errdefs.ErrPermissionDenied
	}
}

func notAllowed(format string, a ...any) error {
	return &RefusedError{Code: ExitNotAllowed, Message: fmt.Sprintf(format, a...)}
}

// rule is a validated AllowRule.
type rule struct {
	AllowRule
	args []*regexp.Regexp
}

// allowlist checks requests against the configured rules.
type allowlist struct {
	rules []rule
}

func newAllowlist(rules []AllowRule) (*allowlist, error) {
	a := &allowlist{}
	for i, r := range rules {
		if !filepath.IsAbs(r.Path) {
			return nil, fmt.Errorf("rexec allow rule %d: path %q is not absolute: %w", i, r.Path, errdefs.ErrInvalidArgument)
		}
		if r.Variadic && len(r.Args) == 0 {
			return nil, fmt.Errorf("rexec allow rule %d (%s): variadic needs at least one args pattern: %w", i, r.Path, errdefs.ErrInvalidArgument)
		}
		v := rule{AllowRule: r}
		v.Path = filepath.Clean(r.Path)
		for _, p := range r.Args {
			re, err := regexp.Compile(`^(?:` + p + `)$`)
			if err != nil {
				return nil, fmt.Errorf("rexec allow rule %d (%s): args pattern %q: %v: %w", i, r.Path, p, err, errdefs.ErrInvalidArgument)
			}
			v.args = append(v.args, re)
		}
		a.rules = append(a.rules, v)
	}
	return a, nil
}

// allowed is the outcome of a successful check.
type allowed struct {
	resolved string // the binary to execute, symlinks resolved
	rule     *rule
}

// check decides whether path may run with args. It resolves symlinks in the
// requested path and in every rule's path, so a symlink to a binary that is
// not allowed is refused and a request through a symlink to an allowed
// binary is accepted. A missing binary is reported as not found (127) only
// when its requested path names a rule, so clients cannot probe the host's
// file system through the exit code.
func (a *allowlist) check(path string, args []string) (*allowed, error) {
	if !filepath.IsAbs(path) {
		return nil, notAllowed("rexec: %q: not an absolute path", path)
	}
	if strings.IndexByte(path, 0) >= 0 {
		return nil, notAllowed("rexec: path contains a NUL byte")
	}
	clean := filepath.Clean(path)
	resolved, err := filepath.EvalSymlinks(clean)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && a.names(clean) {
			return nil, &RefusedError{Code: ExitNotFound, Message: fmt.Sprintf("rexec: %s: not found", path)}
		}
		return nil, notAllowed("rexec: %s: not allowed", path)
	}
	var argsRefused bool
	for i := range a.rules {
		r := &a.rules[i]
		target, err := filepath.EvalSymlinks(r.Path)
		if err != nil || target != resolved {
			continue
		}
		if !r.matchArgs(args) {
			argsRefused = true
			continue
		}
		st, err := os.Stat(resolved)
		if err != nil {
			return nil, notAllowed("rexec: %s: %v", path, err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return nil, notAllowed("rexec: %s: not an executable file", path)
		}
		return &allowed{resolved: resolved, rule: r}, nil
	}
	if argsRefused {
		return nil, notAllowed("rexec: %s: arguments not allowed", path)
	}
	if resolved != clean {
		return nil, notAllowed("rexec: %s (resolves to %s): not allowed", path, resolved)
	}
	return nil, notAllowed("rexec: %s: not allowed", path)
}

// names reports whether some rule's path is p as written.
func (a *allowlist) names(p string) bool {
	for _, r := range a.rules {
		if r.Path == p {
			return true
		}
	}
	return false
}

func (r *rule) matchArgs(args []string) bool {
	if r.Args == nil {
		return true
	}
	n := len(r.args)
	if r.Variadic {
		if len(args) < n-1 {
			return false
		}
	} else if len(args) != n {
		return false
	}
	for i, a := range args {
		re := r.args[min(i, n-1)]
		if !re.MatchString(a) {
			return false
		}
	}
	return true
}
