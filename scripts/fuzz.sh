#!/usr/bin/env bash
# Fuzz every target for a bounded time each (make fuzz).
#
#   scripts/fuzz.sh BUILD_DIR [SECONDS] [TARGET...]
#
# Targets (default: all, one after the other, SECONDS each):
#   loader  the migration stream loader, seeds in tests/fuzz/corpus
#   qmp     a QMP client session against the monitor, tests/fuzz/corpus-qmp
#   xbzrle  the XBZRLE decoder and encoder, tests/fuzz/corpus-xbzrle
#   multifd the multifd packet decoder and decompressors, tests/fuzz/corpus-multifd
#   postcopy postcopy's commands, return-path payloads and request queue,
#           tests/fuzz/corpus-postcopy
# BUILD_DIR is a build configured with CC=clang -Dfuzz=true. Each harness
# runs over a copy of its corpus (the committed seeds stay as they are), with
# a 5 s per-input timeout (FUZZ_TIMEOUT overrides it: a loaded host can
# starve one input that long) and a 2 GiB RSS limit. Exits 1 if libFuzzer found
# a crash, a leak, a timeout or an out-of-memory input in any target, and
# prints the reproducer's path and how to replay it.
set -uo pipefail

build=${1:?usage: scripts/fuzz.sh BUILD_DIR [SECONDS] [TARGET...]}
seconds=${2:-60}
shift $(($# < 2 ? $# : 2))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(loader qmp xbzrle multifd postcopy)
root=$(cd "$(dirname "$0")/.." && pwd)

corpus_of() {
	case $1 in
	loader) echo "$root/tests/fuzz/corpus" ;;
	qmp) echo "$root/tests/fuzz/corpus-qmp" ;;
	xbzrle) echo "$root/tests/fuzz/corpus-xbzrle" ;;
	multifd) echo "$root/tests/fuzz/corpus-multifd" ;;
	postcopy) echo "$root/tests/fuzz/corpus-postcopy" ;;
	*) return 1 ;;
	esac
}

# fuzz_one TARGET: 0 when nothing was found.
fuzz_one() {
	local name=$1 harness="$build/tests/fuzz/fuzz_$1" corpus work log rc
	local found f

	corpus=$(corpus_of "$name") || {
		echo "fuzz: unknown target '$name' (known: loader qmp xbzrle multifd postcopy)" >&2
		return 1
	}
	if [ ! -x "$harness" ]; then
		echo "fuzz: $harness is missing: configure with" >&2
		echo "  CC=clang meson setup $build -Dfuzz=true -Dtests=false -Db_lundef=false" >&2
		echo "and build it (ninja -C $build)" >&2
		return 1
	fi
	work="$build/fuzz-run/$name"
	rm -rf "$work"
	mkdir -p "$work/corpus" "$work/artifacts"
	cp "$corpus"/* "$work/corpus/"
	log="$work/fuzz.log"

	echo "fuzz: $name for ${seconds}s over $(ls "$work/corpus" | wc -l)" \
		"seeds (log: $log)"
	ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
	UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
	"$harness" "$work/corpus" \
		-max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-5}" -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$work/artifacts/" \
		>"$log" 2>&1
	rc=$?

	grep -E '^#[0-9]+ +DONE|^stat::number_of_executed_units|^stat::peak_rss_mb' \
		"$log" || true
	found=$(ls "$work/artifacts" 2>/dev/null)
	if [ $rc -ne 0 ] || [ -n "$found" ]; then
		echo "fuzz: $name FAILED (exit $rc)"
		grep -E '^==[0-9]+==ERROR|SUMMARY|runtime error|ALARM|deadly signal|invariant broken' \
			"$log" | head -20
		for f in $found; do
			echo "fuzz: reproducer: $work/artifacts/$f"
			echo "  replay: $harness $work/artifacts/$f"
		done
		echo "fuzz: full log: $log"
		return 1
	fi
	echo "fuzz: $name: no crash, leak or hang in ${seconds}s;" \
		"corpus grew to $(ls "$work/corpus" | wc -l) inputs in $work/corpus"
	return 0
}

failed=()
for t in "${targets[@]}"; do
	fuzz_one "$t" || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: FAILED: ${failed[*]}"
	exit 1
fi
echo "fuzz: all targets clean (${targets[*]})"
