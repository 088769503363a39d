#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Background snapshot (issue 13, item 4): what a snapshot costs the guest
that keeps running.

One source VM per VMM runs the project's guest writing its working set
flat out. Windows alternate on the same running guest: A (nothing) and B
(a background snapshot to a file), A, B, ..., and the VMMs take turns
round by round (the one not measured is paused with QMP stop). Two
profiles, each a row of the report:

  uncapped  (the main row) a 4 GiB guest writing a 3 GiB working set,
            the snapshot written as fast as the disk takes it (no
            max-bandwidth): the issue's premise;
  capped    a 1 GiB guest writing 768 MiB, the snapshot capped at
            256 MiB/s (then the guest's write rate during it is the
            cap's: its faults wait for the writer);
  uncapped-1vcpu  the uncapped one with a single vCPU: one host CPU is
            left for the VMM (the snapshot's fault thread and writer),
            as on real hosts; with 2 vCPUs on this 2-CPU host the
            snapshot's threads can only run on a vCPU's core.

For every window:

- the guest's write rate: pages written per second by all workload vCPUs
  together, from the `writes=` counters of the guest's status lines
  (one per vCPU per second), over the window;
- the guest's longest pause, measured by the guest itself: every status
  line carries `maxgap_us=`, the longest time between two turns of that
  vCPU's loop in the second before it (its TSC, guest/workload.c), so a
  host that is slow to read the console does not count. In a B window
  the stop that starts the snapshot is reported apart (QMP's
  "downtime"), and so is the status line of each vCPU whose second held
  it; "while running" is the longest maxgap_us of the others;
- the host's view, secondary: the longest gap between host-timestamped
  heartbeats (1 ms per vCPU); with the vCPUs flat out on a 2-CPU host
  the console reader itself is starved, so this shows gaps with no
  snapshot at all.

kvmig writes to file:PATH, QEMU 7.2 (no file: URI) to exec:cat > PATH.
The disk's own O_DIRECT write speed is measured before and after.
--vmms takes kvmig, qemu, or LABEL=kvmig:BUILD to compare two builds
(A/B): their rounds interleave like the VMMs'.

Usage: bench/bgsnap.py [--build build] [--vmms kvmig,qemu] [--rounds 3]
       [--profiles uncapped,capped,uncapped-1vcpu] [--dir /var/tmp]
       [--out FILE]
"""
import argparse
import mmap
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

STATUS = re.compile(rb"guest: vcpu=(\d+) t=\d+ .*? writes=(\d+) .*? "
                    rb"maxgap_us=(\d+)")
BG_STATS = re.compile(r"background snapshot: (\d+) write faults, (\d+) pages "
                      r"copied by the fault thread, longest fault ([0-9.]+) "
                      r"ms, (\d+) waits for room(?:, pool high-water "
                      r"(\d+) pages)?(?:, (\d+) pages alone)?")
BOOT_TIMEOUT_S = 300
WARMUP_S = 3.0
# A status line covers the second before it: one whose host time is this
# far into an A window covers nothing of the window before.
LINE_S = 1.05

PROFILES = {
    "uncapped": {"memory": "4G", "mem": 3072, "bandwidth": 0, "cpus": 2},
    "capped": {"memory": "1G", "mem": 768, "bandwidth": 256, "cpus": 2},
    # One vCPU: a host CPU is left for the VMM's own threads (the
    # snapshot's fault thread and writer), the common case on real hosts.
    "uncapped-1vcpu": {"memory": "4G", "mem": 3072, "bandwidth": 0,
                       "cpus": 1},
}


def status_points(vm):
    """(host time, vcpu, writes, maxgap ms) of every status line."""
    out, buf = [], b""
    with vm.cond:
        chunks = list(vm.chunks)
    for t, data in chunks:
        buf += data
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            m = STATUS.search(ln)
            if m:
                out.append((t, int(m.group(1)), int(m.group(2)),
                            int(m.group(3)) / 1000.0))
    return out


def write_rate(points, a, b):
    """Pages written per second over [a, b], all vCPUs together."""
    per = {}
    for t, cpu, w, _ in points:
        if a <= t <= b:
            per.setdefault(cpu, []).append((t, w))
    rate = 0.0
    for pts in per.values():
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            rate += (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return rate


def host_gaps(vm, a, b):
    """(gap ms, start) between consecutive heartbeats in [a, b]."""
    ts = sorted(t for t in vm.heartbeat_times() if a <= t <= b)
    return [((y - x) * 1000.0, x) for x, y in zip(ts, ts[1:])]


def stop_lines(points, after, before):
    """Per vCPU, the first status line read after `after` (the last
    heartbeat before the stop; the console is one ordered stream, so a
    line printed before the stop was read by then): the second that held
    the stop. Lines read after `before` are not it."""
    first = {}
    for p in points:
        if after < p[0] <= before and p[1] not in first:
            first[p[1]] = p
    return list(first.values())


def guest_gap(points, a, b, skip=()):
    gaps = [p[3] for p in points if a < p[0] <= b and p not in skip]
    return max(gaps) if gaps else 0.0


def connect(path, vm, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                return vmlib.Qmp(path, timeout=60)
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"no QMP socket at {path}\n{vm.describe()}")


def is_kvmig(vmm):
    return isinstance(vmm, vmms.Kvmig)


def configure(vmm, q, bandwidth):
    caps = [{"capability": "background-snapshot", "state": True}]
    if not is_kvmig(vmm):
        caps.append({"capability": "events", "state": False})
    q.cmd("migrate-set-capabilities", capabilities=caps)
    # 0: no limit for both (QEMU 7.2's rate limit is off at 0).
    q.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth})


def snapshot_uri(vmm, path):
    return f"file:{path}" if is_kvmig(vmm) else f"exec:cat > {path}"


def disk_write_speed(directory, gib=1):
    """The disk's sequential write speed, O_DIRECT, 1 MiB writes, fsync."""
    chunk = 1 << 20
    buf = mmap.mmap(-1, 16 * chunk)
    buf.write(os.urandom(16 * chunk))
    path = os.path.join(directory, "disk-speed.img")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT,
                 0o600)
    try:
        t0 = time.monotonic()
        for i in range(gib * 1024):
            at = i % 16 * chunk
            os.pwrite(fd, memoryview(buf)[at:at + chunk], i * chunk)
        os.fsync(fd)
        return (gib << 30) / (time.monotonic() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


class Source:
    """One VMM's source VM, booted once; paused (QMP stop) while another
    VMM's rounds run, so that the rounds interleave VMM by VMM and no
    guest competes with the one measured."""

    def __init__(self, label, vmm, prof, tmp):
        self.label = label
        self.vmm = vmm
        self.prof = prof
        self.qpath = os.path.join(tmp, f"{label}.qmp")
        self.path = os.path.join(tmp, f"{label}.snap")
        append = f"mem={prof['mem']} rate=100000 pattern=random"
        if is_kvmig(vmm):
            # The snapshot's own figures (faults, waits) at its end.
            os.environ["KVMIG_LOG"] = "info"
        argv = vmm.source_argv(prof["memory"], prof["cpus"], append,
                               self.qpath)
        self.vm = vmlib.Vm(argv, f"{label} source")
        os.environ.pop("KVMIG_LOG", None)
        self.q = None
        self.rows = []

    def boot(self):
        if not self.vm.wait_console(rb"workload started", BOOT_TIMEOUT_S):
            raise RuntimeError(f"{self.label}: no workload\n"
                               + self.vm.describe())
        self.q = connect(self.qpath, self.vm)
        configure(self.vmm, self.q, self.prof["bandwidth"] << 20)
        self.q.cmd("stop")

    def bg_stats(self):
        found = BG_STATS.findall(self.vm.stderr)
        return found[-1] if found else None

    def window_b(self):
        vm, q = self.vm, self.q
        t0 = time.monotonic()
        q.cmd("migrate", uri=snapshot_uri(self.vmm, self.path))
        r = vmlib.wait_migration(q, timeout=300)
        t1 = time.monotonic()
        if r.get("status") != "completed":
            raise RuntimeError(f"{self.label}: snapshot ended {r}\n"
                               f"{vm.describe()}")
        time.sleep(LINE_S)  # the status lines of the snapshot's last second
        stop_ms = float(r.get("downtime", 0))
        g = host_gaps(vm, t0, t1)
        # The stop: the longest gap that begins before it can have ended.
        early = [x for x in g if x[1] <= t0 + (stop_ms + 50) / 1000.0]
        stop = max(early) if early else (0.0, t0)
        running = [x[0] for x in g if x not in early] or [0.0]
        pts = status_points(vm)
        held = stop_lines(pts, stop[1], t1)
        size = os.path.getsize(self.path)
        os.unlink(self.path)
        return {"kind": "B", "s": t1 - t0, "rate": write_rate(pts, t0, t1),
                "stop_ms": stop_ms, "stop_gap": stop[0],
                "guest_stop_line": max((p[3] for p in held), default=0.0),
                "guest_gap": guest_gap(pts, t0, t1 + LINE_S, held),
                "host_gap": max(running), "bytes": size,
                "bg": self.bg_stats(), "load": os.getloadavg()[0]}

    def window_a(self, seconds):
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        g = [x[0] for x in host_gaps(self.vm, t0, t1)] or [0.0]
        pts = status_points(self.vm)
        return {"kind": "A", "s": t1 - t0, "rate": write_rate(pts, t0, t1),
                "guest_gap": guest_gap(pts, t0 + LINE_S, t1),
                "host_gap": max(g), "load": os.getloadavg()[0]}

    def round(self, i):
        self.q.cmd("cont")
        time.sleep(WARMUP_S)
        b = self.window_b()
        a = self.window_a(max(b["s"], 2.5) + LINE_S)
        self.q.cmd("stop")
        self.rows += [a, b]
        bg = b["bg"]
        print(f"# {self.label} round {i + 1}: A {a['rate'] / 1e3:.0f} k "
              f"pages/s, guest gap {a['guest_gap']:.1f} ms (host "
              f"{a['host_gap']:.1f}) | B {b['s']:.2f} s, "
              f"{b['rate'] / 1e3:.0f} k pages/s, stop {b['stop_ms']:.0f} ms "
              f"(guest's line with it {b['guest_stop_line']:.1f}), guest gap "
              f"running {b['guest_gap']:.1f} ms (host {b['host_gap']:.1f})"
              + (f", faults {bg[0]} copies {bg[1]} longest fault {bg[2]} ms "
                 f"pool waits {bg[3]} high-water {bg[4] or '?'} alone "
                 f"{bg[5] or '?'}" if bg else "")
              + f"; load {os.getloadavg()[0]:.1f}", flush=True)

    def close(self):
        try:
            if self.q:
                self.q.cmd("cont")
            self.vm.send_console(b"q")
        except (OSError, vmlib.QmpError):
            pass
        if self.vm.wait(20) is None:
            self.vm.kill()


HEADER = ("| VMM | snapshots | time s | stop ms | longest pause while running, "
          "guest's maxgap ms, median (max) | the same without a snapshot | "
          "guest's maxgap in the second with the stop | host view: longest "
          "heartbeat gap while running | host view: without | write rate "
          "without (pages/s) | during | ratio | load |")
RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"


def summarize(name, rows):
    a = [r for r in rows if r["kind"] == "A"]
    b = [r for r in rows if r["kind"] == "B"]
    med = statistics.median
    ra = med(r["rate"] for r in a)
    rb = med(r["rate"] for r in b)
    loads = " ".join(f"{r['load']:.1f}" for r in rows)
    return (f"| {name} | {len(b)} | {med(r['s'] for r in b):.2f} "
            f"| {med(r['stop_ms'] for r in b):.0f} "
            f"| {med(r['guest_gap'] for r in b):.1f} "
            f"(max {max(r['guest_gap'] for r in b):.1f}) "
            f"| {med(r['guest_gap'] for r in a):.1f} "
            f"(max {max(r['guest_gap'] for r in a):.1f}) "
            f"| {med(r['guest_stop_line'] for r in b):.1f} "
            f"| {med(r['host_gap'] for r in b):.1f} "
            f"| {med(r['host_gap'] for r in a):.1f} "
            f"| {ra / 1e3:.0f} k | {rb / 1e3:.0f} k | {rb / ra:.2f} "
            f"| {loads} |")


def parse_vmms(spec, build):
    """[(label, vmm)] from kvmig, qemu or LABEL=kvmig:BUILD."""
    out = []
    for item in spec.split(","):
        if "=" in item:
            label, rest = item.split("=", 1)
            kind, _, where = rest.partition(":")
            vmm = vmms.make([kind], where or build)[0]
        else:
            label, vmm = item, vmms.make([item], build)[0]
        out.append((label, vmm))
    return out


def run_profile(name, prof, targets, args, tmp):
    sources, results = [], {}
    try:
        for label, vmm in targets:
            why = vmm.check()
            if why:
                print(f"# {label}: skipped: {why}")
                continue
            sources.append(Source(label, vmm, prof, tmp))
        for src in sources:
            src.boot()
        for i in range(args.rounds):
            for src in (sources if i % 2 == 0 else sources[::-1]):
                src.round(i)
    except RuntimeError as e:
        print(f"# {name}: {str(e)[:2000]}")
    finally:
        for src in sources:
            src.close()
            if src.rows:
                results[src.label] = src.rows
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--vmms", default="kvmig,qemu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profiles", default="uncapped,capped,uncapped-1vcpu")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    targets = parse_vmms(args.vmms, args.build)
    text = []
    with tempfile.TemporaryDirectory(prefix="bgsnap-bench-",
                                     dir=args.dir) as tmp:
        disk = [disk_write_speed(tmp)]
        load0 = os.getloadavg()
        for name in args.profiles.split(","):
            prof = PROFILES[name]
            results = run_profile(name, prof, targets, args, tmp)
            cap = (f"capped at {prof['bandwidth']} MiB/s"
                   if prof["bandwidth"] else "no max-bandwidth")
            text += [f"**{name}**: guest {prof['memory']}, {prof['cpus']} "
                     f"vCPU(s), working set "
                     f"{prof['mem']} MiB written flat out (pattern=random), "
                     f"snapshot {cap}", "", HEADER, RULE]
            text += [summarize(label, rows) for label, rows in
                     results.items()]
            text.append("")
        disk.append(disk_write_speed(tmp))
    head = (f"{args.rounds} rounds, interleaved; medians. Disk (O_DIRECT "
            f"1 MiB writes) {disk[0] / 1e9:.2f} / {disk[1] / 1e9:.2f} GB/s "
            f"before / after; load average at the start "
            f"{' '.join(f'{x:.2f}' for x in load0)}, at the end "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.\n")
    out = head + "\n" + "\n".join(text)
    print(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
