#!/usr/bin/env bash
# Issue 12's benchmarks in one run: `make bench-tls`.
#
#   bench/tls.sh [BUILD_DIR]
#
#   1. bench/tls_vm.py: TLS against plain on loopback, the 1 GiB guest at
#      64 MiB/s and an idle 4 GiB guest, one channel and 2 multifd
#      channels, TLS_RUNS runs interleaved (plain, TLS, plain, ...),
#      medians, with bench/tls_bench (GnuTLS's AES-GCM, kvmig's channels
#      plain and TLS) at the end;
#   2. gnutls-cli --benchmark-ciphers: the machine's AES-GCM speed;
#   3. bench/compare/main.py --caps tls: kvmig against QEMU 7.2 with the
#      same certificates, loopback and 10 Gbit/s (TLS_SIZES x TLS_RATES,
#      TLS_CMP_RUNS runs alternating the VMMs);
#   4. the 1 Gbit/s cell (1G, 64 MiB/s): plain and TLS, both VMMs,
#      TLS_1G_RUNS runs: what TLS costs where the link is the limit.
#
# Writes bench/results/tls-latest.md (everything, with the load average
# before and after each part); the compare runs stay in
# BUILD_DIR/bench-tls/*.json. Shaped links need root.
set -euo pipefail

build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${TLS_OUT:-$root/bench/results/tls-latest.md}
dir="$build/bench-tls"
mkdir -p "$dir"
sizes=${TLS_SIZES:-1G,4G}
rates=${TLS_RATES:-0,64,256,1024}
main=("python3" "$here/compare/main.py" --build "$build")

load() { cut -d' ' -f1-3 /proc/loadavg; }
log() { echo "tls: $*" >&2; }

{
	echo "# Issue 12: TLS benchmarks"
	echo
	echo "- command: \`bench/tls.sh $build\`"
	echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), kvmig $(git -C "$root" rev-parse --short HEAD)"
	echo "- machine: $(nproc) CPUs, $(uname -r); load average $(load) at the start"
	echo
	echo "## TLS against plain, loopback (bench/tls_vm.py)"
	echo
} >"$out.part"

log "tls_vm.py (load $(load))"
python3 "$here/tls_vm.py" --build "$build" --runs "${TLS_RUNS:-5}" >>"$out.part"

log "gnutls-cli --benchmark-ciphers (load $(load))"
{
	echo
	echo "## AES-GCM on this machine (gnutls-cli --benchmark-ciphers, load $(load))"
	echo
	echo '```'
	gnutls-cli --benchmark-ciphers 2>&1 | grep -E 'AES-(128|256)-GCM|CHACHA20' || true
	echo '```'
	echo
} >>"$out.part"

log "kvmig against QEMU, TLS on (load $(load))"
"${main[@]}" --caps tls --bench tls --links loopback,10g=10gbit \
	--sizes "$sizes" --rates "$rates" --runs "${TLS_CMP_RUNS:-2}" \
	--json "$dir/compare.json" --out "$dir/compare.md" >/dev/null
log "the 1 Gbit/s cell (load $(load))"
"${main[@]}" --caps plain,tls --bench tls-1g --links 1g=1gbit \
	--sizes 1G --rates 64 --runs "${TLS_1G_RUNS:-3}" \
	--json "$dir/1g.json" --out "$dir/1g.md" >/dev/null
{
	echo "## kvmig against QEMU 7.2, TLS on (bench/compare, load $(load) at the end)"
	echo
	sed -n '/^## TLS on/,/^## multifd throughput/p' "$dir/compare.md" | sed '$d'
	echo "## The 1 Gbit/s link: plain and TLS"
	echo
	sed -n '/^| link/,/^$/p' "$dir/1g.md"
	echo "### Every run"
	echo
	sed -n '/^## Runs/,$p' "$dir/compare.md" | sed 1,2d
	sed -n '/^## Runs/,$p' "$dir/1g.md" | sed 1,4d
} >>"$out.part"
mv "$out.part" "$out"
log "wrote $out"
