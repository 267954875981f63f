// Package transport carries every connection between the DPU and the host:
// address syntax (unix, tcp, vsock), peer authentication (mTLS on TCP, a CID
// allowlist on vsock, 0600 unix sockets) and a one-line channel preface that
// lets one listener serve the runtime, stdio, qtfs and rexec channels.
package transport

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// Network names an address family.
const (
	NetworkUnix  = "unix"
	NetworkTCP   = "tcp"
	NetworkVsock = "vsock"
)

// Address is a parsed endpoint: unix:///abs/path.sock, tcp://IP:PORT or
// vsock://CID:PORT.
type Address struct {
	Network string
	// Path is the socket path (unix).
	Path string
	// Host and Port address a TCP endpoint; Port is also the vsock port.
	Host string
	Port uint32
	// CID is the vsock context ID.
	CID uint32
}

// ParseAddress parses an endpoint string. Errors name what was wrong.
func ParseAddress(s string) (Address, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Address{}, fmt.Errorf("address %q: want unix:///path, tcp://IP:PORT or vsock://CID:PORT", s)
	}
	switch scheme {
	case NetworkUnix:
		if rest == "" || !filepath.IsAbs(rest) {
			return Address{}, fmt.Errorf("address %q: unix socket path must be absolute", s)
		}
		if len(rest) > 107 {
			return Address{}, fmt.Errorf("address %q: unix socket path longer than 107 bytes", s)
		}
		return Address{Network: NetworkUnix, Path: filepath.Clean(rest)}, nil
	case NetworkTCP:
		u, err := url.Parse(s)
		if err != nil || u.Path != "" || u.User != nil || u.RawQuery != "" {
			return Address{}, fmt.Errorf("address %q: want tcp://IP:PORT", s)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return Address{}, fmt.Errorf("address %q: %w", s, err)
		}
		if host == "" {
			return Address{}, fmt.Errorf("address %q: missing host", s)
		}
		p, err := parsePort(port)
		if err != nil {
			return Address{}, fmt.Errorf("address %q: %w", s, err)
		}
		return Address{Network: NetworkTCP, Host: host, Port: p}, nil
	case NetworkVsock:
		cid, port, ok := strings.Cut(rest, ":")
		if !ok {
			return Address{}, fmt.Errorf("address %q: want vsock://CID:PORT", s)
		}
		c, err := strconv.ParseUint(cid, 10, 32)
		if err != nil {
			return Address{}, fmt.Errorf("address %q: bad CID %q", s, cid)
		}
		p, err := parsePort(port)
		if err != nil {
			return Address{}, fmt.Errorf("address %q: %w", s, err)
		}
		return Address{Network: NetworkVsock, CID: uint32(c), Port: p}, nil
	default:
		return Address{}, fmt.Errorf("address %q: unknown scheme %q (want unix, tcp or vsock)", s, scheme)
	}
}

func parsePort(s string) (uint32, error) {
	p, err := strconv.ParseUint(s, 10, 32)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint32(p), nil
}

// String returns the address in the syntax ParseAddress accepts.
func (a Address) String() string {
	switch a.Network {
	case NetworkUnix:
		return "unix://" + a.Path
	case NetworkTCP:
		return "tcp://" + net.JoinHostPort(a.Host, strconv.FormatUint(uint64(a.Port), 10))
	case NetworkVsock:
		return fmt.Sprintf("vsock://%d:%d", a.CID, a.Port)
	}
	return ""
}
