#!/usr/bin/env bash
# kvmig against QEMU, side by side (issue 4): `make bench-compare`.
#
#   bench/compare.sh [BUILD_DIR] [extra bench/compare/main.py options]
#
# Runs the full matrix by default: 1G and 4G guests x idle, 64, 256 and
# 1024 MiB/s x 3 runs x {kvmig, QEMU}, over loopback and over a veth pair
# into a network namespace shaped to 1 Gbit/s and 10 Gbit/s. Subsets:
#
#   COMPARE_SIZES=1G          guest sizes          (1G,4G)
#   COMPARE_RATES=0,256       dirty rates, MiB/s   (0,64,256,1024)
#   COMPARE_RUNS=1            runs per cell        (3)
#   COMPARE_LINKS=loopback    links         (loopback,1g=1gbit,10g=10gbit)
#   COMPARE_SHAPED_CELLS=4G:256   only these SIZE:RATE cells on shaped links
#   COMPARE_VMMS=kvmig        VMMs                 (kvmig,qemu)
#   COMPARE_TIMEOUT=60        s before a migration counts as not converging
#
# Writes bench/results/compare-latest.md and docs/img/compare-*.png; every
# run is kept in BUILD_DIR/bench-compare-runs.json as it ends (the report
# can be rebuilt from it: bench/compare/main.py --report-only --json FILE).
# Shaped links need root (ip netns, tc); the namespace is always removed.
set -euo pipefail

build=${1:-build}
shift || true
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v gnuplot >/dev/null; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
		echo "compare: installing gnuplot-nox for the plots" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			gnuplot-nox >/dev/null 2>&1 ||
			echo "compare: gnuplot-nox did not install: no plots" >&2
	else
		echo "compare: gnuplot is missing (apt-get install gnuplot-nox" \
			"as root): the report will have no plots" >&2
	fi
fi

# The report names the subset it was run with.
subset=$(env | grep '^COMPARE_' | sort | tr '\n' ' ' || true)
exec python3 "$here/compare/main.py" --build "$build" \
	--command "${subset}bench/compare.sh $build${*:+ $*}" "$@"
