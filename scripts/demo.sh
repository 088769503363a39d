#!/usr/bin/env bash
# The `make demo` job (issue 3): a 1 GiB, 2-vCPU guest whose workload dirties
# 64 MiB/s, live-migrated between two `kvmig run` processes over loopback
# TCP, driven through QMP. The work is done by scripts/demo_vm.py.
#
#   scripts/demo.sh BUILD_DIR
#
# Knobs: DEMO_MEMORY (1G), DEMO_CPUS (2), DEMO_MEM (64, MiB working set),
# DEMO_RATE (64, MiB/s). Exits non-zero, saying why, if anything fails.
set -euo pipefail

build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)

exec python3 "$here/demo_vm.py" --build "$build" \
	--memory "${DEMO_MEMORY:-1G}" --cpus "${DEMO_CPUS:-2}" \
	--mem "${DEMO_MEM:-64}" --rate "${DEMO_RATE:-64}"
