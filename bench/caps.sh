#!/usr/bin/env bash
# The capability benchmarks of issue 5, kvmig against QEMU's same
# capability: `make bench-caps`.
#
#   bench/caps.sh [BUILD_DIR]
#
# Each benchmark is one bench/compare/main.py --caps run (both VMMs, the
# same guest, capabilities and parameters with QEMU's names, set the same
# way on both; runs alternate), tagged with its name:
#
#   multifd-limit  bench/tcp_limit (loopback TCP, 1 and 2 streams, 3 s
#                  each) and kvmig memtest --multifd 2 moving 1 GiB of
#                  random pages (kvmig only)
#   xbzrle         1G guest, pattern=small-writes mem=512 rate=100, over
#                  the 1 Gbit/s link, downtime-limit 50 ms: plain and
#                  xbzrle (bytes cut)
#   compression    1G guest, fill=sparse mem=512 rate=64, over the 1 Gbit/s
#                  link: multifd with none, zlib, zstd, lz4 (kvmig only)
#   auto-converge  1G guest, rate=1024, over the 1 Gbit/s link: plain (one
#                  run each, the control: it does not converge in 60 s)
#                  and auto-converge (time limit 180 s)
#   caps           every profile on loopback, 1G guest, 256 MiB/s (the
#                  profile's own workload: small-writes for xbzrle,
#                  fill=sparse for zlib/zstd/lz4)
#
# Environment (defaults in brackets):
#   CAPS_BENCHES   which benchmarks   [multifd-limit,xbzrle,compression,
#                                      auto-converge,caps]
#   CAPS_RUNS      runs per cell, median                          [3]
#   CAPS_LINK      the shaped link (NAME=RATE)                    [1g=1gbit]
#   CAPS_XBZRLE_WORKLOAD   [pattern=small-writes mem=512]   CAPS_XBZRLE_RATE [100]
#   CAPS_XBZRLE_DOWNTIME   downtime-limit, ms               [50]
#   CAPS_COMP_WORKLOAD     [fill=sparse mem=512]            CAPS_COMP_RATE   [64]
#   CAPS_AC_TIMEOUT        auto-converge's time limit, s    [180]
#   CAPS_PROFILES  the caps benchmark's profiles [plain,xbzrle,multifd,
#                  multifd-zlib,multifd-zstd,multifd-lz4,auto-converge]
#   COMPARE_VMMS   [kvmig,qemu]
#
# Every benchmark keeps its runs in BUILD_DIR/bench-caps/NAME.json (run
# again, a benchmark replaces its own file only); the report,
# bench/results/caps-latest.md, is built from all the files there, so
# benchmarks can be run one at a time (CAPS_BENCHES=xbzrle ...) on a
# shared machine. Shaped links need root (ip netns, tc).
set -euo pipefail

build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dir="$build/bench-caps"
mkdir -p "$dir"

benches=${CAPS_BENCHES:-multifd-limit,xbzrle,compression,auto-converge,caps}
runs=${CAPS_RUNS:-3}
link=${CAPS_LINK:-1g=1gbit}
main=("python3" "$here/compare/main.py" --build "$build")

log() { echo "caps: $*" >&2; }

want() { [[ ",$benches," == *",$1,"* ]]; }

if [ "$(id -u)" -ne 0 ]; then
	log "not root: the shaped link ($link) cannot be set up; the" \
		"xbzrle, compression and auto-converge benchmarks will" \
		"record nothing"
fi

# One benchmark: NAME FILE [main.py options]. A failure is reported and
# the next benchmark runs (what was measured stays in its runs file).
bench() {
	local name=$1 file=$2
	shift 2
	rm -f "$dir/$file.json"
	log "== $name ($file): $*"
	"${main[@]}" --bench "$name" --json "$dir/$file.json" \
		--out "$dir/$file.md" --runs "$runs" \
		--command "bench/caps.sh: $name: $*" "$@" >/dev/null ||
		log "$name ($file) did not finish cleanly (exit $?)"
}

# The machine's multifd ceiling and kvmig's multifd throughput.
multifd_limit() {
	local tcp="$build/bench/tcp_limit" kvmig="$build/src/cli/kvmig"
	if [ -x "$tcp" ]; then
		log "== multifd-limit: $tcp --seconds 3 --streams 2"
		"$tcp" --seconds 3 --streams 2 >"$dir/tcp-limit.json" ||
			log "tcp_limit failed"
	else
		log "$tcp is missing: build first (ninja -C $build)"
	fi
	rm -f "$dir/memtest-multifd.jsonl"
	# memtest --multifd-channels N on both ends (2 channels, raw pages
	# into a pre-allocated destination). Each source's --json summary
	# line is collected; the report takes transferred over (total_ms -
	# setup_ms - downtime_ms).
	if ! "$kvmig" memtest --help 2>&1 | grep -q -- '--multifd'; then
		log "kvmig memtest has no --multifd: the multifd" \
			"throughput is not measured"
		return 0
	fi
	for i in $(seq 1 "$runs"); do
		local port=$((20000 + RANDOM % 30000))
		"$kvmig" memtest --incoming "tcp:127.0.0.1:$port" --size 1G \
			--multifd-channels 2 --json >/dev/null 2>&1 &
		local dst=$!
		sleep 1
		"$kvmig" memtest --size 1G --pattern random --to \
			"tcp:127.0.0.1:$port" --multifd-channels 2 --json \
			2>/dev/null | grep '^{' >>"$dir/memtest-multifd.jsonl" ||
			log "memtest --multifd run $i failed"
		wait "$dst" || true
	done
}

if want multifd-limit; then
	multifd_limit
fi
if want xbzrle; then
	# XBZRLE: QEMU starts caching at the second pass and sends deltas
	# from the third; kvmig caches from the first pass. The cut grows
	# with the passes plain precopy needs, hence a rate near the link's
	# and a 50 ms downtime limit (plain: ~30 passes).
	bench xbzrle xbzrle --caps plain,xbzrle --links "$link" --sizes 1G \
		--rates "${CAPS_XBZRLE_RATE:-100}" \
		--downtime-limit "${CAPS_XBZRLE_DOWNTIME:-50}" \
		--workload "${CAPS_XBZRLE_WORKLOAD:-pattern=small-writes mem=512}"
fi
if want compression; then
	bench compression compression \
		--caps multifd,multifd-zlib,multifd-zstd,multifd-lz4 \
		--links "$link" --sizes 1G --rates "${CAPS_COMP_RATE:-64}" \
		--workload "${CAPS_COMP_WORKLOAD:-fill=sparse mem=512}"
fi
if want auto-converge; then
	# The control: plain precopy does not converge here (60 s, once).
	runs_saved=$runs
	runs=1
	bench auto-converge auto-converge-plain --caps plain --links "$link" \
		--sizes 1G --rates 1024 --timeout 60
	runs=$runs_saved
	bench auto-converge auto-converge --caps auto-converge \
		--links "$link" --sizes 1G --rates 1024 \
		--timeout "${CAPS_AC_TIMEOUT:-180}"
fi
if want caps; then
	bench caps caps --caps "${CAPS_PROFILES:-plain,xbzrle,multifd,multifd-zlib,multifd-zstd,multifd-lz4,auto-converge}" \
		--links loopback --sizes 1G --rates 256
fi

shopt -s nullglob
jsons=()
for f in "$dir"/*.json; do
	case $f in */tcp-limit.json) continue ;; esac
	jsons+=(--json "$f")
done
extra=()
[ -s "$dir/tcp-limit.json" ] && extra+=(--tcp-limit "$dir/tcp-limit.json")
[ -s "$dir/memtest-multifd.jsonl" ] &&
	extra+=(--memtest "$dir/memtest-multifd.jsonl")
if [ ${#jsons[@]} -eq 0 ]; then
	log "no runs recorded in $dir"
	exit 1
fi
"${main[@]}" --caps-report "${jsons[@]}" "${extra[@]}" \
	--out "$root/bench/results/caps-latest.md" \
	--command "bench/caps.sh $build" >/dev/null
log "wrote bench/results/caps-latest.md"
