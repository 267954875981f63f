//go:build e2e

package qtfs

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkQtfs runs every workload once on every target in one process and
// prints a table of absolute times, ratios and the DESIGN.md §5 checks.
// Targets that cannot be set up (sshfs not installed, ./bin/qtfs missing)
// are skipped with a message; a missed target is printed as MISS and does
// not fail the benchmark.
func BenchmarkQtfs(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (tmpfs, FUSE, network namespaces, drop_caches)")
	}
	if b.N > 1 {
		b.Skip("run with -benchtime 1x: one pass takes minutes")
	}
	base, err := os.MkdirTemp("", "qtfs-bench-")
	if err != nil {
		b.Fatal(err)
	}
	// A private tmpfs: the exports, the layer tar and the mount points.
	if err := run("mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "qtfs-bench", base); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := run("umount", base); err != nil {
			b.Errorf("cleanup: %v", err)
			run("umount", "-l", base)
		}
		os.Remove(base)
	}()
	layer := filepath.Join(base, "layer.tar")
	if err := makeLayer(layer); err != nil {
		b.Fatalf("make layer: %v", err)
	}

	// QTFS_BENCH_TARGETS=native,loopback,... limits the run (default: all).
	want := map[string]bool{"native": true, "loopback": true, "sshfs": true, "qtfs": true, "qtfs-unix": true}
	if v := os.Getenv("QTFS_BENCH_TARGETS"); v != "" {
		want = map[string]bool{}
		for _, n := range strings.Split(v, ",") {
			want[strings.TrimSpace(n)] = true
		}
	}
	var targets []*target
	var notes []string
	if want["native"] {
		targets = append(targets, nativeTarget())
	}
	if want["loopback"] {
		targets = append(targets, loopbackTarget(base))
	}
	if want["sshfs"] || want["qtfs"] {
		np, err := newNetPair()
		if err != nil {
			notes = append(notes, "sshfs and qtfs skipped: network namespaces: "+err.Error())
		} else {
			defer np.close()
			if want["sshfs"] {
				if t, err := sshfsTarget(base, np); err != nil {
					notes = append(notes, "sshfs skipped: "+err.Error())
				} else {
					defer t.close()
					targets = append(targets, t)
				}
			}
			if want["qtfs"] {
				qexport := filepath.Join(base, "qtfs-export")
				os.MkdirAll(qexport, 0o755)
				if t, mode, err := qtfsTarget(base, np, qexport); err != nil {
					notes = append(notes, "qtfs SKIPPED: "+err.Error())
				} else {
					defer t.close()
					targets = append(targets, t)
					notes = append(notes, "qtfs over "+mode)
				}
			}
		}
	}

	if want["qtfs-unix"] {
		qexport := filepath.Join(base, "qtfs-unix-export")
		os.MkdirAll(qexport, 0o755)
		if t, err := qtfsUnixTarget(base, qexport); err != nil {
			notes = append(notes, "qtfs-unix SKIPPED: "+err.Error())
		} else {
			defer t.close()
			targets = append(targets, t)
			notes = append(notes, "qtfs-unix over a unix socket (no TLS, no TCP)")
		}
	}

	results := map[string]map[string]measure{}
	for _, t := range targets {
		export := filepath.Join(base, t.name+"-export")
		os.MkdirAll(export, 0o755)
		t0 := time.Now()
		results[t.name] = runTarget(t, export, layer)
		b.Logf("%s: all workloads in %v", t.name, time.Since(t0).Round(time.Millisecond))
		os.RemoveAll(export)
	}
	out := report(targets, results, notes)
	fmt.Print(out)
	if p := os.Getenv("QTFS_BENCH_REPORT"); p != "" {
		os.WriteFile(p, []byte(out), 0o644)
	}
	for _, t := range targets {
		for _, w := range workloads {
			if m := results[t.name][w]; m.err != nil {
				b.Errorf("%s / %s: %v", t.name, w, m.err)
			}
		}
	}
}

// runTarget runs the workloads on one target, each on a fresh mount where
// it must start cold.
func runTarget(t *target, export, layer string) map[string]measure {
	res := map[string]measure{}
	fail := func(err error) map[string]measure {
		for _, w := range workloads {
			if _, ok := res[w]; !ok {
				res[w] = measure{err: err}
			}
		}
		return res
	}
	if err := prepareExport(export); err != nil {
		return fail(fmt.Errorf("prepare export: %w", err))
	}
	// step mounts fresh (after dropping caches when cold) and runs fn.
	step := func(cold bool, fn func(mnt string)) error {
		if cold {
			dropCaches()
		}
		mnt, unmount, err := t.mount(export)
		if err != nil {
			return fmt.Errorf("mount: %w", err)
		}
		fn(mnt)
		return unmount()
	}
	steps := []struct {
		cold bool
		fn   func(mnt string)
	}{
		{false, func(m string) {
			res[wSeqWrite] = timeIt(func() (int64, int, error) { return seqWrite(filepath.Join(m, "big")) })
		}},
		{true, func(m string) {
			res[wSeqRead] = timeIt(func() (int64, int, error) { return seqRead(filepath.Join(m, "big")) })
		}},
		{true, func(m string) {
			res[wRandRead] = timeIt(func() (int64, int, error) { return randRead(filepath.Join(m, "big")) })
		}},
		{true, func(m string) {
			ps := treePaths(m)
			res[wStatCold] = timeIt(func() (int64, int, error) { return statAll(ps) })
			res[wStatWarm] = timeIt(func() (int64, int, error) { return statAll(ps) })
			res[wStatHit] = restat(ps)
		}},
		{true, func(m string) {
			res[wReaddir] = timeIt(func() (int64, int, error) { return readdirAll(filepath.Join(m, "flat")) })
		}},
		{true, func(m string) {
			res[wWalk] = timeIt(func() (int64, int, error) { return walk(filepath.Join(m, "tree")) })
		}},
		{false, func(m string) {
			res[wCreate] = timeIt(func() (int64, int, error) { return createAll(filepath.Join(m, "create")) })
		}},
		{false, func(m string) {
			res[wUntar] = timeIt(func() (int64, int, error) { return untar(layer, filepath.Join(m, "untar")) })
		}},
	}
	for _, s := range steps {
		if err := step(s.cold, s.fn); err != nil {
			return fail(err)
		}
	}
	// The host side must hold what went through the mount.
	if st, err := os.Stat(filepath.Join(export, "big")); err != nil || st.Size() != seqSize {
		res[wSeqWrite] = measure{err: fmt.Errorf("host side big file: %v (size %v)", err, st)}
	}
	if n := countFiles(filepath.Join(export, "untar")); n != layerFiles {
		m := res[wUntar]
		if m.err == nil {
			m.err = fmt.Errorf("host side has %d regular files from the layer, want %d", n, layerFiles)
		}
		res[wUntar] = m
	}
	if n := countFiles(filepath.Join(export, "create")); n != nFiles {
		m := res[wCreate]
		if m.err == nil {
			m.err = fmt.Errorf("host side has %d created files, want %d", n, nFiles)
		}
		res[wCreate] = m
	}
	return res
}

func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// cell formats one measurement: time, plus throughput or time per op.
func cell(m measure, ok bool) string {
	switch {
	case !ok:
		return "-"
	case m.err != nil:
		return "ERROR"
	case m.bytes > 0 && m.ops == 0:
		return fmt.Sprintf("%s %4.0f MB/s", dur(m.d), float64(m.bytes)/m.d.Seconds()/1e6)
	case m.ops > 0:
		return fmt.Sprintf("%s %6.1f µs/op", dur(m.d), float64(m.d.Microseconds())/float64(m.ops))
	}
	return dur(m.d)
}

func dur(d time.Duration) string {
	return fmt.Sprintf("%7.3fs", d.Seconds())
}

func ratio(a, b measure, okA, okB bool) string {
	if !okA || !okB || a.err != nil || b.err != nil || b.d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a.d.Seconds()/b.d.Seconds())
}

func report(targets []*target, res map[string]map[string]measure, notes []string) string {
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	names := []string{"native", "loopback", "sshfs", "qtfs", "qtfs-unix"}
	get := func(t, w string) (measure, bool) {
		m, ok := res[t][w]
		return m, ok
	}
	p("\n=== qtfs benchmark (export on tmpfs; sshfs/qtfs across a veth %s <- %s between two netns) ===\n", hostIP, dpuIP)
	for _, n := range notes {
		p("note: %s\n", n)
	}
	p("\nabsolute (wall time; MB/s or µs per operation)\n%-30s", "workload")
	for _, n := range names {
		p(" %22s", n)
	}
	p("\n")
	for _, w := range workloads {
		p("%-30s", w)
		for _, n := range names {
			m, ok := get(n, w)
			p(" %22s", cell(m, ok))
		}
		p("\n")
	}
	type cmp struct{ a, b string }
	p("\ntime ratios (>1 = slower than the baseline)\n%-30s", "workload")
	cols := []cmp{{"loopback", "native"}, {"sshfs", "native"}, {"qtfs", "native"}, {"qtfs", "loopback"}, {"qtfs", "sshfs"},
		{"qtfs-unix", "loopback"}, {"qtfs", "qtfs-unix"}}
	for _, c := range cols {
		p(" %19s", c.a+"/"+c.b)
	}
	p("\n")
	for _, w := range workloads {
		p("%-30s", w)
		for _, c := range cols {
			a, okA := get(c.a, w)
			bm, okB := get(c.b, w)
			p(" %19s", ratio(a, bm, okA, okB))
		}
		p("\n")
	}
	p("\nDESIGN.md §5 targets (checked for every FUSE target; only qtfs's count)\n")
	for _, n := range []string{"qtfs", "qtfs-unix", "loopback", "sshfs"} {
		if _, ok := res[n]; !ok {
			p("%-9s not measured\n", n)
			continue
		}
		for _, line := range checks(n, get) {
			p("%-9s %s\n", n, line)
		}
	}
	return sb.String()
}

func checks(n string, get func(t, w string) (measure, bool)) []string {
	var out []string
	verdict := func(name string, pass, known bool, detail string) {
		v := "MISS"
		if !known {
			v = "n/a "
		} else if pass {
			v = "PASS"
		}
		out = append(out, fmt.Sprintf("%s  %-42s %s", v, name, detail))
	}
	seq, okSeq := get(n, wSeqRead)
	seqOK := okSeq && seq.err == nil && seq.d > 0
	mbps := 0.0
	if seqOK {
		mbps = float64(seq.bytes) / seq.d.Seconds() / 1e6
	}
	verdict("uncached seq read >= 1 GB/s", mbps >= 1000, seqOK, fmt.Sprintf("%.0f MB/s", mbps))
	if n != "sshfs" {
		ss, ok := get("sshfs", wSeqRead)
		known := seqOK && ok && ss.err == nil
		sshMB := 0.0
		if known {
			sshMB = float64(ss.bytes) / ss.d.Seconds() / 1e6
		}
		verdict("uncached seq read >= 2x sshfs", known && mbps >= 2*sshMB, known, fmt.Sprintf("%.0f vs sshfs %.0f MB/s", mbps, sshMB))
	}
	type rule struct {
		name, w, base string
		max           float64
	}
	for _, r := range []rule{
		{"cold stat <= 1.5x loopback", wStatCold, "loopback", 1.5},
		{"warm stat <= 1.2x native", wStatWarm, "native", 1.2},
		{"10k walk <= 0.5x sshfs", wWalk, "sshfs", 0.5},
	} {
		if r.base == n {
			continue
		}
		a, okA := get(n, r.w)
		bm, okB := get(r.base, r.w)
		known := okA && okB && a.err == nil && bm.err == nil && bm.d > 0
		x := 0.0
		if known {
			x = a.d.Seconds() / bm.d.Seconds()
		}
		verdict(r.name, known && x <= r.max, known, fmt.Sprintf("%.2fx (%s vs %s)", x, dur(a.d), dur(bm.d)))
	}
	return out
}
