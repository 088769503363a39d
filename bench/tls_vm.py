#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TLS against plain, whole VM migrations over loopback (issue 12):

    bench/tls_vm.py [--build build] [--runs 3] [--against BUILD]

Cells: a 1 GiB guest dirtying 64 MiB/s and an idle 4 GiB guest; each
plain and with tls-creds (x509, certificates made by certtool in a temp
dir), on one channel and with two multifd channels. Runs alternate
(plain, TLS, plain, TLS, ...) so that the load of a shared machine hits
both alike. Prints a markdown table: median total time (query-migrate),
the TLS / plain ratio and the issue's targets (<= 1.5x on one channel,
<= 1.25x with two multifd channels), every run's time, the load average
at the start and the end, then bench/tls_bench's cipher and stream
figures from the same run.

--against BUILD (another build, e.g. main's): an A/B of the two builds
instead, each run going this build plain, this TLS, BUILD plain, BUILD
TLS, so a change to the TLS code is shown against the same load.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import tlslib  # noqa: E402
from vmlib import (VmSet, free_port, wait_migration,  # noqa: E402
                   workload_started)

CELLS = [("1 GiB, 64 MiB/s", "1G", "mem=64 rate=64"),
         ("4 GiB, idle", "4G", "mem=64 rate=0")]
MODES = [("1 channel", 0), ("2 multifd channels", 2)]
TARGET = {0: 1.5, 2: 1.25}


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(stat_path):
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def migration_cpu_s(pid):
    """CPU seconds of a kvmig process besides its vCPUs (whose guest work
    is the same with and without TLS): the process's total, which keeps
    the time of threads that ended (multifd channels), minus every vCPU
    thread. A figure the machine's load does not distort."""
    total = _cpu_ticks(f"/proc/{pid}/stat")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().startswith("vcpu"):
                    total -= _cpu_ticks(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            pass
    return total / TICK


def migrate_once(vms, pki, memory, append, tls, channels):
    src_objs = tlslib.x509_object(f"{pki}/client", "client") if tls else []
    dst_objs = tlslib.x509_object(f"{pki}/server", "server") if tls else []
    src = vms.boot("src", append, memory=memory, extra=src_objs)
    if not workload_started(src):
        raise RuntimeError(src.describe())
    time.sleep(2)
    port = free_port()
    dst = vms.incoming("dst", "defer", memory=memory, extra=dst_objs)
    qs, qd = vms.qmp(src), vms.qmp(dst)
    for q in (qs, qd):
        if tls:
            q.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})
        if channels:
            q.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "multifd", "state": True}])
            q.cmd("migrate-set-parameters",
                  **{"multifd-channels": channels})
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    cpu0 = migration_cpu_s(src.p.pid) + migration_cpu_s(dst.p.pid)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_migration(qs, timeout=120)
    cpu = migration_cpu_s(src.p.pid) + migration_cpu_s(dst.p.pid) - cpu0
    src.kill()
    dst.kill()
    if r.get("status") != "completed":
        raise RuntimeError(f"{r}\n{src.describe()}\n{dst.describe()}")
    return r["total-time"], cpu


def kvmig_of(build):
    return (os.path.join(build, "src", "cli", "kvmig"),
            os.path.join(build, "guest", "guest.elf"))


def measure(builds, pki, tmp, runs_n, memory, append, channels):
    """{(build, tls): ([ms...], [cpu s...])}, runs interleaved."""
    out = {(b, tls): ([], []) for b in builds for tls in (False, True)}
    for _ in range(runs_n):
        for b in builds:
            kvmig, guest = kvmig_of(b)
            for tls in (False, True):
                with VmSet(kvmig, guest, tmp) as vms:
                    ms, cpu = migrate_once(vms, pki, memory, append, tls,
                                           channels)
                out[(b, tls)][0].append(ms)
                out[(b, tls)][1].append(cpu)
    return out


def med(v):
    return statistics.median(v)


def print_ab(rows, builds, runs_n, load0, load):
    a, b = builds
    print(f"A/B: A = {a}, B = {b}. Loopback, x509 TLS 1.3 AES-128-GCM, "
          f"median of {runs_n} interleaved runs (A plain, A TLS, B plain, "
          f"B TLS, ...); load average {load0:.1f} at the start, "
          f"{load:.1f} at the end, on {os.cpu_count()} CPUs.\n")
    print("| guest | channels | plain ms A / B | TLS ms A / B "
          "| TLS / plain A / B | target | migration CPU s plain / TLS, A; B "
          "| runs TLS A / B (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, mode, channels, r in rows:
        pa, pb = med(r[(a, False)][0]), med(r[(b, False)][0])
        ta, tb = med(r[(a, True)][0]), med(r[(b, True)][0])
        ra, rb = ta / max(pa, 1), tb / max(pb, 1)
        ca, cb = med(r[(a, True)][1]), med(r[(b, True)][1])
        qa, qb = med(r[(a, False)][1]), med(r[(b, False)][1])
        each = (" ".join(map(str, r[(a, True)][0])) + " / " +
                " ".join(map(str, r[(b, True)][0])))
        t = TARGET[channels]
        print(f"| {label} | {mode} | {pa:.0f} / {pb:.0f} | {ta:.0f} / "
              f"{tb:.0f} | {ra:.2f} / {rb:.2f} | <= {t} A "
              f"{'met' if ra <= t else 'MISSED'} | {qa:.2f} / {ca:.2f}; "
              f"{qb:.2f} / {cb:.2f} "
              f"| {each} |")


def print_one(rows, build, runs_n, load0, load):
    print(f"Loopback, x509 TLS 1.3 AES-128-GCM, median of {runs_n} "
          f"interleaved runs; load average {load0:.1f} at the start, "
          f"{load:.1f} at the end, on {os.cpu_count()} CPUs.\n")
    print("| guest | channels | plain ms | TLS ms | TLS / plain | target "
          "| runs plain / TLS (ms) | migration CPU s plain / TLS |")
    print("|---|---|---|---|---|---|---|---|")
    for label, mode, channels, r in rows:
        p, t = med(r[(build, False)][0]), med(r[(build, True)][0])
        ratio = t / max(p, 1)
        target = TARGET[channels]
        each = (" ".join(map(str, r[(build, False)][0])) + " / " +
                " ".join(map(str, r[(build, True)][0])))
        print(f"| {label} | {mode} | {p:.0f} | {t:.0f} | {ratio:.2f} | "
              f"<= {target} {'met' if ratio <= target else 'MISSED'} | "
              f"{each} | {med(r[(build, False)][1]):.2f} / "
              f"{med(r[(build, True)][1]):.2f} |")
    print("\nmigration CPU s: both processes' CPU time from `migrate` to "
          "completed, their vCPU threads left out (medians); the load "
          "does not distort it as it does wall time.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", help="another build: an A/B of the two")
    ap.add_argument("--cells", help="only these rows, numbered from 1 in "
                    "the table's order (e.g. 1,2)")
    args = ap.parse_args()
    builds = [args.build] + ([args.against] if args.against else [])
    missing = tlslib.certtool_missing()
    if missing:
        print(f"tls_vm: {missing}", file=sys.stderr)
        return 1
    rows = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kvmig-tlsbench-") as tmp:
        pki = tlslib.make_x509(f"{tmp}/pki")
        cells = [(c, m) for c in CELLS for m in MODES]
        if args.cells:
            cells = [cells[int(i) - 1] for i in args.cells.split(",")]
        for (label, memory, append), (mode, channels) in cells:
            rows.append((label, mode, channels,
                         measure(builds, pki, tmp, args.runs, memory,
                                 append, channels)))
    load = os.getloadavg()[0]
    if args.against:
        print_ab(rows, builds, args.runs, load0, load)
        return 0
    print_one(rows, args.build, args.runs, load0, load)
    print()
    out = subprocess.run([os.path.join(args.build, "bench", "tls_bench"),
                          "1024"], capture_output=True, text=True)
    print("```\n" + out.stdout + "```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
