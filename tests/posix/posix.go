package posix

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Options tune a run. The zero value runs every case.
type Options struct {
	// Cases limits the run to these case names (see CaseNames); nil runs all.
	Cases []string
	// Skip leaves these cases out entirely (recorded as skipped, never compared).
	Skip []string
	// Known maps case names to the reason they are known to differ from the
	// reference. CheckWith logs such differences instead of failing, and fails
	// when a known case unexpectedly matches (so the list stays exact).
	Known map[string]string
	// HostDir, when set, is the directory that dir exports, seen natively.
	// Cases that check durability (mmap, write, fallocate, mknod) read their
	// results back through it as well as through dir.
	HostDir string
	// NonRootUID and NonRootGID are the credentials of the unprivileged
	// caller in permission cases (default 1000/1000).
	NonRootUID, NonRootGID uint32
	// CaseTimeout bounds one case (default 30s). A case that hangs (a stuck
	// FUSE request) is recorded as "TIMEOUT" and the run moves on.
	CaseTimeout time.Duration
}

// Step is one observation of a case: what was done and what came of it.
type Step struct {
	Op      string // e.g. "open O_CREAT|O_EXCL existing"
	Outcome string // e.g. "EEXIST", "ok", "mode=0644 size=3"
}

// Result is the outcome of one case.
type Result struct {
	Case  string
	Steps []Step
	// Skipped is non-empty when the case did not run (Options.Skip, or a
	// precondition such as the uid not reaching the directory).
	Skipped string
}

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "== %s\n", r.Case)
	if r.Skipped != "" {
		fmt.Fprintf(&b, "   skipped: %s\n", r.Skipped)
	}
	for _, s := range r.Steps {
		fmt.Fprintf(&b, "   %s => %s\n", s.Op, s.Outcome)
	}
	return b.String()
}

// Diff is a difference between the results of one case in two runs.
type Diff struct {
	Case string
	// Text is a readable, line-oriented diff: "-" lines from want (the
	// reference), "+" lines from got.
	Text string
}

func (d Diff) String() string {
	return fmt.Sprintf("case %s differs (-want native, +got mount):\n%s", d.Case, d.Text)
}

// CaseNames lists every case in run order.
func CaseNames() []string {
	names := make([]string, 0, len(cases))
	for _, c := range cases {
		names = append(names, c.name)
	}
	return names
}

// Run executes the cases in dir, each in its own fresh subdirectory named
// after the case, and returns one Result per case in CaseNames order. It
// never fails: every error becomes an outcome to compare. dir must exist.
func Run(dir string, opts Options) []Result {
	opts = opts.withDefaults()
	want := map[string]bool{}
	for _, n := range opts.Cases {
		want[n] = true
	}
	skip := map[string]bool{}
	for _, n := range opts.Skip {
		skip[n] = true
	}
	var results []Result
	for _, c := range cases {
		if len(want) > 0 && !want[c.name] {
			continue
		}
		if skip[c.name] {
			results = append(results, Result{Case: c.name, Skipped: "skipped by Options.Skip"})
			continue
		}
		results = append(results, runCase(dir, c, opts))
	}
	return results
}

func (o Options) withDefaults() Options {
	if o.NonRootUID == 0 {
		o.NonRootUID = 1000
	}
	if o.NonRootGID == 0 {
		o.NonRootGID = 1000
	}
	if o.CaseTimeout == 0 {
		o.CaseTimeout = 30 * time.Second
	}
	return o
}

func runCase(dir string, c testCase, opts Options) Result {
	caseDir := filepath.Join(dir, c.name)
	res := Result{Case: c.name}
	if err := os.Mkdir(caseDir, 0o777); err != nil {
		res.Steps = append(res.Steps, Step{"mkdir case dir", errName(err)})
		return res
	}
	// 0777 so the non-root child can work inside; chmod because of umask.
	_ = os.Chmod(caseDir, 0o777)
	r := &rec{dir: caseDir, opts: opts, name: c.name}
	if opts.HostDir != "" {
		r.hostDir = filepath.Join(opts.HostDir, c.name)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p := recover(); p != nil {
				r.add("panic", fmt.Sprint(p))
			}
		}()
		c.fn(r)
	}()
	select {
	case <-done:
	case <-time.After(opts.CaseTimeout):
		r.add("case", "TIMEOUT")
		res.Steps = r.snapshot()
		return res // leave the stuck goroutine and the directory behind
	}
	res.Steps = r.snapshot()
	res.Skipped = r.skipped
	// Best effort: the next run may reuse the parent directory.
	_ = os.RemoveAll(caseDir)
	return res
}

// Compare returns the cases whose steps differ between got (the mount) and
// want (the reference). Cases present in only one run are reported too;
// cases skipped in either run are not compared.
func Compare(got, want []Result) []Diff {
	wantBy := map[string]Result{}
	for _, r := range want {
		wantBy[r.Case] = r
	}
	seen := map[string]bool{}
	var diffs []Diff
	for _, g := range got {
		seen[g.Case] = true
		w, ok := wantBy[g.Case]
		if !ok {
			diffs = append(diffs, Diff{g.Case, "+ (case missing from the reference run)\n"})
			continue
		}
		switch {
		case g.Skipped != "" && w.Skipped != "":
			continue
		case g.Skipped != "":
			diffs = append(diffs, Diff{g.Case, fmt.Sprintf("+ (skipped on the mount only: %s)\n", g.Skipped)})
			continue
		case w.Skipped != "":
			diffs = append(diffs, Diff{g.Case, fmt.Sprintf("- (skipped in the reference only: %s)\n", w.Skipped)})
			continue
		}
		if t := diffSteps(w.Steps, g.Steps); t != "" {
			diffs = append(diffs, Diff{g.Case, t})
		}
	}
	for _, w := range want {
		if !seen[w.Case] {
			diffs = append(diffs, Diff{w.Case, "- (case missing from the mount run)\n"})
		}
	}
	return diffs
}

// diffSteps prints a unified-style diff of two step lists (longest common
// subsequence), with one line of context before each change.
func diffSteps(want, got []Step) string {
	n, m := len(want), len(got)
	// lcs[i][j] = length of the LCS of want[i:] and got[j:].
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if want[i] == got[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var b strings.Builder
	var prev *Step // last common step, printed as context once
	changed := false
	line := func(sign string, s Step) {
		if prev != nil && sign != " " {
			fmt.Fprintf(&b, "  %s => %s\n", prev.Op, prev.Outcome)
			prev = nil
		}
		if sign != " " {
			fmt.Fprintf(&b, "%s %s => %s\n", sign, s.Op, s.Outcome)
			changed = true
		}
	}
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && want[i] == got[j]:
			s := want[i]
			prev = &s
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			line("-", want[i])
			i++
		default:
			line("+", got[j])
			j++
		}
	}
	if !changed {
		return ""
	}
	return b.String()
}

// Check runs the suite in mnt and in ref (a native directory on the same
// kind of file system as the mount's backing directory) and fails t for
// every case that differs, with a readable diff.
func Check(t testing.TB, mnt, ref string) {
	t.Helper()
	CheckWith(t, mnt, ref, Options{})
}

// CheckWith is Check with options; differences in opts.Known cases are
// logged as known deviations instead of failing, and a known case that
// matches fails the test (the list must stay exact).
func CheckWith(t testing.TB, mnt, ref string, opts Options) {
	t.Helper()
	for _, d := range []string{mnt, ref} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatalf("posix: chmod %s: %v", d, err)
		}
		if err := Reachable(d); err != nil {
			t.Fatalf("posix: make %s reachable: %v", d, err)
		}
	}
	refOpts := opts
	refOpts.HostDir = "" // the reference reads back through itself
	want := Run(ref, refOpts)
	got := Run(mnt, opts)
	diffs := Compare(got, want)
	differs := map[string]bool{}
	for _, d := range diffs {
		differs[d.Case] = true
		if reason, ok := opts.Known[d.Case]; ok {
			t.Logf("posix: known deviation in case %s (%s):\n%s", d.Case, reason, d.Text)
			continue
		}
		t.Errorf("posix: %s", d)
	}
	ran := map[string]bool{}
	asked := map[string]bool{}
	for _, n := range opts.Skip {
		asked[n] = true
	}
	for _, r := range got {
		switch {
		case r.Skipped == "":
			ran[r.Case] = true
		case asked[r.Case]:
			t.Logf("posix: case %s skipped as asked", r.Case)
		default:
			// A precondition failed on both sides (e.g. uid 1000 cannot
			// reach the directories): the case proved nothing.
			t.Errorf("posix: case %s did not run: %s", r.Case, r.Skipped)
		}
	}
	var known []string
	for k := range opts.Known {
		known = append(known, k)
	}
	sort.Strings(known)
	for _, k := range known {
		if ran[k] && !differs[k] {
			t.Errorf("posix: case %s is listed as a known deviation (%s) but matches the reference: remove it from the list", k, opts.Known[k])
		}
	}
}

// Reachable adds o+x to dir and each of its parents that lacks it, so the
// unprivileged caller of the permission cases can reach dir (t.TempDir()
// creates 0700 parents).
func Reachable(dir string) error {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
		if d == "/" {
			return nil
		}
	}
}

// rec records the steps of one case.
type rec struct {
	dir     string // the case's directory in the tested tree
	hostDir string // the same directory seen natively, or ""
	name    string
	opts    Options
	steps   []Step
	skipped string
	mu      chanMutex
}

// chanMutex guards steps against the timeout path reading them while a
// stuck case goroutine might still append.
type chanMutex chan struct{}

func (r *rec) lock() {
	if r.mu == nil {
		r.mu = make(chanMutex, 1)
	}
	r.mu <- struct{}{}
}
func (r *rec) unlock() { <-r.mu }

func (r *rec) add(op, outcome string) {
	r.lock()
	r.steps = append(r.steps, Step{op, outcome})
	r.unlock()
}

func (r *rec) snapshot() []Step {
	r.lock()
	defer r.unlock()
	return append([]Step(nil), r.steps...)
}

// p joins names onto the case directory.
func (r *rec) p(names ...string) string { return filepath.Join(append([]string{r.dir}, names...)...) }

// e records an error outcome ("ok" for nil) and reports whether err was nil.
func (r *rec) e(op string, err error) bool {
	r.add(op, errName(err))
	return err == nil
}

func (r *rec) v(op, format string, args ...any) { r.add(op, fmt.Sprintf(format, args...)) }

// errName turns an error into a stable, path-free name.
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
		return fmt.Sprintf("errno(%d)", int(errno))
	}
	return fmt.Sprintf("error(%T)", err)
}
