//go:build e2e

package runtime

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// Throughput of 100 MiB of container stdout through io.containerd.offload.v1
// (host pipe → agent → mTLS TCP → shim → DPU FIFO → ctr) against the stock
// io.containerd.runc.v2 on the host side (pipe → runc shim → FIFO → ctr), in
// the same run, runs interleaved. Timed on each side around ctr only; ctr's
// stdout goes to /dev/null (TestStdoutVolume checks the bytes). Target:
// offload throughput ≥ 0.8 × runc's: the median, over BENCH_VOLUME_RUNS
// (default 5) back-to-back pairs, of runc time / offload time.
//
//	go test -tags e2e -run '^$' -bench StdoutThroughput -benchtime 1x ./tests/bench/runtime/

const volumeBytes = 100 << 20

func volumeRuns() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_VOLUME_RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

func BenchmarkStdoutThroughput(b *testing.B) {
	upTestbed(b)
	n := volumeRuns()
	seq := 0
	run := func(side sideFunc, runtime, short string) time.Duration {
		seq++
		id := fmt.Sprintf("bench-vol-%s-%d-%d", short, os.Getpid(), seq)
		body := fmt.Sprintf(`ctr run --rm --runtime %s %s %s sh -c 'yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c %d; exit 0' >/dev/null`,
			runtime, testbed.BusyboxImage, id, volumeBytes)
		return timeLoop(b, side, 1, body)[0]
	}
	for b.Loop() {
		run(testbed.DPU, "io.containerd.offload.v1", "offload") // warm-up
		run(testbed.Host, "io.containerd.runc.v2", "runc")
		var offload, runc, pairs []time.Duration
		for range n {
			o := run(testbed.DPU, "io.containerd.offload.v1", "offload")
			r := run(testbed.Host, "io.containerd.runc.v2", "runc")
			offload, runc = append(offload, o), append(runc, r)
			// Each pair ran back to back, under the same load from other
			// work on the machine: its ratio is steadier than the medians'.
			pairs = append(pairs, time.Duration(float64(r)/float64(o)*1e6))
		}
		mo, mr := median(offload), median(runc)
		mibO, mibR := float64(volumeBytes>>20)/mo.Seconds(), float64(volumeBytes>>20)/mr.Seconds()
		ratio := float64(median(pairs)) / 1e6
		b.ReportMetric(mibO, "offload-MiB/s")
		b.ReportMetric(mibR, "runc-MiB/s")
		b.ReportMetric(ratio, "ratio")
		verdict := "meets"
		if ratio < 0.8 {
			verdict = "MISSES"
		}
		fmt.Printf("100 MiB stdout via ctr run: median over %d runs: offload %.2fs (%.0f MiB/s), runc %.2fs (%.0f MiB/s), throughput ratio (median of paired runs) %.3f (%s target ≥ 0.8)\n",
			n, mo.Seconds(), mibO, mr.Seconds(), mibR, ratio, verdict)
	}
}
