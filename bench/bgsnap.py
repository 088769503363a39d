#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Background snapshot (issue 13, item 4): what a snapshot costs the guest
that keeps running.

One source VM per VMM runs the project's guest writing its working set
flat out. Windows alternate on the same running guest: A (nothing) and B
(a background snapshot to a file, capped at --bandwidth so that it lasts
long enough to measure), A, B, ..., and the VMMs take turns round by
round (the one not measured is paused with QMP stop). For every window:

- the guest's write rate: pages written per second by all workload vCPUs
  together, from the `writes=` counters of the guest's status lines
  (one per vCPU per second, host-timestamped), over the window;
- the longest heartbeat gap (heartbeats every 1 ms per vCPU,
  host-timestamped); in a B window the stop that starts the snapshot is
  reported apart (QMP's "downtime") and the longest gap while the guest
  runs is the longest one after it.

kvmig writes to file:PATH, QEMU 7.2 (no file: URI) to exec:cat > PATH.
Usage: bench/bgsnap.py [--build build] [--vmms kvmig,qemu] [--rounds 3]
       [--memory 1G] [--mem 768] [--bandwidth 256] [--out FILE]
"""
import argparse
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "compare"))
import vmlib  # noqa: E402
import vmms  # noqa: E402

STATUS = re.compile(rb"guest: vcpu=(\d+) t=\d+ .*? writes=(\d+)")
BOOT_TIMEOUT_S = 120
WARMUP_S = 3.0


def status_points(vm):
    """(host time, vcpu, writes) of every status line."""
    out, buf = [], b""
    with vm.cond:
        chunks = list(vm.chunks)
    for t, data in chunks:
        buf += data
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            m = STATUS.search(ln)
            if m:
                out.append((t, int(m.group(1)), int(m.group(2))))
    return out


def write_rate(vm, a, b):
    """Pages written per second over [a, b], all vCPUs together."""
    per = {}
    for t, cpu, w in status_points(vm):
        if a <= t <= b:
            per.setdefault(cpu, []).append((t, w))
    rate = 0.0
    for pts in per.values():
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            rate += (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return rate


def gaps(vm, a, b):
    """(gap ms, start) between consecutive heartbeats in [a, b]."""
    ts = sorted(t for t in vm.heartbeat_times() if a <= t <= b)
    return [((y - x) * 1000.0, x) for x, y in zip(ts, ts[1:])]


def connect(vm, path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                return vmlib.Qmp(path, timeout=60)
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"no QMP socket at {path}\n{vm.describe()}")


def configure(vmm, q, bandwidth):
    caps = [{"capability": "background-snapshot", "state": True}]
    if vmm.name == "qemu":
        caps.append({"capability": "events", "state": False})
    q.cmd("migrate-set-capabilities", capabilities=caps)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth})


def snapshot_uri(vmm, path):
    return f"file:{path}" if vmm.name == "kvmig" else f"exec:cat > {path}"


def window_b(vmm, vm, q, path):
    t0 = time.monotonic()
    q.cmd("migrate", uri=snapshot_uri(vmm, path))
    r = vmlib.wait_migration(q, timeout=300)
    t1 = time.monotonic()
    if r.get("status") != "completed":
        raise RuntimeError(f"{vmm.name}: snapshot ended {r}\n{vm.describe()}")
    stop_ms = float(r.get("downtime", 0))
    g = gaps(vm, t0, t1)
    # The stop: the longest gap that begins before it can have ended.
    early = [x for x in g if x[1] <= t0 + (stop_ms + 50) / 1000.0]
    stop_gap = max(early)[0] if early else 0.0
    running = [x[0] for x in g if x not in early] or [0.0]
    size = os.path.getsize(path)
    os.unlink(path)
    return {"kind": "B", "s": t1 - t0, "rate": write_rate(vm, t0, t1),
            "stop_ms": stop_ms, "stop_gap": stop_gap,
            "max_gap": max(running), "bytes": size}


def window_a(vm, seconds):
    t0 = time.monotonic()
    time.sleep(seconds)
    t1 = time.monotonic()
    g = [x[0] for x in gaps(vm, t0, t1)] or [0.0]
    return {"kind": "A", "s": t1 - t0, "rate": write_rate(vm, t0, t1),
            "max_gap": max(g)}


class Source:
    """One VMM's source VM, booted once; paused (QMP stop) while another
    VMM's rounds run, so that the rounds interleave VMM by VMM and no
    guest competes with the one measured."""

    def __init__(self, vmm, args, tmp):
        self.vmm = vmm
        self.qpath = os.path.join(tmp, f"{vmm.name}.qmp")
        self.path = os.path.join(tmp, f"{vmm.name}.snap")
        append = f"mem={args.mem} rate=100000 pattern=random"
        self.vm = vmlib.Vm(vmm.source_argv(args.memory, 2, append,
                                           self.qpath), f"{vmm.name} source")
        self.q = None
        self.rows = []

    def boot(self, args):
        if not self.vm.wait_console(rb"workload started", BOOT_TIMEOUT_S):
            raise RuntimeError(f"{self.vmm.name}: no workload\n"
                               + self.vm.describe())
        self.q = connect(self.vm, self.qpath)
        configure(self.vmm, self.q, args.bandwidth << 20)
        self.q.cmd("stop")

    def round(self, i):
        self.q.cmd("cont")
        time.sleep(WARMUP_S)
        b = window_b(self.vmm, self.vm, self.q, self.path)
        a = window_a(self.vm, max(b["s"], 2.5))
        self.q.cmd("stop")
        self.rows += [a, b]
        print(f"# {self.vmm.name} round {i + 1}: A {a['rate'] / 1e3:.0f} k "
              f"pages/s, gap {a['max_gap']:.1f} ms | B {b['s']:.2f} s, "
              f"{b['rate'] / 1e3:.0f} k pages/s, stop {b['stop_ms']:.0f} "
              f"ms (gap {b['stop_gap']:.1f}), longest gap running "
              f"{b['max_gap']:.1f} ms; load {os.getloadavg()[0]:.1f}",
              flush=True)

    def close(self):
        try:
            if self.q:
                self.q.cmd("cont")
            self.vm.send_console(b"q")
        except (OSError, vmlib.QmpError):
            pass
        if self.vm.wait(20) is None:
            self.vm.kill()


def summarize(name, rows):
    a = [r for r in rows if r["kind"] == "A"]
    b = [r for r in rows if r["kind"] == "B"]
    ra = statistics.median(r["rate"] for r in a)
    rb = statistics.median(r["rate"] for r in b)
    return (f"| {name} | {len(b)} | {statistics.median(r['s'] for r in b):.2f} "
            f"| {statistics.median(r['stop_ms'] for r in b):.0f} "
            f"| {statistics.median(r['max_gap'] for r in b):.1f} "
            f"(max {max(r['max_gap'] for r in b):.1f}) "
            f"| {statistics.median(r['max_gap'] for r in a):.1f} "
            f"| {ra / 1e3:.0f} k | {rb / 1e3:.0f} k | {rb / ra:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--vmms", default="kvmig,qemu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--mem", type=int, default=768)
    ap.add_argument("--bandwidth", type=int, default=256, help="MiB/s")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = ["| VMM | snapshots | time s | stop ms | longest gap while "
             "running ms, median | longest gap without a snapshot ms | "
             "write rate without (pages/s) | during | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bgsnap-bench-") as tmp:
        sources = []
        try:
            for vmm in vmms.make(args.vmms.split(","), args.build):
                why = vmm.check()
                if why:
                    print(f"# {vmm.name}: skipped: {why}")
                    continue
                src = Source(vmm, args, tmp)
                sources.append(src)
                src.boot(args)
            for i in range(args.rounds):
                for src in sources:
                    src.round(i)
        except RuntimeError as e:
            print(f"# {str(e)[:2000]}")
        finally:
            for src in sources:
                src.close()
                if src.rows:
                    results[src.vmm.name] = src.rows
    for name, rows in results.items():
        lines.append(summarize(name, rows))
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"guest {args.memory}, working set {args.mem} MiB written "
                    f"flat out (pattern=random), snapshots capped at "
                    f"{args.bandwidth} MiB/s; load {os.getloadavg()}\n\n"
                    + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
