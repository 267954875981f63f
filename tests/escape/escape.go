// Package escape is a path-escape corpus for a mounted export: it tries to
// make the file server act on host paths outside the exported directory and
// checks, natively on the host side, that nothing outside was touched.
//
// A FUSE client's kernel resolves symlinks and ".." itself, so the escapes
// that matter are the server's: a server that keeps host path strings for
// its nodes follows a symlink that the host swapped in after the client
// looked the name up, or that the client only named (lchown, lsetxattr,
// link). The corpus therefore prepares traps on the host side of the export
// (symlinks leading out, files and directories swapped for such symlinks
// between the client's lookup and its operation, and a swap loop racing a
// client walk), then performs operations through the mount and compares
// recursive snapshots of the outside directory (type, mode, owner, size,
// content hash, link count, xattrs, mtime, ctime, new entries) taken before
// and after each case.
//
// Use from an end-to-end test (the test process must see both the mount and
// the host directories):
//
//	base := t.TempDir()
//	export := filepath.Join(base, "export")    // exported by the server
//	outside := filepath.Join(base, "outside")  // empty, next to the export
//	mnt := filepath.Join(base, "m", "n", "t")  // NOT a sibling of export (see below)
//	// ... serve export, mount it at mnt ...
//	escape.Run(t, mnt, export, outside)               // writable export
//	escape.RunReadOnly(t, mntRO, exportRO, outside)   // :ro export: EROFS, nothing changes
//	escape.RunLayout(t, escape.Layout{..., NoDev: true}) // devices refused
//
// Layout rule: a relative symlink "../outside/x" in the export must not lead
// to the real outside directory when the client kernel follows it from the
// mount, or the client (not the server) legitimately reaches it. Run checks
// this and fails with an explanation; put the mount point at a different
// depth than the export (e.g. base/m/n/t). Absolute symlinks to the outside
// directory are followed client-side only when the outside directory is not
// visible to the client at that path (e.g. in the testbed's DPU side);
// otherwise those client-followed steps are skipped and logged, and only
// the no-follow steps (which the server alone handles) run.
//
// The outside directory is owned by the corpus: its contents are replaced
// by sentinels before every case.
package escape

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Layout names the three directories of one export.
type Layout struct {
	Mount      string // the export's mount point (client side)
	HostExport string // the exported directory, native host path
	Outside    string // an empty host directory outside the export
	// ReadOnly: the export is read-only; run the write-refusal corpus.
	ReadOnly bool
	// NoDev: the export refuses device nodes; mknod of char/block devices
	// through the mount must fail and create nothing on the host.
	NoDev bool
	// RaceFor bounds each race loop (default 3s).
	RaceFor time.Duration
}

// Report is the outcome of one case.
type Report struct {
	Case string
	// Violations are escapes or missing refusals; empty means the case passed.
	Violations []string
	// Notes record what each operation returned, for the log.
	Notes   []string
	Skipped string
}

// Run runs the corpus for a writable export and fails t for every violation.
func Run(t *testing.T, mnt, hostExportDir, outsideDir string) {
	t.Helper()
	RunLayout(t, Layout{Mount: mnt, HostExport: hostExportDir, Outside: outsideDir})
}

// RunReadOnly runs the corpus for a read-only export: every modifying
// operation must fail with EROFS and the host export must stay unchanged.
func RunReadOnly(t *testing.T, mnt, hostExportDir, outsideDir string) {
	t.Helper()
	RunLayout(t, Layout{Mount: mnt, HostExport: hostExportDir, Outside: outsideDir, ReadOnly: true})
}

// RunLayout runs the corpus described by l, one subtest per case.
func RunLayout(t *testing.T, l Layout) {
	t.Helper()
	if err := l.check(); err != nil {
		t.Fatalf("escape: %v", err)
	}
	for _, c := range l.cases() {
		t.Run(c.name, func(t *testing.T) {
			rep := l.runCase(c)
			for _, n := range rep.Notes {
				t.Log(n)
			}
			if rep.Skipped != "" {
				t.Skip(rep.Skipped)
			}
			for _, v := range rep.Violations {
				t.Errorf("ESCAPE: %s", v)
			}
		})
	}
}

// Probe runs every case and returns the reports without a testing.T.
func Probe(l Layout) ([]Report, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	var reps []Report
	for _, c := range l.cases() {
		reps = append(reps, l.runCase(c))
	}
	return reps, nil
}

type escapeCase struct {
	name string
	fn   func(c *caseRun)
}

func (l Layout) cases() []escapeCase {
	if l.ReadOnly {
		return []escapeCase{{"read-only-export", caseReadOnly}}
	}
	cs := []escapeCase{
		{"dotdot-walk", caseDotDot},
		{"symlink-relative-out", caseRelLink},
		{"symlink-absolute-out", caseAbsLink},
		{"file-swapped-for-symlink", caseSwapFile},
		{"open-fd-after-swap", caseSwapFd},
		{"dir-swapped-for-symlink-race", caseSwapDirRace},
		{"hardlink-out", caseHardlinkOut},
		{"rename-out", caseRenameOut},
	}
	if l.NoDev {
		cs = append(cs, escapeCase{"mknod-device-nodev", caseNoDev})
	}
	return cs
}

func (l *Layout) check() error {
	if l.RaceFor == 0 {
		l.RaceFor = 3 * time.Second
	}
	for _, d := range []string{l.Mount, l.HostExport, l.Outside} {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("layout: %q is not absolute", d)
		}
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return fmt.Errorf("layout: %q is not a directory (%v)", d, err)
		}
	}
	if strings.HasPrefix(l.Outside+"/", l.HostExport+"/") {
		return fmt.Errorf("layout: outside dir %s is inside the export %s", l.Outside, l.HostExport)
	}
	// A relative link from a case dir in the export to the outside dir,
	// followed by the client from the mount, must not reach it.
	rel, err := filepath.Rel(filepath.Join(l.HostExport, "case"), l.Outside)
	if err != nil {
		return fmt.Errorf("layout: %w", err)
	}
	clientView := filepath.Join(l.Mount, "case", rel)
	if _, err := os.Lstat(clientView); err == nil || clientView == l.Outside {
		return fmt.Errorf("layout: the relative link %q from the mount resolves (client side) to %s, which exists: "+
			"the client kernel would reach it without the server; mount at a different depth than the export "+
			"(e.g. <base>/m/n/t for <base>/export)", rel, clientView)
	}
	return nil
}

// caseRun is one case in progress.
type caseRun struct {
	l          Layout
	name       string
	mnt        string // Mount/<case>
	host       string // HostExport/<case>
	relOut     string // relative path from host to Outside
	outVisible bool   // Outside is reachable by the client at its host path
	rep        *Report
}

func (l Layout) runCase(ec escapeCase) Report {
	rep := Report{Case: ec.name}
	c := &caseRun{l: l, name: ec.name, host: filepath.Join(l.HostExport, ec.name), mnt: filepath.Join(l.Mount, ec.name), rep: &rep}
	if err := resetOutside(l.Outside); err != nil {
		rep.Violations = append(rep.Violations, "setup outside: "+err.Error())
		return rep
	}
	os.RemoveAll(c.host)
	if err := os.MkdirAll(c.host, 0o755); err != nil {
		rep.Violations = append(rep.Violations, "setup export: "+err.Error())
		return rep
	}
	c.relOut, _ = filepath.Rel(c.host, l.Outside)
	c.outVisible = sameFileAsHost(l.Outside)
	watch := l.Outside
	label := "outside"
	if l.ReadOnly {
		watch, label = l.HostExport, "export"
	}
	var before snapshot
	var err error
	// The read-only case populates the export before watching it.
	if !l.ReadOnly {
		if before, err = takeSnapshot(watch); err != nil {
			rep.Violations = append(rep.Violations, "snapshot: "+err.Error())
			return rep
		}
	}
	ec.fn(c)
	if l.ReadOnly {
		return rep // caseReadOnly compares its own snapshots
	}
	after, err := takeSnapshot(watch)
	if err != nil {
		rep.Violations = append(rep.Violations, "snapshot after: "+err.Error())
		return rep
	}
	rep.Violations = append(rep.Violations, before.diff(after, label)...)
	if n := len(rep.Violations); n > maxViolations {
		rep.Violations = append(rep.Violations[:maxViolations], fmt.Sprintf("... and %d more", n-maxViolations))
	}
	return rep
}

// maxViolations caps a report (a race can leave thousands of entries).
const maxViolations = 25

// sameFileAsHost reports whether the client can see the outside directory
// at its host path. The test process is both; in a split setup (client in
// other mount namespace) this is false and absolute links are fully tested.
func sameFileAsHost(p string) bool {
	_, err := os.Stat(filepath.Join(p, "sentinel"))
	return err == nil
}

var sentinelTime = []unix.Timespec{{Sec: 1000000000}, {Sec: 1000000000}}

// resetOutside fills Outside with fresh sentinels with fixed times.
func resetOutside(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	files := map[string]string{
		"sentinel":       "SENTINEL: must never change\n",
		"inner":          "outside twin of an export file\n",
		"sentdir/inner":  "outside twin in a directory\n",
		"sentdir/victim": "victim\n",
	}
	if err := os.Mkdir(filepath.Join(dir, "sentdir"), 0o755); err != nil {
		return err
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
			return err
		}
		if err := os.Chmod(p, 0o640); err != nil {
			return err
		}
	}
	for _, name := range []string{"sentinel", "inner", "sentdir/inner", "sentdir/victim", "sentdir"} {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, name), sentinelTime, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dir, sentinelTime, 0)
}

func (c *caseRun) note(format string, args ...any) {
	c.rep.Notes = append(c.rep.Notes, fmt.Sprintf(format, args...))
}

func (c *caseRun) violation(format string, args ...any) {
	c.rep.Violations = append(c.rep.Violations, fmt.Sprintf(format, args...))
}

// hostFile writes a regular file in the case's host directory.
func (c *caseRun) hostFile(name, data string) {
	p := filepath.Join(c.host, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		c.violation("setup %s: %v", name, err)
	}
}

// hostSymlink creates (replacing) a symlink in the case's host directory.
func (c *caseRun) hostSymlink(name, target string) {
	p := filepath.Join(c.host, name)
	os.Remove(p)
	if err := os.Symlink(target, p); err != nil {
		c.violation("setup symlink %s: %v", name, err)
	}
}

// op is one client operation on a path through the mount.
type op struct {
	name string
	fn   func(p string) error
}

// fileOps modify a file at p (following a final symlink, as the calls do).
var fileOps = []op{
	{"open O_WRONLY|O_TRUNC + write", func(p string) error {
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_TRUNC|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_, err = unix.Write(fd, []byte("ESCAPED"))
		return err
	}},
	{"open O_APPEND + write", func(p string) error {
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_, err = unix.Write(fd, []byte("ESCAPED"))
		return err
	}},
	{"chmod 0777", func(p string) error { return unix.Chmod(p, 0o777) }},
	{"chown 4321:4321", func(p string) error { return unix.Chown(p, 4321, 4321) }},
	{"truncate 1", func(p string) error { return unix.Truncate(p, 1) }},
	{"utimensat now", func(p string) error { return unix.UtimesNanoAt(unix.AT_FDCWD, p, nil, 0) }},
	{"setxattr user.escaped", func(p string) error { return unix.Setxattr(p, "user.escaped", []byte("1"), 0) }},
	{"setxattr trusted.escaped", func(p string) error { return unix.Setxattr(p, "trusted.escaped", []byte("1"), 0) }},
}

// noFollowOps act on a symlink itself; a server must never apply them to
// what the link points at.
var noFollowOps = []op{
	{"lchown 4321:4321", func(p string) error { return unix.Lchown(p, 4321, 4321) }},
	{"utimensat AT_SYMLINK_NOFOLLOW", func(p string) error {
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Sec: 5}, {Sec: 5}}, unix.AT_SYMLINK_NOFOLLOW)
	}},
	{"lsetxattr trusted.escaped", func(p string) error { return unix.Lsetxattr(p, "trusted.escaped", []byte("1"), 0) }},
	{"lremovexattr trusted.escaped", func(p string) error { return unix.Lremovexattr(p, "trusted.escaped") }},
	{"fchmodat AT_SYMLINK_NOFOLLOW 0777", func(p string) error {
		return unix.Fchmodat(unix.AT_FDCWD, p, 0o777, unix.AT_SYMLINK_NOFOLLOW)
	}},
	{"linkat (no follow) to new name", func(p string) error {
		return unix.Linkat(unix.AT_FDCWD, p, unix.AT_FDCWD, p+".hardlink", 0)
	}},
	{"rename within the export", func(p string) error {
		if err := unix.Rename(p, p+".renamed"); err != nil {
			return err
		}
		return unix.Rename(p+".renamed", p)
	}},
	{"open O_PATH|O_NOFOLLOW + fchownat AT_EMPTY_PATH", func(p string) error {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Fchownat(fd, "", 4321, 4321, unix.AT_EMPTY_PATH)
	}},
}

// dirOps create or move things inside a directory at p.
func dirOps(c *caseRun, i int) []op {
	return []op{
		{"create file in it", func(p string) error {
			fd, err := unix.Open(filepath.Join(p, fmt.Sprintf("created-%d", i)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"mkdir in it", func(p string) error { return unix.Mkdir(filepath.Join(p, fmt.Sprintf("mkdir-%d", i)), 0o755) }},
		{"symlink in it", func(p string) error { return unix.Symlink("x", filepath.Join(p, fmt.Sprintf("symlink-%d", i))) }},
		{"mkfifo in it", func(p string) error { return unix.Mkfifo(filepath.Join(p, fmt.Sprintf("fifo-%d", i)), 0o644) }},
		{"chmod inner 0777", func(p string) error { return unix.Chmod(filepath.Join(p, "inner"), 0o777) }},
		{"truncate inner", func(p string) error { return unix.Truncate(filepath.Join(p, "inner"), 0) }},
		{"setxattr inner", func(p string) error {
			return unix.Setxattr(filepath.Join(p, "inner"), "user.escaped", []byte("1"), 0)
		}},
		{"rename a file into it", func(p string) error {
			src := filepath.Join(c.mnt, fmt.Sprintf("mover-%d", i))
			if err := os.WriteFile(src, []byte("moved"), 0o644); err != nil {
				return fmt.Errorf("prepare: %w", err)
			}
			return unix.Rename(src, filepath.Join(p, fmt.Sprintf("moved-%d", i)))
		}},
		{"hard-link a file into it", func(p string) error {
			return unix.Link(filepath.Join(c.mnt, "keep"), filepath.Join(p, fmt.Sprintf("hardlink-%d", i)))
		}},
		{"rename inner out of it", func(p string) error {
			return unix.Rename(filepath.Join(p, "inner"), filepath.Join(c.mnt, fmt.Sprintf("stolen-%d", i)))
		}},
	}
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}
