#!/usr/bin/env bash
# kvmig benchmarks (issue 2): measures, in one run, the machine's yardsticks
# and the engine against them, and prints the ratios the targets are set in.
#
#   bench/run.sh [BUILD_DIR]          (make bench)
#
#   memcpy bandwidth, 1 GiB buffer        bench/membw (best of 5 copies)
#   single-stream loopback TCP            bench/tcpbw (3 s of 4 MiB writes)
#   memtest precopy, idle 4 GiB           --pattern zero, two processes, TCP
#   memtest precopy, 1 GiB random pages   --pattern random, two processes, TCP
#
# Each is run BENCH_RUNS times (default 3) and the median is used. Targets:
#   random pages throughput >= 0.8 x loopback TCP throughput
#   idle 4 GiB total time   <= 2 x (4 GiB / memcpy bandwidth)
# Writes bench/results/latest.md (table, command, date, machine). Exits 1 if
# a measurement could not be taken; a missed target is reported, not fatal.
set -euo pipefail

build=${1:-build}
runs=${BENCH_RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)
results="$here/results"
idle_size=${BENCH_IDLE_SIZE:-4G}
random_size=${BENCH_RANDOM_SIZE:-1G}

membw="$build/bench/membw"
tcpbw="$build/bench/tcpbw"
kvmig="$build/src/cli/kvmig"
for tool in "$membw" "$tcpbw" "$kvmig"; do
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

median() { # numbers on stdin, one a line
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) exit 1
		if (NR % 2) print v[(NR + 1) / 2]
		else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

kv_field() { # KEY LINE: value of key=value in a tool's output line
	tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

# One memtest between two kvmig processes over loopback TCP. Prints
# "total_ms downtime_ms bytes zero_pages normal_pages passes".
memtest_once() { # SIZE PATTERN TAG
	local size=$1 pattern=$2 tag=$3 uri= i
	local dout="$tmp/$tag.dest" sout="$tmp/$tag.src"

	"$kvmig" memtest --incoming tcp:127.0.0.1:0 >"$dout" 2>&1 &
	dest_pid=$!
	for i in $(seq 100); do
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
	if ! timeout 600 "$kvmig" memtest --size "$size" --pattern "$pattern" \
		--to "$uri" >"$sout" 2>&1; then
		echo "bench: memtest --size $size --pattern $pattern failed:" >&2
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
	if ! grep -q '^memtest: digest OK' "$dout"; then
		echo "bench: the destination did not verify the digest:" >&2
		cat "$dout" >&2
		return 1
	fi
	awk '
		/^  total time/     { t = $3 }
		/^  downtime/       { d = $2 }
		/^  transferred/    { gsub(/[()]/, "", $4); b = $4 }
		/^  zero pages/     { z = $3 }
		/^  normal pages/   { n = $3 }
		/^  passes/         { p = $2 }
		END {
			if (t == "" || b == "") exit 1
			print t, d, b, z, n, p
		}' "$sout"
}

# Median (by total time) of BENCH_RUNS memtests; prints the chosen line.
memtest_median() { # SIZE PATTERN TAG
	local r line
	: >"$tmp/$3.runs"
	for r in $(seq "$runs"); do
		line=$(memtest_once "$1" "$2" "$3-$r") || return 1
		echo "$line" >>"$tmp/$3.runs"
		echo "  $3 run $r: total ${line%% *} ms" >&2
	done
	sort -n -k1,1 "$tmp/$3.runs" | awk -v n="$runs" \
		'NR == int((n + 1) / 2) { print; exit }'
}

mkdir -p "$results"
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

echo "bench: memcpy bandwidth (1 GiB, best of 5 copies) x $runs" >&2
for r in $(seq "$runs"); do
	kv_field best_bytes_per_sec "$("$membw" --size 1G --runs 5)"
done >"$tmp/membw"
memcpy_bps=$(median <"$tmp/membw")

echo "bench: loopback TCP, one stream, 3 s x $runs" >&2
for r in $(seq "$runs"); do
	kv_field bytes_per_sec "$("$tcpbw" --seconds 3)"
done >"$tmp/tcpbw"
tcp_bps=$(median <"$tmp/tcpbw")

echo "bench: memtest idle $idle_size (--pattern zero) x $runs" >&2
read -r idle_ms idle_down idle_bytes idle_zero idle_normal idle_passes \
	<<<"$(memtest_median "$idle_size" zero idle)"

echo "bench: memtest $random_size random pages x $runs" >&2
read -r rnd_ms rnd_down rnd_bytes rnd_zero rnd_normal rnd_passes \
	<<<"$(memtest_median "$random_size" random random)"

size_bytes() { # 4G -> bytes
	awk -v s="$1" 'BEGIN {
		m = 1; u = substr(s, length(s))
		if (u == "K") m = 2^10; else if (u == "M") m = 2^20
		else if (u == "G") m = 2^30
		if (m > 1) s = substr(s, 1, length(s) - 1)
		printf "%.0f\n", s * m }'
}
idle_region=$(size_bytes "$idle_size")

# All derived figures in one place, so the table and the file agree.
eval "$(awk -v mb="$memcpy_bps" -v tb="$tcp_bps" -v im="$idle_ms" \
	-v ir="$idle_region" -v rm="$rnd_ms" -v rb="$rnd_bytes" 'BEGIN {
	gib = 2^30
	if (rm < 1) rm = 1
	rnd_bps = rb * 1000 / rm
	idle_ref_ms = ir / mb * 1000
	printf "memcpy_gibs=%.2f\n", mb / gib
	printf "tcp_gibs=%.2f\n", tb / gib
	printf "rnd_gibs=%.2f\n", rnd_bps / gib
	printf "rnd_ratio=%.2f\n", rnd_bps / tb
	printf "rnd_ok=%s\n", (rnd_bps >= 0.8 * tb) ? "met" : "MISSED"
	printf "idle_ref_ms=%.0f\n", idle_ref_ms
	printf "idle_ratio=%.2f\n", im / idle_ref_ms
	printf "idle_ok=%s\n", (im <= 2 * idle_ref_ms) ? "met" : "MISSED"
}')"

table() {
	cat <<EOF
| measurement | result | target | ratio | verdict |
|---|---|---|---|---|
| memcpy bandwidth, 1 GiB buffer | $memcpy_gibs GiB/s | (yardstick) | | |
| loopback TCP, one stream | $tcp_gibs GiB/s | (yardstick) | | |
| memtest $random_size random pages: throughput | $rnd_gibs GiB/s ($rnd_ms ms, $rnd_bytes bytes, $rnd_passes passes, downtime $rnd_down ms) | >= 0.8 x TCP | $rnd_ratio x TCP | $rnd_ok |
| memtest idle $idle_size (zero pages): total time | $idle_ms ms ($idle_zero zero pages, $idle_bytes bytes, $idle_passes passes, downtime $idle_down ms) | <= 2 x $idle_ref_ms ms ($idle_size at memcpy speed) | $idle_ratio x memcpy time | $idle_ok |
EOF
}

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

echo
table
{
	echo "# kvmig benchmarks"
	echo
	echo "Measured $started with \`bench/run.sh $build\` (\`make bench\`);"
	echo "median of $runs runs each."
	echo
	table
	echo
	echo "Runs (bytes/s for the yardsticks; total ms, downtime ms, bytes,"
	echo "zero pages, normal pages, passes for memtest):"
	echo
	echo "- memcpy: $(paste -sd' ' "$tmp/membw")"
	echo "- TCP: $(paste -sd' ' "$tmp/tcpbw")"
	echo "- idle $idle_size: $(paste -sd'|' "$tmp/idle.runs")"
	echo "- random $random_size: $(paste -sd'|' "$tmp/random.runs")"
	echo
	echo "Machine:"
	echo
	machine
} >"$results/latest.md"
echo
echo "bench: wrote $results/latest.md"
