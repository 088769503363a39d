#!/usr/bin/env bash
# kvmig VM benchmarks (issue 3), run by `make bench` after bench/run.sh's
# engine benchmarks, or alone:
#
#   bench/run_vm.sh [BUILD_DIR]
#
# Boot-to-workload time, and live migration of a running 2-vCPU guest
# between two `kvmig run` processes over loopback TCP for 1 GiB and 4 GiB
# guests, idle and dirtying 64 and 256 MiB/s: total time, VMM downtime,
# guest-observed downtime, bytes sent, passes, median of BENCH_RUNS (3).
# The work is done by bench/vm_bench.py; writes bench/results/vm-latest.md.
# Knobs: BENCH_RUNS (3), BENCH_VM_SIZES (1G,4G), BENCH_VM_RATES (0,64,256).
set -euo pipefail

build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)

for f in "$build/src/cli/kvmig" "$build/guest/guest.elf"; do
	if [ ! -e "$f" ]; then
		echo "bench: $f is missing: build first (ninja -C $build)" >&2
		exit 1
	fi
done

exec python3 "$here/vm_bench.py" --build "$build" \
	--runs "${BENCH_RUNS:-3}" --sizes "${BENCH_VM_SIZES:-1G,4G}" \
	--rates "${BENCH_VM_RATES:-0,64,256}" \
	--out "$here/results/vm-latest.md" --command "bench/run_vm.sh $build"
