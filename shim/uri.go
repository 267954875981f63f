package shim

import (
	"fmt"
	"net/url"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// Stdio kinds, from the URI containerd hands the shim for stdout (the same
// URI rules apply to stderr; stdin is always a FIFO path or empty).
const (
	stdioNull     = "null"      // every stream empty: /dev/null on the host
	stdioFIFO     = "fifo"      // a path (or fifo:// URI) to a DPU-local FIFO or file
	stdioBinary   = "binary"    // binary:///path?args: a logger binary on the DPU
	stdioBinaryV2 = "binary-v2" // binary-v2://: as binary, but the logger must write a ready byte
	stdioFile     = "file"      // file:///path: stdout and stderr appended to one DPU file
)

// stdioSpec is a process's stdio as containerd described it.
type stdioSpec struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

func (s stdioSpec) isNull() bool { return s.Stdin == "" && s.Stdout == "" && s.Stderr == "" }

// stdioTarget is the parsed form of a stdioSpec.
type stdioTarget struct {
	kind string
	// uri is set for binary, binary-v2 and file kinds.
	uri *url.URL
	// stdin, stdout, stderr are FIFO (or plain file) paths for the fifo kind;
	// stdin is also used with the other kinds.
	stdin, stdout, stderr string
	terminal              bool
}

// parseStdio classifies the URIs of a Create or Exec request the way the runc
// shim does (a URI without scheme is a FIFO path).
func parseStdio(s stdioSpec) (*stdioTarget, error) {
	t := &stdioTarget{stdin: s.Stdin, terminal: s.Terminal}
	if s.isNull() {
		t.kind = stdioNull
		return t, nil
	}
	if s.Stdin != "" && !filepath.IsAbs(s.Stdin) {
		return nil, fmt.Errorf("%w: stdin %q is not an absolute FIFO path", errdefs.ErrInvalidArgument, s.Stdin)
	}
	if s.Stdout == "" && s.Stderr == "" {
		t.kind = stdioFIFO
		return t, nil
	}
	ref := s.Stdout
	if ref == "" {
		ref = s.Stderr
	}
	u, err := url.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: stdio uri %q: %w", errdefs.ErrInvalidArgument, ref, err)
	}
	switch u.Scheme {
	case "", "fifo":
		t.kind = stdioFIFO
		for _, p := range []struct {
			in  string
			out *string
		}{{s.Stdout, &t.stdout}, {s.Stderr, &t.stderr}} {
			if p.in == "" {
				continue
			}
			path, err := fifoPath(p.in)
			if err != nil {
				return nil, err
			}
			*p.out = path
		}
	case stdioBinary, stdioBinaryV2:
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("%w: %s uri %q: logger path must be absolute", errdefs.ErrInvalidArgument, u.Scheme, ref)
		}
		t.kind, t.uri = u.Scheme, u
	case stdioFile:
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("%w: file uri %q: path must be absolute", errdefs.ErrInvalidArgument, ref)
		}
		t.kind, t.uri = stdioFile, u
	default:
		return nil, fmt.Errorf("%w: unknown stdio scheme %q", errdefs.ErrNotImplemented, u.Scheme)
	}
	if t.terminal && t.kind == stdioFIFO && t.stderr != "" {
		// A console has one output; containerd passes no stderr with a
		// terminal, and the runc shim ignores one if given.
		t.stderr = ""
	}
	return t, nil
}

func fifoPath(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: stdio uri %q: %w", errdefs.ErrInvalidArgument, s, err)
	}
	p := s
	if u.Scheme == "fifo" {
		p = u.Path
	} else if u.Scheme != "" {
		return "", fmt.Errorf("%w: stdout and stderr use different schemes (%q)", errdefs.ErrInvalidArgument, s)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%w: stdio path %q is not absolute", errdefs.ErrInvalidArgument, s)
	}
	return p, nil
}

// streams says which host streams the agent must create and the shim attach.
func (t *stdioTarget) streams() (stdin, stdout, stderr bool) {
	switch t.kind {
	case stdioNull:
		return false, false, false
	case stdioFIFO:
		return t.stdin != "", t.stdout != "", t.stderr != "" && !t.terminal
	default: // binary, binary-v2, file: both outputs go to the logger/file
		return t.stdin != "", true, !t.terminal
	}
}
