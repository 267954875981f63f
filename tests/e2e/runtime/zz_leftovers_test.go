//go:build e2e

package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestZZNoLeftovers runs last (go test runs the files in name order, tests
// in source order): after delete, no host mount,
// bundle, runc state, cgroup or process of any container the suite ran.
func TestZZNoLeftovers(t *testing.T) {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runtimes {
		for _, id := range usedIDs[r.name] {
			if strings.Contains(string(mounts), "/"+id+"/") || strings.Contains(string(mounts), "/"+id+" ") {
				t.Errorf("%s: a host mount of %s is left", r.name, id)
			}
			for _, d := range r.hostDirs {
				if _, err := os.Stat(filepath.Join(d, id)); err == nil {
					t.Errorf("%s: %s/%s is left", r.name, d, id)
				}
			}
			for _, ctrl := range []string{"memory", "pids", "cpu", "freezer"} {
				matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ctrl, "*", id))
				for _, m := range matches {
					t.Errorf("%s: cgroup %s is left", r.name, m)
				}
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	marker := fmt.Sprintf("4242%d", os.Getpid())
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), marker) {
			t.Errorf("process %s (%q) is left", p, b)
		}
	}
}
