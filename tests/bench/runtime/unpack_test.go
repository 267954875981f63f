//go:build e2e

package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// Image unpack into host storage (DESIGN.md §5: ≤ 1.5× local). Each round
// imports localhost/offload/big:latest (4 layers, ~140 MB, 6,500 files) into a
// fresh namespace of the DPU's containerd, whose overlayfs snapshot root is
// the qtfs share of the host's path and whose layers offload-differ hands to
// offload-agent, and of the host's reference containerd, which extracts
// locally. Both run `ctr images import --local` of the same archive, once
// with --no-unpack (content ingest only) and once in full; the unpack is the
// difference. The sides take turns, the order alternating by round.
//
//	go test -tags e2e -run '^$' -bench ImageUnpack -benchtime 1x ./tests/bench/runtime/
//	(BENCH_UNPACK_RUNS=N rounds, default 5)
func BenchmarkImageUnpack(b *testing.B) {
	upTestbed(b)
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("BENCH_UNPACK_RUNS")); err == nil && n > 0 {
		rounds = n
	}
	type sideT struct {
		name string
		run  sideFunc
		tar  string
	}
	pid := os.Getpid()
	sides := []sideT{
		{"dpu", testbed.DPU, fmt.Sprintf("/tmp/bench-unpack-%d.tar", pid)},
		{"host", testbed.Host, filepath.Join(testbed.RunDir, fmt.Sprintf("bench-unpack-%d.tar", pid))},
	}
	sh := func(s sideT, d time.Duration, script string) string {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		res, err := s.run(ctx, "sh", "-c", script)
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			b.Fatalf("%s: %s: %v\n%s", s.name, script, err, res.Stdout)
		}
		return res.Stdout
	}
	for _, s := range sides {
		sh(s, 2*time.Minute, fmt.Sprintf("ctr images export --platform linux/amd64 %s %s", s.tar, testbed.BigImage))
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s.run(ctx, "rm", "-f", s.tar)
		})
	}
	// timed imports ns into a fresh namespace and removes it afterwards.
	timed := func(s sideT, ns string, extra string) time.Duration {
		out := sh(s, 10*time.Minute, fmt.Sprintf(`set -e
s=$(date +%%s%%N)
ctr -n %[1]s images import --local %[2]s --platform linux/amd64 %[3]s >/dev/null
e=$(date +%%s%%N)
ctr -n %[1]s images rm --sync %[4]s >/dev/null
ctr namespaces rm %[1]s >/dev/null
echo $((e - s))`, ns, extra, s.tar, testbed.BigImage))
		v, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if err != nil {
			b.Fatalf("%s: timing %q", s.name, out)
		}
		return time.Duration(v)
	}
	for b.Loop() {
		full := map[string][]time.Duration{}
		ingest := map[string][]time.Duration{}
		var ratios []float64
		for r := 0; r < rounds; r++ {
			order := sides
			if r%2 == 1 {
				order = []sideT{sides[1], sides[0]}
			}
			for _, s := range order {
				ns := fmt.Sprintf("bench-unpack-%d-%d", pid, r)
				ingest[s.name] = append(ingest[s.name], timed(s, ns+"-i", "--no-unpack"))
				full[s.name] = append(full[s.name], timed(s, ns, ""))
			}
			ratios = append(ratios, full["dpu"][r].Seconds()/full["host"][r].Seconds())
		}
		unpack := func(name string) time.Duration {
			var ds []time.Duration
			for i := range full[name] {
				ds = append(ds, full[name][i]-ingest[name][i])
			}
			return median(ds)
		}
		ud, uh := unpack("dpu"), unpack("host")
		fd, fh := median(full["dpu"]), median(full["host"])
		ratio := medianF(ratios)
		b.ReportMetric(fd.Seconds(), "dpu-import-s")
		b.ReportMetric(fh.Seconds(), "host-import-s")
		b.ReportMetric(ratio, "import-ratio")
		b.ReportMetric(float64(ud)/float64(uh), "unpack-ratio")
		verdict := "meets"
		if ratio > 1.5 {
			verdict = "MISSES"
		}
		fmt.Printf("image import --local of %s, median over %d rounds: DPU (offload-differ → host) %.2f s, host (local) %.2f s, median paired ratio %.2f (%s target ≤ 1.5)\n",
			testbed.BigImage, rounds, fd.Seconds(), fh.Seconds(), ratio, verdict)
		fmt.Printf("  of which unpack (full − --no-unpack, medians): DPU %.2f s, host %.2f s, ratio %.2f; ingest: DPU %.2f s, host %.2f s\n",
			ud.Seconds(), uh.Seconds(), float64(ud)/float64(uh), median(ingest["dpu"]).Seconds(), median(ingest["host"]).Seconds())
	}
}

func medianF(v []float64) float64 {
	ds := make([]time.Duration, len(v))
	for i, f := range v {
		ds[i] = time.Duration(f * 1e9)
	}
	return median(ds).Seconds()
}
