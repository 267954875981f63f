#!/bin/bash
# seqread-cpu.sh: CPU per MiB of an uncached sequential read through qtfs,
# server and client separately (see docs/qtfs-bench.md).
#
#   seqread-cpu.sh setup                      tmpfs export with a 256 MiB file, certs, netns pair
#   seqread-cpu.sh run BIN tls|unix [PROFDIR] [mount flags...]
#   seqread-cpu.sh teardown
#
# run starts `BIN serve` (host netns for tls) and `BIN mount` (DPU netns for
# tls), drops the page cache, reads the file with dd bs=1M, and prints MB/s
# and the CPU time of the server, the client and dd per MiB (from
# /proc/PID/task/*/schedstat, so every thread counts). REPS=N repeats the
# read N times on the same mount (dropping caches before each). With
# PROFDIR, both processes write pprof CPU profiles there (QTFS_CPUPROFILE).
# Run from the module root after `make build`, as root; uses 192.0.2.21/.22
# and the network namespaces qtfscpu-h/qtfscpu-d.
set -u
B=${QTFS_CPU_DIR:-/tmp/qtfs-seqread-cpu}
H=qtfscpu-h D=qtfscpu-d
case "${1:-}" in
setup)
	mkdir -p $B && mount -t tmpfs -o size=2g qtfs-seqread-cpu $B && mkdir -p $B/export $B/mnt
	head -c $((256 << 20)) /dev/urandom >$B/export/big
	bin/offloadctl certs generate --host 192.0.2.21 $B/certs >/dev/null
	ip netns add $H && ip netns add $D
	ip link add qcpuh type veth peer name qcpud
	ip link set qcpuh netns $H && ip link set qcpud netns $D
	ip -n $H addr add 192.0.2.21/24 dev qcpuh && ip -n $D addr add 192.0.2.22/24 dev qcpud
	ip -n $H link set qcpuh up && ip -n $D link set qcpud up
	ip -n $H link set lo up && ip -n $D link set lo up
	;;
teardown)
	umount $B/mnt 2>/dev/null
	ip netns del $H
	ip netns del $D
	umount $B && rmdir $B
	;;
run)
	BIN=$2 T=$3 PD=${4:-}
	shift 3
	[ $# -gt 0 ] && shift
	if [ "$T" = tls ]; then
		ADDR=tcp://192.0.2.21:7443 SEC=(--tls-dir $B/certs) SPRE=(ip netns exec $H) CPRE=(nsenter --net=/run/netns/$D)
	else
		ADDR=unix://$B/q.sock SEC=() SPRE=() CPRE=()
	fi
	env ${PD:+QTFS_CPUPROFILE=$PD/server.prof} "${SPRE[@]}" $BIN serve --listen $ADDR "${SEC[@]}" \
		--export bench=$B/export --log-level warn >$B/serve.log 2>&1 &
	SP=$!
	for i in $(seq 50); do
		env ${PD:+QTFS_CPUPROFILE=$PD/client.prof} "${CPRE[@]}" $BIN mount "${SEC[@]}" "$@" --log-level warn \
			$ADDR bench $B/mnt >$B/mount.log 2>&1 &
		CP=$!
		for j in $(seq 40); do
			mountpoint -q $B/mnt && break
			kill -0 $CP 2>/dev/null || break
			sleep 0.05
		done
		mountpoint -q $B/mnt && break
		sleep 0.1
	done
	cpu() {
		local s=0 a rest
		for t in /proc/$1/task/*/schedstat; do
			read a rest <$t && s=$((s + a))
		done
		echo $s
	}
	tt=0 ss=0 cc=0 dd=0
	for rep in $(seq ${REPS:-1}); do
		sync
		echo 3 >/proc/sys/vm/drop_caches
		s0=$(cpu $SP) c0=$(cpu $CP) t0=$(date +%s%N)
		/usr/bin/time -o $B/time.out -f "%U %S" dd if=$B/mnt/big of=/dev/null bs=1M 2>/dev/null
		t1=$(date +%s%N) s1=$(cpu $SP) c1=$(cpu $CP)
		tt=$((tt + t1 - t0)) ss=$((ss + s1 - s0)) cc=$((cc + c1 - c0))
		dd=$(awk -v d=$dd '{print d + ($1 + $2) * 1e9}' $B/time.out)
	done
	$BIN umount $B/mnt
	wait $CP
	kill $SP
	wait $SP
	awk -v t=$tt -v s=$ss -v c=$cc -v d=$dd -v T=$T -v n=${REPS:-1} 'BEGIN {
		mib = 256 * n
		printf "%s: %.0f MB/s  server %.2f ms/MiB  client %.2f ms/MiB  reader %.2f ms/MiB  total %.2f ms/MiB\n",
			T, n * 268.435456 / (t / 1e9), s / 1e6 / mib, c / 1e6 / mib, d / 1e6 / mib, (s + c + d) / 1e6 / mib }'
	;;
*)
	sed -n '2,17p' "$0"
	exit 2
	;;
esac
