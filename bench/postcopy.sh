#!/usr/bin/env bash
# Postcopy against QEMU 7.2's (issue 11): `make bench-postcopy`.
#
#   bench/postcopy.sh [BUILD_DIR]
#
# Each benchmark is one bench/compare/main.py --caps run with the
# postcopy profiles (bench/compare/caps.py: `postcopy` = postcopy-ram +
# postcopy-blocktime, `postcopy-preempt` = the same + postcopy-preempt;
# set on both ends), tagged with its name. Every run is precopy until
# query-migrate (polled every 10 ms) shows the first pass ended
# (dirty-sync-count 2), then migrate-start-postcopy (postcopy.py).
#
#   pc-link    the cells where precopy does not converge over 1 Gbit/s
#              (docs/BENCHMARKS.md, issue 4): 1G and 4G guests at 256
#              and 1024 MiB/s, over the 1 Gbit/s link, no bandwidth cap
#   pc-cap     a 32 MiB/s max-bandwidth cap on loopback: 1G and 4G
#              guests at 64 MiB/s (twice the cap: precopy cannot
#              converge); postcopy runs at each VMM's default
#              postcopy bandwidth
#   pc-fault   page-fault service on loopback while background pages
#              stream: 1G guest rewriting all of its RAM (rate 1024),
#              per-fault service times (--fault-trace: QEMU's trace
#              events, kvmig's own figures), with and without preempt
#   pc-auto    kvmig only: x-postcopy-auto over the comparison matrix
#              (PC_AUTO_LINKS, 1G and 4G, 0/64/256/1024 MiB/s), profiles
#              `defaults` (precopy, kvmig as it ships), `postcopy-ram`
#              (postcopy-ram on both sides, never switched) and
#              `postcopy-auto` (the same with x-postcopy-auto on), 60 s
#              limit as the comparison's
#
# Environment (defaults in brackets):
#   PC_BENCHES   which benchmarks       [pc-link,pc-cap,pc-fault,pc-auto]
#   PC_AUTO_LINKS  pc-auto's links             [1g=1gbit,loopback]
#   PC_RUNS      runs per cell, median          [3]
#   PC_LINK      the shaped link (NAME=RATE)    [1g=1gbit]
#   PC_TIMEOUT   s before a run counts as not converging   [120]
#   COMPARE_VMMS [kvmig,qemu]
#
# Runs go to BUILD_DIR/bench-postcopy/NAME.json (a benchmark run again
# replaces its own file only); the report, bench/results/
# postcopy-latest.md, is built from every file there. Shaped links need
# root (ip netns, tc).
set -euo pipefail

build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dir="$build/bench-postcopy"
mkdir -p "$dir"

benches=${PC_BENCHES:-pc-link,pc-cap,pc-fault,pc-auto}
runs=${PC_RUNS:-3}
link=${PC_LINK:-1g=1gbit}
timeout=${PC_TIMEOUT:-120}
main=("python3" "$here/compare/main.py" --build "$build")

log() { echo "postcopy: $*" >&2; }

want() { [[ ",$benches," == *",$1,"* ]]; }

# One benchmark: NAME [main.py options]. A failure is reported and the
# next benchmark runs (what was measured stays in its runs file).
bench() {
	local name=$1
	shift
	rm -f "$dir/$name.json"
	log "== $name: $*"
	"${main[@]}" --bench "$name" --json "$dir/$name.json" \
		--out "$dir/$name.md" --runs "$runs" --timeout "$timeout" \
		--command "bench/postcopy.sh: $name: $*" "$@" >/dev/null ||
		log "$name did not finish cleanly (exit $?)"
}

if want pc-link; then
	bench pc-link --caps postcopy,postcopy-preempt --links "$link" \
		--sizes 1G,4G --rates 256,1024
fi
if want pc-cap; then
	bench pc-cap --caps postcopy,postcopy-preempt --links loopback \
		--sizes 1G,4G --rates 64 --max-bandwidth $((32 << 20))
fi
if want pc-fault; then
	bench pc-fault --caps postcopy-preempt,postcopy --links loopback \
		--sizes 1G --rates 1024 --fault-trace
fi

if want pc-auto; then
	timeout=60
	bench pc-auto --caps defaults,postcopy-ram,postcopy-auto --vmms kvmig \
		--links "${PC_AUTO_LINKS:-1g=1gbit,loopback}" --sizes 1G,4G \
		--rates 0,64,256,1024
fi

shopt -s nullglob
jsons=()
for f in "$dir"/*.json; do
	jsons+=(--json "$f")
done
if [ ${#jsons[@]} -eq 0 ]; then
	log "no runs recorded in $dir"
	exit 1
fi
"${main[@]}" --postcopy-report "${jsons[@]}" \
	--out "$root/bench/results/postcopy-latest.md" \
	--command "bench/postcopy.sh $build" >/dev/null
log "wrote bench/results/postcopy-latest.md"
