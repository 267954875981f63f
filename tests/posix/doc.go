// Package posix is a POSIX conformance suite for file systems reached through a
// mount point (qtfs, a go-fuse loopback, sshfs), judged against the same
// operations on a native directory.
//
// The suite does not hard-code expected results. Run executes a fixed list of
// named cases in a directory and records, for every step, a normalised outcome:
// errno names ("ENOENT", "ok"), file types and permission bits, sizes, link
// counts, contents (or their SHA-256 when large), xattr names and values, and
// the ordering of timestamps — never inode numbers, device numbers of the
// backing file system, or absolute times. Two runs are then compared step by
// step; the reference run is the native directory the mount exports, so the
// reference and the mount sit on the same underlying file system and any
// difference is the mount's.
//
// Typical use from an end-to-end test of a FUSE file system:
//
//	hostDir := t.TempDir()           // exported natively
//	refDir  := t.TempDir()           // same file system, used natively as the reference
//	// ... mount hostDir at mnt ...
//	posix.Check(t, mnt, refDir)                  // every case must match
//	posix.CheckWith(t, mnt, refDir, posix.Options{
//		HostDir: hostDir,                        // also read results back natively (mmap, writes)
//		Known:   map[string]string{"deep-paths": "PATH_MAX limit, see issue N"},
//	})
//
// Both directories must exist, hold none of the case names, and sit on the
// same kind of file system. CheckWith chmods them 0777 and adds o+x to their
// parents (see Reachable) so the unprivileged uid (Options.NonRootUID,
// default 1000) can reach them. FUSE mounts must be mounted with allow_other,
// or the permission case is skipped on the mount only, which CheckWith
// reports as a difference. A case that did not run on either side (and is not
// in Options.Skip) fails the check: it proved nothing.
//
// Options.HostDir, when set, must be the host directory that mnt shows;
// cases then read durability-relevant results (mmap writes, pwrite, fsync,
// xattrs, mknod) back through it as well.
//
// Some cases need a second process (lock conflicts, a non-root caller, a
// private umask). The package re-executes the current binary
// (/proc/self/exe) with DPU_OFFLOAD_POSIX_CHILD set; an init function in this
// package recognises it, runs the requested operations and exits, so any test
// binary that imports the package can run the suite without a TestMain.
//
// The "mknod" case creates char and block device nodes (and an overlayfs
// whiteout, char 0:0): export with device nodes allowed (qtfs ":dev"), or
// expect that case to differ. CaseNames lists all cases.
//
// By hand against any mount: POSIX_MNT=... POSIX_REF=... [POSIX_HOSTDIR=...]
// [POSIX_KNOWN=a,b] [POSIX_GOFUSE=1] go test ./tests/posix -run TestExternal -v
//
// RunGoFusePosixtest runs go-fuse's own posixtest cases against a mount as
// subtests, with an explicit list of cases to skip.
package posix
