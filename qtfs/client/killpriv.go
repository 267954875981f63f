package client

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The mount negotiates FUSE_HANDLE_KILLPRIV_V2: the file system, not the
// kernel, clears setuid/setgid bits on write, truncate and chown. Without it
// the kernel asks for fresh attributes before every chown (to recompute the
// mode from possibly stale bits) — a round trip per file when containerd or
// tar, running as root, chowns each extracted file.
//
// The host server works as root (CAP_FSETID), so its own writes and
// truncates never clear the bits; its chown does (Linux clears setuid on
// chown for every caller, setgid when group-executable). The kernel marks
// the requests after which the bits must go (an unprivileged writer or
// truncater, any chown of a non-directory); the client then clears them with
// a setattr of its own, which is only needed when a bit is actually set.

// killSuidgidCap is the FUSE init capability requested by the mount.
const killSuidgidCap = fuse.CAP_HANDLE_KILLPRIV_V2

// suidgidToKill returns the mode without the bits a write, truncate or
// chown by the caller must clear, and whether any is set: setuid always,
// setgid when group-executable or when an unprivileged caller is not in the
// file's group (setattr_should_drop_sgid).
func suidgidToKill(mode, gid uint32, h *fuse.InHeader) (uint32, bool) {
	if mode&syscall.S_IFMT != syscall.S_IFREG {
		return mode, false
	}
	kill := uint32(syscall.S_ISUID)
	if mode&syscall.S_IXGRP != 0 || (mode&syscall.S_ISGID != 0 && h.Uid != 0 && !inGroup(h, gid)) {
		kill |= syscall.S_ISGID
	}
	if mode&kill == 0 {
		return mode, false
	}
	return mode &^ kill, true
}

// inGroup reports whether the calling process has gid as its fs gid or a
// supplementary group (from /proc; the FUSE daemon shares the caller's pid
// namespace). Asked only for a setgid, not group-executable file.
func inGroup(h *fuse.InHeader, gid uint32) bool {
	if h.Gid == gid {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.Pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if g, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, f := range strings.Fields(g) {
				if v, err := strconv.ParseUint(f, 10, 32); err == nil && uint32(v) == gid {
					return true
				}
			}
		}
	}
	return false
}

// killSuidgidKnown is killSuidgid with the node's last known mode and group.
func (fs *qfs) killSuidgidKnown(n *cnode, h *fuse.InHeader) (*qtfsv1.Attr, fuse.Status) {
	mg := n.modeGid.Load()
	return fs.killSuidgid(n, uint32(mg), uint32(mg>>32), h)
}

// killSuidgid clears n's setuid/setgid bits on the host if mode (its current
// mode as far as the client knows) has them, and returns the new attributes.
func (fs *qfs) killSuidgid(n *cnode, mode, gid uint32, h *fuse.InHeader) (*qtfsv1.Attr, fuse.Status) {
	nm, ok := suidgidToKill(mode, gid, h)
	if !ok {
		return nil, fuse.OK
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpSetAttr, Valid: fuse.FATTR_MODE, Mode: nm & 07777}
	rep, fr, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if !code.Ok() {
		return nil, code
	}
	fr.Release()
	n.noteAttr(&rep.Attr)
	a := rep.Attr
	return &a, fuse.OK
}
