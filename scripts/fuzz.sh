#!/usr/bin/env bash
# Fuzz the migration stream loader for a bounded time (make fuzz).
#
#   scripts/fuzz.sh BUILD_DIR [SECONDS]
#
# BUILD_DIR is a build configured with CC=clang -Dfuzz=true. The harness runs
# over a copy of tests/fuzz/corpus (the committed seeds stay as they are),
# with a 5 s per-input timeout and a 2 GiB RSS limit. Exits 1 if libFuzzer
# found a crash, a leak, a timeout or an out-of-memory input, and prints the
# reproducer's path and how to replay it.
set -uo pipefail

build=${1:?usage: scripts/fuzz.sh BUILD_DIR [SECONDS]}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
harness="$build/tests/fuzz/fuzz_loader"

if [ ! -x "$harness" ]; then
	echo "fuzz: $harness is missing: configure with" >&2
	echo "  CC=clang meson setup $build -Dfuzz=true -Dtests=false -Db_lundef=false" >&2
	echo "and build it (ninja -C $build)" >&2
	exit 1
fi

work="$build/fuzz-run"
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
cp "$root"/tests/fuzz/corpus/* "$work/corpus/"
log="$work/fuzz.log"

echo "fuzz: loader for ${seconds}s over $(ls "$work/corpus" | wc -l) seeds" \
	"(log: $log)"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
"$harness" "$work/corpus" \
	-max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 \
	-print_final_stats=1 -artifact_prefix="$work/artifacts/" \
	>"$log" 2>&1
rc=$?

grep -E '^#[0-9]+ +DONE|^stat::number_of_executed_units|^stat::peak_rss_mb' \
	"$log" || true
found=$(ls "$work/artifacts" 2>/dev/null)
if [ $rc -ne 0 ] || [ -n "$found" ]; then
	echo "fuzz: FAILED (exit $rc)"
	grep -E '^==[0-9]+==ERROR|SUMMARY|runtime error|ALARM|deadly signal' \
		"$log" | head -20
	for f in $found; do
		echo "fuzz: reproducer: $work/artifacts/$f"
		echo "  replay: $harness $work/artifacts/$f"
	done
	echo "fuzz: full log: $log"
	exit 1
fi
echo "fuzz: no crash, leak or hang in ${seconds}s;" \
	"corpus grew to $(ls "$work/corpus" | wc -l) inputs in $work/corpus"
