#!/usr/bin/env bash
# kvmig benchmarks (issue 2): measures, in one run, the machine's yardsticks
# and the engine against them, and prints the ratios the targets are set in.
#
#   bench/run.sh [BUILD_DIR]          (make bench)
#
#   memcpy bandwidth, 1 GiB buffer        bench/membw (best of 5 copies)
#   single-stream loopback TCP            bench/tcp_limit --streams 1 (3 s of 4 MiB writes)
#   memtest precopy, idle 4 GiB           --pattern zero, two processes, TCP
#   memtest precopy, 1 GiB random pages   --pattern random, two processes,
#                                         TCP; once into a destination that
#                                         pre-allocated its RAM (--incoming
#                                         --size, as a VMM's destination
#                                         does), once into fresh memory
#   first-touch bandwidth, 1 GiB          bench/firsttouch (fresh anonymous
#                                         memory, measured last: at once and
#                                         after 3 s idle)
#   VM live migration (issue 3)           bench/run_vm.sh, afterwards: see
#                                         there; writes results/vm-latest.md
#
# Each is run BENCH_RUNS times (default 3) and the median is used. Targets:
#   random pages throughput >= 0.8 x loopback TCP throughput
#   idle 4 GiB migration time <= 2 x (4 GiB / memcpy bandwidth)
# memtest's digest (XXH3-128 of the region on both sides, verification and
# not migration) runs inside the downtime; each side reports its time in
# its --json summary, so the table shows total time, digest time and
# migration time = total - both digests, and says which one a ratio uses.
# Writes bench/results/latest.md (table, runs, date, machine). Exits 1 if
# a measurement could not be taken; a missed target is reported, not fatal.
set -euo pipefail

build=${1:-build}
runs=${BENCH_RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)
results="$here/results"
idle_size=${BENCH_IDLE_SIZE:-4G}
random_size=${BENCH_RANDOM_SIZE:-1G}

membw="$build/bench/membw"
tcp_limit="$build/bench/tcp_limit"
firsttouch="$build/bench/firsttouch"
kvmig="$build/src/cli/kvmig"
for tool in "$membw" "$tcp_limit" "$firsttouch" "$kvmig"; do
	if [ ! -x "$tool" ]; then
		echo "bench: $tool is missing: build first (ninja -C $build)" >&2
		exit 1
	fi
done

tmp=$(mktemp -d /tmp/kvmig-bench.XXXXXX)
dest_pid=
cleanup() {
	if [ -n "$dest_pid" ]; then
		kill "$dest_pid" 2>/dev/null || true
		wait "$dest_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

kv_field() { # KEY LINE: value of key=value in a tool's output line
	tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

# One memtest between two kvmig processes over loopback TCP. Leaves each
# side's --json summary in $tmp/TAG.src.json and $tmp/TAG.dest.json.
memtest_once() { # TAG "DEST ARGS" SOURCE ARGS...
	local tag=$1 dest_args=$2 uri= i
	local dout="$tmp/$tag.dest" sout="$tmp/$tag.src"
	shift 2

	# shellcheck disable=SC2086 # word splitting of DEST ARGS is wanted
	"$kvmig" memtest --incoming tcp:127.0.0.1:0 --json $dest_args \
		>"$dout" 2>&1 &
	dest_pid=$!
	# A pre-allocating destination listens only once its RAM is in.
	for i in $(seq 1200); do
		uri=$(sed -n 's/^memtest: listening on \(tcp:.*\)$/\1/p' "$dout")
		[ -n "$uri" ] && break
		kill -0 "$dest_pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$uri" ]; then
		echo "bench: the destination did not start listening:" >&2
		cat "$dout" >&2
		return 1
	fi
	if ! timeout 600 "$kvmig" memtest --to "$uri" --json "$@" \
		>"$sout" 2>&1; then
		echo "bench: memtest $* failed:" >&2
		cat "$sout" "$dout" >&2
		return 1
	fi
	for i in $(seq 600); do
		kill -0 "$dest_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill "$dest_pid" 2>/dev/null || true # still there after 60 s: hung
	if ! wait "$dest_pid"; then
		dest_pid=
		echo "bench: the destination failed:" >&2
		cat "$dout" >&2
		return 1
	fi
	dest_pid=
	grep '^{' "$sout" >"$tmp/$tag.src.json"
	grep '^{' "$dout" >"$tmp/$tag.dest.json"
	if ! grep -q '"digest_ok":true' "$tmp/$tag.dest.json"; then
		echo "bench: the destination did not verify the digest:" >&2
		cat "$dout" >&2
		return 1
	fi
}

memtest_runs() { # TAG "DEST ARGS" SOURCE ARGS...
	local tag=$1 r
	shift
	for r in $(seq "$runs"); do
		memtest_once "$tag-$r" "$@" || return 1
		echo "  $tag run $r: total $(sed -n \
			's/.*"total_ms":\([0-9]*\).*/\1/p' \
			"$tmp/$tag-$r.src.json") ms" >&2
	done
}

mkdir -p "$results"
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

echo "bench: memcpy bandwidth (1 GiB, best of 5 copies) x $runs" >&2
for r in $(seq "$runs"); do
	kv_field best_bytes_per_sec "$("$membw" --size 1G --runs 5)"
done >"$tmp/membw"

echo "bench: loopback TCP, one stream, 3 s x $runs" >&2
for r in $(seq "$runs"); do
	"$tcp_limit" --seconds 3 --streams 1 | python3 -c \
		'import json, sys; print(json.load(sys.stdin)["streams"]["1"])'
done >"$tmp/tcpbw"

echo "bench: memtest idle $idle_size (--pattern zero) x $runs" >&2
memtest_runs idle "" --size "$idle_size" --pattern zero

echo "bench: memtest $random_size random pages, pre-allocated" \
	"destination x $runs" >&2
memtest_runs rndpre "--size $random_size" --size "$random_size" \
	--pattern random

echo "bench: memtest $random_size random pages, destination in fresh" \
	"memory x $runs" >&2
memtest_runs rndfresh "" --size "$random_size" --pattern random

echo "bench: first touch of fresh memory (1 GiB) x $runs" >&2
for r in $(seq "$runs"); do
	"$firsttouch" --size 1G
done >"$tmp/firsttouch"
# On a VM whose host takes back free memory (virtio-balloon free page
# reporting), memory freed a moment ago is quick to touch again and memory
# idle for a few seconds is not: measure both.
echo "bench: first touch of fresh memory after 3 s idle (1 GiB) x $runs" >&2
for r in $(seq "$runs"); do
	"$firsttouch" --size 1G --idle-ms 3000
done >"$tmp/firsttouch-idle"

machine() {
	local cpu
	cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
	echo "- CPU: ${cpu:-unknown}, $(nproc) cores online"
	echo "- memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 2^20 }' \
		/proc/meminfo)"
	echo "- kernel: $(uname -sr)"
	echo "- compiler: $(${CC:-cc} --version 2>/dev/null | head -1)"
	echo "- kvmig: $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null \
		|| echo unknown) ($build, $(meson introspect --buildoptions \
		"$build" 2>/dev/null | python3 -c 'import json,sys
print(next((o["value"] for o in json.load(sys.stdin)
      if o["name"] == "buildtype"), "?"))' 2>/dev/null || echo '?'))"
}

python3 "$here/report.py" --tmp "$tmp" --runs "$runs" \
	--idle-size "$idle_size" --random-size "$random_size" \
	--started "$started" --command "bench/run.sh $build" \
	--machine "$(machine)" --out "$results/latest.md"
echo
echo "bench: wrote $results/latest.md"

# Issue 3: the VMM, a running guest migrated between two kvmig processes.
echo "bench: VM live migration (bench/run_vm.sh)" >&2
"$here/run_vm.sh" "$build"
