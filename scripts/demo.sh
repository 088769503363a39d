#!/usr/bin/env bash
# The `make demo` job: a 1 GiB memtest between two kvmig processes over
# loopback TCP, with a thread dirtying the source region at 64 MiB/s.
#
#   scripts/demo.sh BUILD_DIR
#
# The destination listens on a free port (port 0: the kernel picks it, and
# kvmig prints the address it bound). Both outputs are shown, each line
# labelled; the script fails if either side fails.
# Knobs: DEMO_SIZE (1G), DEMO_DIRTY_RATE (64, MiB/s), DEMO_DOWNTIME (300 ms).
set -uo pipefail

build=${1:-build}
kvmig="$build/src/cli/kvmig"
size=${DEMO_SIZE:-1G}
rate=${DEMO_DIRTY_RATE:-64}
downtime=${DEMO_DOWNTIME:-300}

if [ ! -x "$kvmig" ]; then
	echo "demo: $kvmig not found; build first (make)" >&2
	exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmig-demo.XXXXXX")
dest_pid=
tail_pid=
cleanup() {
	if [ -n "$dest_pid" ] && kill -0 "$dest_pid" 2>/dev/null; then
		kill "$dest_pid" 2>/dev/null
		wait "$dest_pid" 2>/dev/null
	fi
	[ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

label() {
	# Line-buffered, so both sides interleave as they happen.
	sed -u "s/^/$1 /"
}

echo "== kvmig demo: memtest of $size over loopback TCP," \
	"dirty rate $rate MiB/s, downtime limit $downtime ms"

# The destination, in the background, its output followed by a labeller
# that stops once the destination has exited.
"$kvmig" memtest --incoming tcp:127.0.0.1:0 >"$tmp/dest.log" 2>&1 &
dest_pid=$!
tail -n +1 -s 0.1 -f --pid="$dest_pid" "$tmp/dest.log" |
	label "[destination]" &
tail_pid=$!

uri=
for _ in $(seq 1 100); do
	uri=$(sed -n 's/^memtest: listening on \(tcp:[^ ]*\)$/\1/p' \
		"$tmp/dest.log" 2>/dev/null | head -n 1)
	[ -n "$uri" ] && break
	kill -0 "$dest_pid" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$uri" ]; then
	echo "demo: the destination did not start listening" >&2
	exit 1
fi

"$kvmig" memtest --size "$size" --dirty-rate "$rate" \
	--downtime-limit "$downtime" --to "$uri" 2>&1 | label "[source]     "
src_rc=${PIPESTATUS[0]}

# The destination ends by itself once the stream is loaded (or failed).
for _ in $(seq 1 300); do
	kill -0 "$dest_pid" 2>/dev/null || break
	sleep 0.1
done
if kill -0 "$dest_pid" 2>/dev/null; then
	echo "demo: the destination did not finish in 30 s; stopping it" >&2
	kill "$dest_pid"
fi
wait "$dest_pid"
dest_rc=$?
dest_pid=
wait "$tail_pid" 2>/dev/null

echo "== source exit $src_rc, destination exit $dest_rc"
if [ "$src_rc" -ne 0 ] || [ "$dest_rc" -ne 0 ]; then
	echo "== demo FAILED"
	exit 1
fi
echo "== demo OK: $size migrated live and verified on both sides"
