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
import threading
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


def parse_size(text):
    units = {"K": 10, "M": 20, "G": 30, "T": 40}
    return int(text[:-1]) << units[text[-1]] if text[-1] in units \
        else int(text)


class TaskWatch:
    """The VM's threads seen during a window (the snapshot's own come
    and go with it)."""

    def __init__(self, pid):
        self.pid, self.tids, self.done = pid, set(), threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.done.is_set():
            try:
                self.tids |= {int(x) for x in
                              os.listdir(f"/proc/{self.pid}/task")}
            except OSError:
                pass
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.th.join()
        return self.tids


def guest_ram_range(pid, size):
    """The host range of the VM's guest RAM (its one mapping of that
    size), to tell its MMU-notifier calls from other VMs'."""
    with open(f"/proc/{pid}/maps") as f:
        for ln in f:
            lo, hi = (int(x, 16) for x in ln.split()[0].split("-"))
            if hi - lo == size:
                return lo, hi
    return 0, 0


def switch_fields(detail):
    m = re.search(r"prev_comm=(.*) prev_pid=(\d+) .*prev_state=(\S+) ==> "
                  r"next_comm=(.*) next_pid=(\d+)", detail)
    if not m:
        return None
    return int(m.group(2)), m.group(3), m.group(4), int(m.group(5))


def short(comm, pid, ours):
    """A thread's name for the tables: digits folded, ours starred."""
    return re.sub(r"\d+$", "#", comm) + ("*" if pid in ours else "")


class Analysis:
    """One window's trace: who ran, when the vCPU threads were off their
    CPUs, and the MMU notifier's calls on this VM's guest RAM."""

    def __init__(self, evs, vm_tids, vcpus, ram):
        self.evs, self.ours, self.vcpus, self.ram = evs, vm_tids, vcpus, ram
        self.counts = collections.Counter()
        self.off = collections.defaultdict(list)  # vcpu -> (s, e, state)
        self.ran = collections.defaultdict(list)  # cpu -> (s, e, who)
        self.notifier = collections.Counter()     # (event, who, size)
        self.notifier_bytes = collections.Counter()
        self.mm = []
        self._scan()

    def _mine(self, detail):
        m = re.search(r"0x([0-9a-f]+) -- 0x([0-9a-f]+)", detail)
        if not m:
            return 0
        lo, hi = int(m.group(1), 16), int(m.group(2), 16)
        return hi - lo if self.ram[0] <= lo < self.ram[1] else 0

    def _scan(self):
        running, since = {}, {}
        for t, cpu, comm, pid, ev, detail in self.evs:
            if ev == "sched_switch":
                f = switch_fields(detail)
                if not f:
                    continue
                prev, state, ncomm, nxt = f
                if cpu in running:
                    self.ran[cpu].append((running[cpu][0], t,
                                          running[cpu][1]))
                running[cpu] = (t, short(ncomm, nxt, self.ours))
                if prev in self.vcpus:
                    since[prev] = (t, state)
                    self.counts[f"vCPU switched out ({state})"] += 1
                if nxt in since:
                    s, st = since.pop(nxt)
                    self.off[self.vcpus[nxt]].append((s, t, st))
                continue
            if ev in ("kvm_age_hva", "kvm_test_age_hva",
                      "kvm_unmap_hva_range"):
                n = self._mine(detail)
                if not n:
                    self.counts[ev + " (other VMs)"] += 1
                    continue
                size = f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
                self.notifier[(ev, short(comm, pid, self.ours), size)] += 1
                self.notifier_bytes[ev] += n
            elif ev == "kvm_userspace_exit" and pid in self.vcpus:
                ev = "vCPU exit to the VMM: " + detail.split(" (")[0]
            elif pid in self.vcpus or ev.startswith("kvm"):
                ev = ev if pid in self.vcpus else ev + " (not our vCPUs)"
            self.counts[ev] += 1
            if ev in MM_EVENTS:
                self.mm.append((t, ev))

    def who_ran(self, a, b):
        who = collections.Counter()
        for iv in self.ran.values():
            for s, e, c in iv:
                if e > a and s < b:
                    who[c] += min(e, b) - max(s, a)
        return ", ".join(f"{c} {x * 1e3:.1f}" for c, x in who.most_common(5))

    def longest_off(self, v, a, b):
        iv = [x for x in self.off[v] if x[1] > a and x[0] < b]
        return max(iv, key=lambda x: x[1] - x[0]) if iv else None

    def report(self, t0, t1, pts, gap_ms):
        dur = t1 - t0
        out = [f"window {dur:.2f} s; events (per second):"]
        for ev, n in sorted(self.counts.items(), key=lambda x: -x[1]):
            out.append(f"  {ev}: {n} ({n / dur:.0f}/s)")
        for ev, n in self.notifier_bytes.items():
            out.append(f"  {ev} on this VM's RAM: {n / 2**20:.0f} MiB")
        for (ev, who, size), n in self.notifier.most_common(12):
            out.append(f"    {ev} by {who}, {size}: {n}")
        for v in sorted(self.off):
            iv = self.off[v]
            tot = collections.Counter()
            for s, e, st in iv:
                tot[st[0]] += e - s
            out.append(f"  vcpu{v} off its CPU {len(iv)} times, in total " +
                       ", ".join(f"{st} {x * 1e3:.0f} ms" for st, x in
                                 tot.items()) + " (R: runnable, waiting "
                       "for a CPU; S/D: asleep)")
            for s, e, st in sorted(iv, key=lambda x: x[1] - x[0])[-3:]:
                out.append(f"    {(e - s) * 1e3:.1f} ms at +{s - t0:.3f} "
                           f"({st}); ran meanwhile (ms): "
                           f"{self.who_ran(s, e)}")
        out.append(f"guest status lines with maxgap >= {gap_ms} ms, each "
                   f"against its vCPU's longest time off its CPU in the "
                   f"second the line covers:")
        for t, v, _, g in pts:
            if not (t0 < t <= t1 + bgsnap.LINE_S) or g < gap_ms:
                continue
            x = self.longest_off(v, t - bgsnap.LINE_S, t)
            desc = "not off its CPU" if not x else (
                f"off {(x[1] - x[0]) * 1e3:.1f} ms at +{x[0] - t0:.3f} "
                f"({x[2]}); ran meanwhile (ms): {self.who_ran(x[0], x[1])}")
            others = [f"vcpu{w} off {(y[1] - y[0]) * 1e3:.1f} ms" for w in
                      sorted(self.off) if w != v for y in
                      [self.longest_off(w, t - bgsnap.LINE_S, t)] if y]
            out.append(f"  vcpu{v} line at +{t - t0:.3f}: maxgap {g:.1f} "
                       f"ms; {desc}" + (f"; others: {', '.join(others)}"
                                         if others else ""))
        return out


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
            pid = src.vm.p.pid
            vcpus = vcpu_tids(pid)
            ram = guest_ram_range(pid, parse_size(prof["memory"]))
            print(f"# vCPU threads {vcpus}; guest RAM {ram[0]:#x}-"
                  f"{ram[1]:#x}; profile {args.profile} {prof}")
            trace_setup(args.buffer_kb)
            src.q.cmd("cont")
            time.sleep(bgsnap.WARMUP_S)
            for i, kind in enumerate(args.windows.split(",")):
                tw("trace", "")
                st0 = steal_ticks()
                load = os.getloadavg()[0]
                watch = TaskWatch(pid)
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
                vm_tids = watch.stop()
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
                an = Analysis(evs, vm_tids, vcpus, ram)
                for ln in an.report(t0, t1, pts, args.gap_ms):
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
