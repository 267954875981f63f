package qtfs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKillSuidgid: an unprivileged write, truncate or O_TRUNC open and any
// chown clear setuid (and setgid when group-executable) as on a local file
// system; root's writes keep them. The mount handles this itself
// (FUSE_HANDLE_KILLPRIV_V2), so compare with a native directory.
func TestKillSuidgid(t *testing.T) {
	tb := newTestbed(t, tbOpts{})
	must(t, os.Chmod(tb.export, 0o777))
	for d := filepath.Dir(tb.mnt); d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		must(t, os.Chmod(d, 0o755))
	}
	native := filepath.Join(filepath.Dir(tb.mnt), "native")
	must(t, os.Mkdir(native, 0o755))
	asUser := func(t *testing.T, script, dir string) {
		t.Helper()
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s as uid 1000: %v %s", script, err, out)
		}
	}
	cases := []struct {
		name, script string
		mode         uint32
		root         func(p string) error
	}{
		{"write", "printf x >> f", 0o6777, nil},
		{"write-sgid-noexec", "printf x >> f", 0o6766, nil},
		{"truncate", "truncate -s 1 f", 0o4777, nil},
		{"otrunc", ": > f", 0o6777, nil},
		{"chown", "", 0o6755, func(p string) error { return unix.Chown(p, 1000, 1000) }},
		{"root-write", "", 0o6777, func(p string) error {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write([]byte("y"))
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got [2]uint32
			for i, base := range []string{native, tb.mnt} {
				dir := filepath.Join(base, c.name)
				must(t, os.Mkdir(dir, 0o777))
				must(t, os.Chmod(dir, 0o777))
				p := filepath.Join(dir, "f")
				must(t, os.WriteFile(p, []byte("0123"), 0o644))
				must(t, unix.Chmod(p, c.mode))
				if c.root != nil {
					must(t, c.root(p))
				} else {
					asUser(t, c.script, dir)
				}
				var st unix.Stat_t
				must(t, unix.Stat(p, &st))
				got[i] = st.Mode & 0o7777
			}
			var hst unix.Stat_t
			must(t, unix.Stat(tb.host(filepath.Join(c.name, "f")), &hst))
			if got[1] != got[0] || hst.Mode&0o7777 != got[0] {
				t.Fatalf("mode after %s of %04o: native %04o, mount %04o, host %04o", c.name, c.mode, got[0], got[1], hst.Mode&0o7777)
			}
		})
	}
}
