#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Where the guest's pauses and write rate go, with and without a
background snapshot: the kernel's tracefs beside bench/bgsnap.py's guest.

One kvmig source VM (a bgsnap.py profile) runs the project's guest
writing its working set flat out. For each window (A: nothing, B: a
background snapshot to a file) the kernel traces KVM's exits and entries,
its page faults, the MMU notifier's unmaps and agings, shadow-page zaps
and creations, scheduler switches, and the memory manager's own work
(compaction, khugepaged, page migration, DAMON), on the `mono` clock,
which is Python's time.monotonic(), the clock the console reader stamps
the guest's status lines with. Then, per window:

- counts: exits by reason per vCPU, KVM page faults, userspace exits,
  MMU-notifier unmaps (and MiB), agings, shadow pages zapped and created,
  the memory manager's events, context switches of the vCPU threads;
- the guest's long gaps (status lines with maxgap_us over --gap-ms): for
  each, the vCPU thread's longest interval outside the guest in the
  second that line covers, and what it was: time off its CPU (preempted
  or sleeping, and who ran instead), the exit that began it, KVM page
  faults in it, and the memory-manager events that overlap it;
- per CPU, the longest stretch without any trace event (a CPU the
  hypervisor below this host takes away shows as a hole: the vCPU
  thread never left guest mode, yet the guest saw time pass), and the
  host's steal time from /proc/stat.

Needs root and tracefs (mounted here if it is not). Usage:
  bench/bgsnap_trace.py [--build build] [--profile uncapped]
      [--windows A,B,A,B] [--seconds 3] [--gap-ms 5] [--keep DIR]
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bgsnap  # noqa: E402
import vmlib  # noqa: E402  (bgsnap put tests/integration on the path)
import vmms  # noqa: E402

TRACEFS = "/sys/kernel/tracing"
EVENTS = [
    "kvm/kvm_exit", "kvm/kvm_entry", "kvm/kvm_page_fault",
    "kvm/kvm_userspace_exit", "kvm/kvm_unmap_hva_range", "kvm/kvm_age_hva",
    "kvm/kvm_test_age_hva", "kvmmmu/kvm_mmu_prepare_zap_page",
    "kvmmmu/kvm_mmu_zap_all_fast", "kvmmmu/kvm_mmu_get_page",
    "sched/sched_switch", "compaction/mm_compaction_begin",
    "compaction/mm_compaction_end", "huge_memory/mm_collapse_huge_page",
    "huge_memory/mm_khugepaged_scan_pmd", "migrate/mm_migrate_pages",
    "damon/damon_aggregated", "damon/damos_before_apply",
    "thp/set_migration_pmd",
]
# Only shadow pages KVM had to create (a lookup that found one is not news).
FILTERS = {"kvmmmu/kvm_mmu_get_page": "created == 1"}
LINE = re.compile(r"^\s*(.*?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): "
                  r"(\w+): (.*)$")
MM_EVENTS = ("mm_compaction_begin", "mm_compaction_end",
             "mm_collapse_huge_page", "mm_khugepaged_scan_pmd",
             "mm_migrate_pages", "damon_aggregated", "damos_before_apply",
             "set_migration_pmd",
             "kvm_unmap_hva_range", "kvm_age_hva", "kvm_test_age_hva",
             "kvm_mmu_zap_all_fast")


def tw(name, value):
    with open(os.path.join(TRACEFS, name), "w") as f:
        f.write(value)


def trace_setup(buffer_kb):
    if not os.path.exists(os.path.join(TRACEFS, "trace")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS],
                       check=True)
    tw("tracing_on", "0")
    tw("trace_clock", "mono")
    tw("buffer_size_kb", str(buffer_kb))
    tw("set_event", "")
    for ev in EVENTS:
        path = os.path.join(TRACEFS, "events", ev)
        if not os.path.isdir(path):
            print(f"# tracefs: no event {ev} here, not traced")
            continue
        if ev in FILTERS:
            tw(f"events/{ev}/filter", FILTERS[ev])
        tw(f"events/{ev}/enable", "1")


def trace_teardown():
    tw("tracing_on", "0")
    tw("set_event", "")
    for ev in FILTERS:
        if os.path.isdir(os.path.join(TRACEFS, "events", ev)):
            tw(f"events/{ev}/filter", "0")
    tw("trace", "")
    tw("buffer_size_kb", "1408")


def steal_ticks():
    """Per CPU, the steal column of /proc/stat (USER_HZ ticks)."""
    out = {}
    with open("/proc/stat") as f:
        for ln in f:
            if ln.startswith("cpu") and ln[3].isdigit():
                fields = ln.split()
                out[fields[0]] = int(fields[8])
    return out


def parse(path):
    evs = []
    with open(path, errors="replace") as f:
        for ln in f:
            m = LINE.match(ln)
            if m:
                evs.append((float(m.group(4)), int(m.group(3)),
                            m.group(1).strip(), int(m.group(2)),
                            m.group(5), m.group(6)))
    return evs


def vcpu_tids(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        m = re.fullmatch(r"vcpu(\d+)", comm)
        if m:
            out[int(tid)] = int(m.group(1))
    return out


def exit_reason(detail):
    m = re.search(r"reason (.*?) rip", detail)
    return m.group(1).strip() if m else "?"


class Timeline:
    """One vCPU thread's intervals outside the guest and off its CPU."""

    def __init__(self):
        self.out = []      # (start, end, reason, page faults)
        self.off = []      # (start, end, state, cpu)
        self._exit = None
        self._pf = 0
        self._off = None

    def exit(self, t, reason):
        self._exit = (t, reason)
        self._pf = 0

    def entry(self, t):
        if self._exit:
            self.out.append((self._exit[0], t, self._exit[1], self._pf))
        self._exit = None

    def switched_out(self, t, state, cpu):
        self._off = (t, state, cpu)

    def switched_in(self, t):
        if self._off:
            self.off.append((self._off[0], t, self._off[1], self._off[2]))
        self._off = None


def analyse(evs, tids, t0, t1, pts, gap_ms):
    lines = []
    counts = collections.Counter()
    reasons = collections.defaultdict(collections.Counter)
    unmap_bytes = 0
    unmap_by = collections.Counter()    # (comm, MiB) -> calls
    tl = {t: Timeline() for t in tids}
    per_cpu_last, holes = {}, collections.defaultdict(list)
    mm = []          # (t, event, detail)
    running = {}     # cpu -> (since, comm, pid)
    ran = collections.defaultdict(list)   # cpu -> (start, end, comm)
    for t, cpu, comm, pid, ev, detail in evs:
        if cpu in per_cpu_last:
            holes[cpu].append((t - per_cpu_last[cpu], per_cpu_last[cpu]))
        per_cpu_last[cpu] = t
        counts[ev] += 1
        if ev == "kvm_exit" and pid in tl:
            r = exit_reason(detail)
            reasons[tids[pid]][r] += 1
            tl[pid].exit(t, r)
        elif ev == "kvm_entry" and pid in tl:
            tl[pid].entry(t)
        elif ev == "kvm_page_fault" and pid in tl:
            tl[pid]._pf += 1
        elif ev == "kvm_userspace_exit" and pid in tl:
            counts["userspace: " + detail.split(" (")[0]] += 1
        elif ev == "sched_switch":
            m = re.search(r"prev_comm=(.*) prev_pid=(\d+) .*prev_state=(\S+)"
                          r" ==> next_comm=(.*) next_pid=(\d+)", detail)
            if not m:
                continue
            prev, state, nxt = int(m.group(2)), m.group(3), int(m.group(5))
            if prev in tl:
                tl[prev].switched_out(t, state, cpu)
                counts[f"vcpu switched out ({state[0]})"] += 1
            if nxt in tl:
                tl[nxt].switched_in(t)
            if cpu in running:
                s, c, _ = running[cpu]
                ran[cpu].append((s, t, c))
            running[cpu] = (t, m.group(4), nxt)
        if ev in MM_EVENTS:
            mm.append((t, ev, detail))
            if ev == "kvm_unmap_hva_range":
                m = re.search(r"0x([0-9a-f]+) -- 0x([0-9a-f]+)", detail)
                if m:
                    n = int(m.group(2), 16) - int(m.group(1), 16)
                    unmap_bytes += n
                    unmap_by[(re.sub(r"\d+$", "", comm), n >> 20 or
                              f"{n >> 10}k")] += 1
    dur = t1 - t0
    lines.append(f"window {dur:.2f} s; events per second:")
    for ev, n in sorted(counts.items(), key=lambda x: -x[1]):
        lines.append(f"  {ev}: {n} ({n / dur:.0f}/s)")
    if unmap_bytes:
        lines.append(f"  MMU-notifier unmaps: {unmap_bytes / 2**20:.0f} MiB "
                     f"in {counts['kvm_unmap_hva_range']} calls; by thread "
                     f"and size (MiB): " + ", ".join(
                         f"{c} {sz}: {n}" for (c, sz), n in
                         unmap_by.most_common(8)))
    for v, c in sorted(reasons.items()):
        top = ", ".join(f"{r} {n}" for r, n in c.most_common(8))
        lines.append(f"  vcpu{v} exits: {top}")
    for pid, v in sorted(tids.items(), key=lambda x: x[1]):
        outs = sorted(tl[pid].out, key=lambda x: x[1] - x[0])[-3:]
        offs = sorted(tl[pid].off, key=lambda x: x[1] - x[0])[-3:]
        lines.append(f"  vcpu{v}: longest outside the guest: " + "; ".join(
            f"{(e - s) * 1e3:.1f} ms at +{s - t0:.3f} ({r}, {pf} faults)"
            for s, e, r, pf in outs))
        lines.append(f"  vcpu{v}: longest off its CPU: " + "; ".join(
            f"{(e - s) * 1e3:.1f} ms at +{s - t0:.3f} ({st} on cpu{c})"
            for s, e, st, c in offs))
    for cpu in sorted(holes):
        top = sorted(holes[cpu])[-3:]
        lines.append(f"  cpu{cpu}: longest stretch without an event: " +
                     "; ".join(f"{h * 1e3:.1f} ms at +{s - t0:.3f}"
                               for h, s in top))
    lines.append(f"guest status lines with maxgap >= {gap_ms} ms, and the "
                 f"host's view of that vCPU in the second before:")
    by_index = {v: pid for pid, v in tids.items()}
    for t, v, _, g in pts:
        if not (t0 < t <= t1 + bgsnap.LINE_S) or g < gap_ms:
            continue
        pid = by_index.get(v)
        if pid is None:
            continue
        a = t - bgsnap.LINE_S
        cand = [x for x in tl[pid].out if x[1] > a and x[0] < t]
        desc = "no interval outside the guest in the trace"
        if cand:
            s, e, r, pf = max(cand, key=lambda x: x[1] - x[0])
            off = sum(min(e2, e) - max(s2, s) for s2, e2, _, _ in
                      tl[pid].off if e2 > s and s2 < e)
            states = collections.Counter(st[0] for s2, e2, st, _ in
                                         tl[pid].off if e2 > s and s2 < e)
            who = collections.Counter()
            for cpu, iv in ran.items():
                for s2, e2, c in iv:
                    if e2 > s and s2 < e and not c.startswith("vcpu"):
                        who[c] += min(e2, e) - max(s2, s)
            near = collections.Counter(ev for tm, ev, _ in mm
                                       if s - 0.001 <= tm <= e)
            desc = (f"longest outside the guest {(e - s) * 1e3:.1f} ms at "
                    f"+{s - t0:.3f} (exit {r}, {pf} KVM page faults, off "
                    f"its CPU {off * 1e3:.1f} ms {dict(states)}; others "
                    f"ran: " + ", ".join(f"{c} {x * 1e3:.1f} ms" for c, x in
                                         who.most_common(4)) +
                    f"; memory events in it: {dict(near)})")
        lines.append(f"  vcpu{v} line at +{t - t0:.3f}: guest maxgap "
                     f"{g:.1f} ms; {desc}")
    return lines


def run(args):
    prof = bgsnap.PROFILES[args.profile]
    vmm = vmms.make(["kvmig"], args.build)[0]
    why = vmm.check()
    if why:
        print(f"# skipped: {why}")
        return 1
    keep = args.keep or tempfile.mkdtemp(prefix="bgsnap-trace-")
    os.makedirs(keep, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bgsnap-trace-",
                                     dir=args.dir) as tmp:
        src = bgsnap.Source("kvmig", vmm, prof, tmp)
        try:
            src.boot()
            tids = vcpu_tids(src.vm.p.pid)
            print(f"# vCPU threads {tids}; profile {args.profile} {prof}")
            trace_setup(args.buffer_kb)
            src.q.cmd("cont")
            time.sleep(bgsnap.WARMUP_S)
            for i, kind in enumerate(args.windows.split(",")):
                tw("trace", "")
                st0 = steal_ticks()
                load = os.getloadavg()[0]
                tw("tracing_on", "1")
                t0 = time.monotonic()
                if kind == "B":
                    src.q.cmd("migrate",
                              uri=bgsnap.snapshot_uri(vmm, src.path))
                    r = vmlib.wait_migration(src.q, timeout=300)
                    if r.get("status") != "completed":
                        raise RuntimeError(f"snapshot ended {r}")
                else:
                    time.sleep(args.seconds)
                t1 = time.monotonic()
                tw("tracing_on", "0")
                time.sleep(bgsnap.LINE_S)
                st1 = steal_ticks()
                path = os.path.join(keep, f"{i}-{kind}.trace")
                shutil.copyfile(os.path.join(TRACEFS, "trace"), path)
                if kind == "B" and os.path.exists(src.path):
                    os.unlink(src.path)
                pts = bgsnap.status_points(src.vm)
                evs = parse(path)
                steal = {c: (st1[c] - st0[c]) * 10 for c in st0}
                print(f"## window {i} {kind}: {t1 - t0:.2f} s, write rate "
                      f"{bgsnap.write_rate(pts, t0, t1) / 1e3:.0f} k pages/s,"
                      f" guest's longest gap "
                      f"{bgsnap.guest_gap(pts, t0, t1 + bgsnap.LINE_S):.1f} "
                      f"ms, load {load:.1f}, steal ms {steal}, "
                      f"{len(evs)} trace events"
                      + (f", {src.bg_stats()}" if kind == "B" else ""))
                for ln in analyse(evs, tids, t0, t1, pts, args.gap_ms):
                    print(ln)
                sys.stdout.flush()
        finally:
            trace_teardown()
            src.close()
    print(f"# traces kept in {keep}")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--profile", default="uncapped")
    ap.add_argument("--windows", default="A,B,A,B")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--gap-ms", type=float, default=5.0)
    ap.add_argument("--buffer-kb", type=int, default=131072)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--keep", default=None)
    return run(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
