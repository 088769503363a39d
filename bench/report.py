#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/run.sh's second half: reads the measurements it left in --tmp,
takes medians, prints the table and writes bench/results/latest.md.

Inputs in TMP: membw, tcpbw (bytes/s, one a line), firsttouch (the tool's
key=value lines), and per memtest run TAG-N.src.json / TAG-N.dest.json
(each side's `memtest --json` summary) for TAG in idle, rndpre, rndfresh.
"""
import argparse
import glob
import json
import os
import statistics

GIB = float(1 << 30)


def numbers(path):
    with open(path) as f:
        return [float(line) for line in f if line.strip()]


def kv_lines(path, key):
    out = []
    with open(path) as f:
        for line in f:
            for word in line.split():
                k, _, v = word.partition("=")
                if k == key:
                    out.append(float(v))
    return out


def size_bytes(text):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text[-1] in mult:
        return float(text[:-1]) * mult[text[-1]]
    return float(text)


def memtest_runs(tmp, tag):
    """Per run: the source's and the destination's summaries, and derived
    figures (times in ms, throughputs in bytes/s)."""
    runs = []
    n = 1
    while os.path.exists(os.path.join(tmp, f"{tag}-{n}.src.json")):
        with open(os.path.join(tmp, f"{tag}-{n}.src.json")) as f:
            src = json.loads(f.readline())
        with open(os.path.join(tmp, f"{tag}-{n}.dest.json")) as f:
            dst = json.loads(f.readline())
        total = max(src["total_ms"], 1)
        digest = src["digest_ms"] + dst["digest_ms"]
        migration = max(total - digest, 1)
        runs.append({
            "src": src, "dst": dst, "total_ms": total,
            "digest_src_ms": src["digest_ms"],
            "digest_dst_ms": dst["digest_ms"],
            "digest_ms": digest, "migration_ms": migration,
            "bps_total": src["transferred"] * 1000.0 / total,
            "bps_migration": src["transferred"] * 1000.0 / migration,
        })
        n += 1
    if not runs:
        raise SystemExit(f"bench: no memtest results for {tag}")
    return runs


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def med_src(runs, key):
    return statistics.median(r["src"][key] for r in runs)


def verdict(ok):
    return "met" if ok else "MISSED"


def gibs(bps):
    return f"{bps / GIB:.2f} GiB/s"


def random_row(name, runs, ref_bps, ref_name, target):
    """A random-pages row: throughput over total time and over migration
    time, both as ratios of ref_bps."""
    t, m = med(runs, "bps_total"), med(runs, "bps_migration")
    detail = (f"{gibs(t)} over total time {med(runs, 'total_ms'):.0f} ms; "
              f"{gibs(m)} over migration time "
              f"{med(runs, 'migration_ms'):.0f} ms (total - digests "
              f"{med(runs, 'digest_src_ms'):.0f} + "
              f"{med(runs, 'digest_dst_ms'):.0f} ms); downtime "
              f"{med_src(runs, 'downtime_ms'):.0f} ms, "
              f"{med_src(runs, 'passes'):.0f} passes")
    ratio = f"{t / ref_bps:.2f} x {ref_name} (total); " \
            f"{m / ref_bps:.2f} x {ref_name} (migration)"
    if target:
        v = f"total: {verdict(t >= 0.8 * ref_bps)}; migration: " \
            f"{verdict(m >= 0.8 * ref_bps)}"
        tgt = f">= 0.8 x {ref_name}"
    else:
        v = "(not a target: shows the first-touch limit)"
        tgt = f"(info) vs {ref_name}"
    return f"| {name} | {detail} | {tgt} | {ratio} | {v} |"


def main():
    ap = argparse.ArgumentParser()
    for opt in ("tmp", "runs", "idle-size", "random-size", "started",
                "command", "machine", "out"):
        ap.add_argument("--" + opt, required=True)
    a = ap.parse_args()

    memcpy_bps = statistics.median(numbers(os.path.join(a.tmp, "membw")))
    tcp_bps = statistics.median(numbers(os.path.join(a.tmp, "tcpbw")))
    ft_path = os.path.join(a.tmp, "firsttouch")
    ft_bps = statistics.median(kv_lines(ft_path, "first_bytes_per_sec"))
    ft2_bps = statistics.median(kv_lines(ft_path, "second_bytes_per_sec"))
    fti_path = os.path.join(a.tmp, "firsttouch-idle")
    fti_bps = statistics.median(kv_lines(fti_path, "first_bytes_per_sec"))
    idle = memtest_runs(a.tmp, "idle")
    rndpre = memtest_runs(a.tmp, "rndpre")
    rndfresh = memtest_runs(a.tmp, "rndfresh")

    idle_ref_ms = size_bytes(a.idle_size) / memcpy_bps * 1000.0
    idle_total, idle_mig = med(idle, "total_ms"), med(idle, "migration_ms")
    fresh_ref = min(tcp_bps, ft_bps)
    fresh_ref_name = "TCP" if tcp_bps <= ft_bps else "first-touch"
    fresh_t = med(rndfresh, "bps_total")
    rs, ri = a.random_size, a.idle_size

    rows = [
        "| measurement | result | target | ratio | verdict |",
        "|---|---|---|---|---|",
        f"| memcpy bandwidth, 1 GiB buffer | {gibs(memcpy_bps)} | "
        "(yardstick) | | |",
        f"| loopback TCP, one stream | {gibs(tcp_bps)} | (yardstick) | | |",
        f"| first touch of fresh anonymous memory, 1 GiB (memset) | "
        f"{gibs(ft_bps)} (second touch {gibs(ft2_bps)}) | (yardstick: "
        "what a destination receiving into fresh memory can reach) | | |",
        f"| first touch of fresh anonymous memory after 3 s idle, 1 GiB | "
        f"{gibs(fti_bps)} | (yardstick: the same once the host has taken "
        "back free memory) | | |",
        random_row(f"memtest {rs} random pages, pre-allocated destination "
                   "(`--incoming --size`)", rndpre, tcp_bps, "TCP", True),
        random_row(f"memtest {rs} random pages, destination in fresh "
                   "memory", rndfresh, fresh_ref,
                   f"min(TCP, first-touch) = {fresh_ref_name}", False)
        [:-len(" |")] + f"; total time vs first touch after idle: "
        f"{fresh_t / fti_bps:.2f} x |",
        f"| memtest idle {ri} (zero pages) | migration time "
        f"{idle_mig:.0f} ms = total {idle_total:.0f} ms - digests "
        f"{med(idle, 'digest_src_ms'):.0f} + "
        f"{med(idle, 'digest_dst_ms'):.0f} ms; "
        f"{med_src(idle, 'zero_pages'):.0f} zero pages, "
        f"{med_src(idle, 'transferred'):.0f} bytes, downtime "
        f"{med_src(idle, 'downtime_ms'):.0f} ms | migration time <= 2 x "
        f"{idle_ref_ms:.0f} ms ({ri} at memcpy speed) | "
        f"{idle_mig / idle_ref_ms:.2f} x memcpy time (migration); "
        f"{idle_total / idle_ref_ms:.2f} x (total) | "
        f"migration: {verdict(idle_mig <= 2 * idle_ref_ms)}; total: "
        f"{verdict(idle_total <= 2 * idle_ref_ms)} |",
    ]
    table = "\n".join(rows)
    print()
    print(table)

    def run_list(runs):
        return "; ".join(
            f"total {r['total_ms']} ms, digest {r['digest_src_ms']:.1f} + "
            f"{r['digest_dst_ms']:.1f} ms, downtime "
            f"{r['src']['downtime_ms']} ms, {r['src']['transferred']} "
            f"bytes, {r['src']['passes']} passes"
            + (f", pre-allocation {r['dst']['prealloc_ms']:.0f} ms"
               if r['dst'].get('preallocated') else "")
            for r in runs)

    with open(os.path.join(a.tmp, "firsttouch")) as f:
        ft_lines = [line.strip() for line in f if line.strip()]
    with open(fti_path) as f:
        fti_lines = [line.strip() for line in f if line.strip()]
    with open(a.out, "w") as f:
        f.write(f"""# kvmig benchmarks

Measured {a.started} with `{a.command}` (`make bench`); median of {a.runs}
runs each.

{table}

How to read it:

- Throughput is bytes on the wire (source `transferred`) per time. "Total"
  is the source's total time, from the start to the destination's
  confirmation. It includes the digest that memtest computes on both sides
  while the workload is stopped (XXH3-128 of the region, verification, not
  migration). "Migration" time is total time minus both digest times.
- The pre-allocated destination (`memtest --incoming --size`) owns its RAM
  before the migration starts, as a VMM's destination does (QEMU's
  `-mem-prealloc`). Its pre-allocation time is not part of the migration and
  is listed in the runs below.
- A destination that receives into fresh memory pays the first write to
  every page (fault, zeroing, and on this VM the host backing it). That row
  is compared with min(TCP, first-touch) so that this limit is visible and
  not hidden.

Runs:

- memcpy (bytes/s): {' '.join(f'{v:.0f}' for v in numbers(os.path.join(a.tmp, 'membw')))}
- TCP (bytes/s): {' '.join(f'{v:.0f}' for v in numbers(os.path.join(a.tmp, 'tcpbw')))}
- first touch: {' | '.join(ft_lines)}
- first touch after 3 s idle: {' | '.join(fti_lines)}
- idle {ri}: {run_list(idle)}
- random {rs}, pre-allocated destination: {run_list(rndpre)}
- random {rs}, fresh destination: {run_list(rndfresh)}

Machine:

{a.machine}
""")


if __name__ == "__main__":
    main()
