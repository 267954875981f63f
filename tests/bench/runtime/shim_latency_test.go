//go:build e2e

package runtime

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// Latency of `ctr run --rm IMAGE ID /bin/true` through io.containerd.offload.v1
// on the testbed's DPU side (shim on the DPU, container on the host through
// offload-agent over mTLS TCP) against the stock io.containerd.runc.v2 on the
// host side's reference containerd, in the same run. Target: median ratio
// ≤ 1.15 (DESIGN.md §5). And `ctr task exec` latency (target ≤ 1.2).
//
//	go test -tags e2e -run '^$' -bench 'RunLatency|ExecLatency' -benchtime 1x ./tests/bench/runtime/

func latencyRuns() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 30
}

// sideFunc runs a command on one side of the testbed.
type sideFunc func(ctx context.Context, args ...string) (testbed.Result, error)

// timeLoop runs the shell loop body n times on a side and returns the
// wall time of each iteration, measured on that side around ctr only (the
// testbed's nsenter wrapper is outside the timing).
func timeLoop(b *testing.B, side sideFunc, n int, body string) []time.Duration {
	b.Helper()
	script := fmt.Sprintf(`set -e
i=0
while [ $i -lt %d ]; do
	s=$(date +%%s%%N)
	%s
	e=$(date +%%s%%N)
	echo "T $((e - s))"
	i=$((i + 1))
done`, n, body)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	res, err := side(ctx, "sh", "-c", script)
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		b.Fatalf("%v\nstdout: %s", err, res.Stdout)
	}
	var ds []time.Duration
	for _, line := range strings.Split(res.Stdout, "\n") {
		if ns, ok := strings.CutPrefix(line, "T "); ok {
			v, err := strconv.ParseInt(ns, 10, 64)
			if err != nil {
				b.Fatalf("timing line %q", line)
			}
			ds = append(ds, time.Duration(v))
		}
	}
	if len(ds) != n {
		b.Fatalf("got %d timings, want %d\n%s", len(ds), n, res.Stdout)
	}
	return ds
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func upTestbed(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := testbed.Up(ctx); err != nil {
		b.Fatal(err)
	}
}

// report prints and records both medians and their ratio.
func report(b *testing.B, what string, offload, runc []time.Duration, target float64) {
	mo, mr := median(offload), median(runc)
	ratio := float64(mo) / float64(mr)
	b.ReportMetric(float64(mo)/1e6, "offload-ms")
	b.ReportMetric(float64(mr)/1e6, "runc-ms")
	b.ReportMetric(ratio, "ratio")
	verdict := "meets"
	if ratio > target {
		verdict = "MISSES"
	}
	fmt.Printf("%s: median over %d runs: offload %.1f ms, runc %.1f ms, ratio %.3f (%s target ≤ %.2f)\n",
		what, len(offload), float64(mo)/1e6, float64(mr)/1e6, ratio, verdict, target)
}

func BenchmarkRunLatency(b *testing.B) {
	upTestbed(b)
	n := latencyRuns()
	run := func(runtime string) string {
		id := fmt.Sprintf("bench-lat-%s-%d", strings.Split(runtime, ".")[2], os.Getpid())
		return fmt.Sprintf(`ctr run --rm --runtime %s %s %s-$i /bin/true >/dev/null`, runtime, testbed.BusyboxImage, id)
	}
	for b.Loop() {
		// One warm-up each (page cache, first shim start), then interleave
		// batches so that load from other work on the machine hits both.
		timeLoop(b, testbed.DPU, 1, run("io.containerd.offload.v1"))
		timeLoop(b, testbed.Host, 1, run("io.containerd.runc.v2"))
		var offload, runc []time.Duration
		for batch := 0; batch < 3; batch++ {
			offload = append(offload, timeLoop(b, testbed.DPU, n/3, run("io.containerd.offload.v1"))...)
			runc = append(runc, timeLoop(b, testbed.Host, n/3, run("io.containerd.runc.v2"))...)
		}
		report(b, "ctr run --rm /bin/true", offload, runc, 1.15)
	}
}

func BenchmarkExecLatency(b *testing.B) {
	upTestbed(b)
	n := latencyRuns()
	// Distinct IDs: both containerds use namespace "default", and on this
	// one machine the host containers' cgroup paths (/default/<id>) would collide.
	ids := map[string]string{}
	start := func(side sideFunc, runtime string) {
		id := fmt.Sprintf("bench-exec-%s-%d", strings.Split(runtime, ".")[2], os.Getpid())
		ids[runtime] = id
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := side(ctx, "ctr", "run", "-d", "--runtime", runtime, testbed.BusyboxImage, id, "sleep", "100000")
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			side(ctx, "sh", "-c", fmt.Sprintf("ctr task kill -s KILL %s; sleep 0.5; ctr task rm %s; ctr c rm %s", id, id, id))
		})
	}
	start(testbed.DPU, "io.containerd.offload.v1")
	start(testbed.Host, "io.containerd.runc.v2")
	exec := func(runtime string, batch int) string {
		return fmt.Sprintf(`ctr task exec --exec-id x%d-$i %s /bin/true`, batch, ids[runtime])
	}
	for b.Loop() {
		timeLoop(b, testbed.DPU, 1, exec("io.containerd.offload.v1", 9))
		timeLoop(b, testbed.Host, 1, exec("io.containerd.runc.v2", 9))
		var offload, runc []time.Duration
		for batch := 0; batch < 3; batch++ {
			offload = append(offload, timeLoop(b, testbed.DPU, n/3, exec("io.containerd.offload.v1", batch))...)
			runc = append(runc, timeLoop(b, testbed.Host, n/3, exec("io.containerd.runc.v2", batch))...)
		}
		report(b, "ctr task exec /bin/true", offload, runc, 1.2)
	}
}
