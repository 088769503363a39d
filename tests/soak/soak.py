#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Soak (issue 10, item 6): many migrations of one running guest, and the
processes that live through many migrations, watched for leaks.

1. Ping-pong: one guest (2 vCPUs writing 64 MiB/s, --verify-ram on every
   side) hops ROUNDS times, each time to a fresh `kvmig run --incoming`
   (vm1 -> vm2 -> vm3 ...), once without and once with multifd (2
   channels, the destination started with `--incoming defer`). Every hop
   must complete, the guest must keep running, no CORRUPT line (the
   guest's own memory check) and no "RAM differs" may appear, and at the
   end the guest's final check must find 0 corrupt pages. Each process is
   measured twice at the same points of its life: as a destination once
   its guest runs, and as a source once it reached postmigrate; neither
   its fds, threads nor RSS may trend upward across the hops.
2. A long-lived source: one process whose migrations fail again and
   again (destination killed mid-stream, migrate_cancel mid-stream after
   a second `migrate` was refused, migrate_cancel right after `migrate`,
   nobody listening), with a fresh QMP session each attempt, then one
   success. A migration that never connected must report no pages sent.
   Its fds and threads after the rounds must equal those after a warm-up
   round, and its RSS may not grow in the later half of the rounds.
3. A long-lived destination: `--incoming defer`, many QMP sessions
   (queries, parameter changes, a line that is not JSON, a hang-up in
   the middle of a command) and strangers on its port (connect and close,
   send garbage, stay silent), then the real source: same rule.

Prints a summary table and TAP; exits non-zero on any failure, CORRUPT or
growth. Usage:
    soak.py KVMIG GUEST_ELF [--rounds N] [--modes off,on] [--leak-rounds M]
            [--out REPORT.md] [--sanitized]
`make soak` runs it with SOAK_ROUNDS (default 100); `make check` runs a
short variant (--rounds 3 --leak-rounds 3)."""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (  # noqa: E402
    Qmp, QmpError, VmSet, corrupt_lines, free_port, guest_downtime_ms,
    have_kvm, wait_migration, workload_started)

APPEND = "mem=64 rate=64 pattern=random"
MEMORY = "1G"
VERIFY = ("--verify-ram",)
CHANNELS = 2
GUEST_BYTES = 1 << 30
# kvmig's own RSS (VmRSS less the guest's RAM) may wander a little (malloc
# arenas, stacks touched deeper once; a long-lived source steps up once
# by 1.3-1.4 MiB, at round 3 or 6 or never, and heaptrack shows no
# allocation accumulating); a leak per round grows without bound. The
# later part of a run may exceed the earlier by this much.
VMM_RSS_SLACK_KB = 2048
# A destination without multifd faults guest RAM in up to this far ahead
# of the pages it receives (PREFAULT_WINDOW, ram_prefault.c); the next
# source then holds those zero pages too. The guest's resident RAM may
# exceed what the booted guest held by this much, never more.
PREFAULT_WINDOW_KB = 32 * 1024
GUEST_RSS_SLACK_KB = 4 * 1024
# Throttle the failing migrations so that they are still in precopy when
# the fault comes: 1 GiB of guest RAM, 64 MiB of it written.
SLOW_BANDWIDTH = 16 << 20


# ---- what a process holds ----

def guest_ram_kb(pid):
    """Resident KiB of the guest's RAM: the mappings at least as large as
    it (pc.ram is one anonymous mapping of the whole guest)."""
    total, size = 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                a, b = line.split()[0].split("-")
                size = int(b, 16) - int(a, 16)
            elif line.startswith("Rss:") and \
                    GUEST_BYTES <= size < 2 * GUEST_BYTES:
                total += int(line.split()[1])
    return total


def footprint(pid):
    """(fds, threads, VMM RSS KiB, guest RAM RSS KiB) of a live process,
    None if it is gone. VMM RSS is VmRSS less the guest's RAM: what kvmig
    itself holds (heap, stacks, buffers), where a leak would show; the
    guest's part follows what the guest wrote."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f
                       if line.startswith("VmRSS:"))
        guest = guest_ram_kb(pid)
        return fds, threads, rss - guest, guest
    except (OSError, StopIteration):
        return None


def settled_footprint(pid, timeout=3.0):
    """The footprint once fds and threads read the same twice 100 ms
    apart: threads that end a migration (return path, channels) finish a
    moment after the status says so."""
    deadline = time.monotonic() + timeout
    last = footprint(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = footprint(pid)
        if now is None or last is None:
            return now
        if now[:2] == last[:2]:
            return now
        last = now
    return last


def mib(kb):
    return f"{kb / 1024:.1f}"


def fmt_fp(fp):
    """fds/threads/VMM RSS+guest RSS (MiB)."""
    return "-" if fp is None else \
        f"{fp[0]}/{fp[1]}/{mib(fp[2])}+{fp[3] // 1024}"


def rss_over(a, b, slack_kb):
    return b > a + slack_kb


def trend_problems(name, series, guest_bound_kb, rss=True):
    """series: footprints in order of the hops. A problem string per
    resource that grows: fds and threads whose later third exceeds the
    first third's largest; VMM RSS whose later third's median exceeds
    the first third's by more than VMM_RSS_SLACK_KB; guest RAM resident
    beyond guest_bound_kb. [] if none."""
    series = [s for s in series if s is not None]
    if len(series) < 2:
        return []
    k = max(1, len(series) // 3)
    first, last = series[:k], series[-k:]
    out = []
    for i, what in ((0, "fds"), (1, "threads")):
        a = max(s[i] for s in first)
        b = max(s[i] for s in last)
        if b > a:
            out.append(f"{name}: {what} grew from {a} to {b} "
                       f"({[s[i] for s in series]})")
    if not rss:
        return out
    a = statistics.median(s[2] for s in first)
    b = statistics.median(s[2] for s in last)
    if rss_over(a, b, VMM_RSS_SLACK_KB):
        out.append(f"{name}: VMM RSS grew from {a:.0f} KiB to {b:.0f} KiB "
                   f"({[s[2] for s in series]})")
    worst = max(s[3] for s in series)
    if worst > guest_bound_kb:
        out.append(f"{name}: guest RAM resident {worst} KiB, more than the "
                   f"{guest_bound_kb} KiB the guest wrote plus the "
                   f"prefault window ({[s[3] for s in series]})")
    return out


def growth_problems(name, fps, rss=True):
    """A long-lived process, fps: its footprint after each round, the
    warm-up round first. fds and threads may not exceed the warm-up's.
    RSS settles over the first rounds (malloc arenas of the threads a
    migration starts, glibc's cache of thread stacks), then stays: the
    later half of the rounds may not exceed the earlier half's largest by
    more than VMM_RSS_SLACK_KB."""
    if len(fps) < 2 or None in fps:
        return [f"{name}: the process is gone or no round ended ({fps})"]
    out = []
    before, after = fps[0], fps[-1]
    for i, what in ((0, "fds"), (1, "threads")):
        if after[i] > before[i]:
            out.append(f"{name}: {what} grew from {before[i]} to {after[i]}")
    half = len(fps) // 2
    for i, what in ((2, "VMM RSS"), (3, "guest RAM resident")):
        a = max(fp[i] for fp in fps[:half])
        b = max(fp[i] for fp in fps[half:])
        if rss and rss_over(a, b, VMM_RSS_SLACK_KB):
            out.append(f"{name}: {what} grew from {a} KiB (first half of "
                       f"the rounds) to {b} KiB ({[fp[i] for fp in fps]})")
    return out


# ---- QMP helpers ----

def set_multifd(q, on):
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": "multifd", "state": on}])
    if on:
        q.cmd("migrate-set-parameters", **{"multifd-channels": CHANNELS})


def wait_status(q, want, timeout=10):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = q.cmd("query-status")["status"]
        if st in want:
            return st
        time.sleep(0.02)
    return st


def wait_active(q, min_bytes, timeout=15):
    """Until the migration is active with min_bytes sent; the last reply."""
    deadline = time.monotonic() + timeout
    r = {}
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") in ("completed", "failed", "cancelled"):
            return r
        if (r.get("status") == "active" and
                r.get("ram", {}).get("transferred", 0) >= min_bytes):
            return r
        time.sleep(0.02)
    return r


def quit_vm(vm, q):
    """Ask a process to quit over QMP; kill it if it does not. Its exit
    code, None if it had to be killed."""
    try:
        q.cmd("quit")
    except (QmpError, OSError):
        pass
    rc = vm.wait(10)
    if rc is None:
        vm.kill()
    q.close()
    return rc


def quit_problems(*pairs):
    """Quit each (vm, qmp); a problem for each that did not exit 0 (with
    a sanitizer build: a leak or an error report)."""
    out = []
    for vm, q in pairs:
        rc = quit_vm(vm, q)
        if rc != 0:
            out.append(f"{vm.label} quit with exit code {rc}\n"
                       f"{vm.describe()}")
    return out


def ram_differs(*vms):
    return any("RAM differs" in v.stderr for v in vms)


# ---- 1. ping-pong ----

class Hop:
    def __init__(self, rnd, label, multifd):
        self.round = rnd
        self.label = label
        self.multifd = multifd
        self.status = "?"
        self.total = self.downtime = self.gap = None
        self.src_fp = self.dst_fp = None
        self.load = None


def hop(vms, src, qs, mode_on, rnd, label):
    """One migration of the guest from src to a fresh destination. Returns
    (Hop, dst, qd, problem or None)."""
    h = Hop(rnd, label, mode_on)
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = vms.incoming(label.split("->")[1], "defer" if mode_on else uri,
                       memory=MEMORY, extra=VERIFY)
    qd = Qmp(dst.qmp_path)
    if mode_on:
        set_multifd(qd, True)
        qd.cmd("migrate-incoming", uri=uri)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    r = wait_migration(qs, timeout=120)
    h.status = r.get("status", "?")
    h.total, h.downtime = r.get("total-time"), r.get("downtime")
    if h.status != "completed":
        return h, dst, qd, f"{label}: migration {h.status}: {r}"
    if mode_on and not r.get("ram", {}).get("multifd-bytes", 0):
        return h, dst, qd, f"{label}: multifd on, but no page went over " \
            f"the channels: {r}"
    ss = qs.cmd("query-status")["status"]
    ds = wait_status(qd, ("running",))
    if ss != "postmigrate" or ds != "running":
        return h, dst, qd, f"{label}: source {ss}, destination {ds}"
    if not dst.wait_heartbeats(500, 15, since=time.monotonic()):
        return h, dst, qd, f"{label}: no heartbeats at the destination"
    h.gap = guest_downtime_ms(src, dst, since=t0)
    h.load = os.getloadavg()[0]
    # The same point of every process's life: postmigrate as a source,
    # its guest back to heartbeats (500 of them) as a destination.
    h.src_fp = settled_footprint(src.p.pid)
    h.dst_fp = settled_footprint(dst.p.pid)
    return h, dst, qd, None


def ping_pong(tap, vms, rounds, mode_on, rss):
    """rounds hops of one guest; 3 TAP lines. The list of hops."""
    mode = "multifd" if mode_on else "plain"
    src = vms.boot(f"{mode}-vm1", APPEND, memory=MEMORY, extra=VERIFY)
    if not workload_started(src):
        tap.ok(False, f"ping-pong {mode}: the guest starts", src.describe())
        tap.skip(f"ping-pong {mode}: footprints", "no guest")
        tap.skip(f"ping-pong {mode}: final check", "no guest")
        return []
    qs = Qmp(src.qmp_path)
    if mode_on:
        set_multifd(qs, True)
    time.sleep(0.5)
    boot_fp = settled_footprint(src.p.pid)
    guest_bound = boot_fp[3] + PREFAULT_WINDOW_KB + GUEST_RSS_SLACK_KB
    print(f"# {mode}: the booted guest's process holds {fmt_fp(boot_fp)}; "
          f"guest RAM resident may reach {guest_bound} KiB", flush=True)
    hops, problems = [], []
    for rnd in range(1, rounds + 1):
        label = f"{mode}-vm{rnd}->{mode}-vm{rnd + 1}"
        h, dst, qd, problem = hop(vms, src, qs, mode_on, rnd, label)
        hops.append(h)
        print(f"# {row(h)}", flush=True)
        bad = corrupt_lines(src, dst)
        if bad or ram_differs(src, dst):
            problem = (problem or "") + f" {label}: CORRUPT {bad[:4]} or " \
                "RAM differs\n" + src.describe() + "\n" + dst.describe()
        if problem:
            problems.append(problem + "\n" + src.describe() + "\n" +
                            dst.describe())
            break
        rc = quit_vm(src, qs)
        if rc != 0:
            problems.append(f"{label}: the old source quit with {rc}\n"
                            f"{src.describe()}")
            break
        vms.vms.remove(src)
        src, qs = dst, qd
        if mode_on:
            set_multifd(qs, True)
    tap.ok(not problems and len(hops) == rounds,
           f"ping-pong {mode}: {rounds} hops completed, the guest kept "
           f"running, no CORRUPT, no RAM difference", "\n".join(problems))
    growth = (trend_problems(f"{mode} as destination",
                             [h.dst_fp for h in hops], guest_bound, rss) +
              # The first source was booted, not migrated in: another life.
              trend_problems(f"{mode} as source",
                             [h.src_fp for h in hops[1:]], guest_bound,
                             rss))
    tap.ok(not growth and not problems,
           f"ping-pong {mode}: no growth of fds, threads or RSS across the "
           f"hops", "\n".join(growth) or "no hops to compare")
    final = final_check(src)
    tap.ok(final is not None and final == 0,
           f"ping-pong {mode}: the guest's final check finds 0 corrupt "
           f"pages", f"final check: {final}\n{src.describe()}")
    qs.close()
    return hops


def final_check(vm):
    """Power the guest off ('q'); the corrupt count of its final check,
    None if there was none or kvmig did not exit 0."""
    if vm.p.poll() is not None:
        return None
    vm.send_console(b"q")
    m = vm.wait_console(rb"guest: final check: \d+ pages verified by "
                        rb"\d+ of \d+ vcpus, (\d+) corrupt", 30)
    rc = vm.wait(15)
    if m is None or rc != 0:
        return None
    return int(m.group(1))


def row(h):
    def v(x, f="{}"):
        return "-" if x is None else f.format(x)
    return (f"| {h.round} | {h.label} | {'on' if h.multifd else 'off'} | "
            f"{h.status} | {v(h.downtime)} | {v(h.total)} | "
            f"{v(h.gap, '{:.1f}')} | {fmt_fp(h.src_fp)} | "
            f"{fmt_fp(h.dst_fp)} | {v(h.load, '{:.1f}')} |")


TABLE_HEAD = ("| round | hop | multifd | status | downtime (ms) | total (ms) "
              "| guest gap (ms) | source at postmigrate: fds/threads/RSS "
              "| destination running: fds/threads/RSS | load |\n"
              "|---:|---|---|---|---:|---:|---:|---|---|---:|")


# ---- 2. a long-lived source ----

def fail_once(vms, q, kind, mode_on, n):
    """One migration that must not complete: the destination is SIGKILLed
    mid-stream ("dst-killed"), the migration is cancelled mid-stream
    after a second `migrate` was refused ("cancel"), or cancelled as soon
    as it was asked for ("cancel-early", whatever phase it reached), or
    nobody listens ("refused"). None, or a problem."""
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = None
    if kind != "refused":
        dst = vms.incoming(f"leak-dst{n}", "defer" if mode_on else uri,
                           memory=MEMORY)
        qd = Qmp(dst.qmp_path)
        if mode_on:
            set_multifd(qd, True)
            qd.cmd("migrate-incoming", uri=uri)
        qd.close()
    q.cmd("migrate", uri=uri)
    want = "failed"
    problem = None
    if kind == "cancel-early":
        q.cmd("migrate_cancel")
        want = "cancelled"
    elif kind != "refused":
        r = wait_active(q, 4 << 20)
        if r.get("status") != "active":
            return f"{kind}: expected active, got {r}"
        if kind == "dst-killed":
            os.kill(dst.p.pid, signal.SIGKILL)
        else:
            if "error" not in q.execute("migrate", uri=uri):
                problem = "a second migrate while one is active was accepted"
            q.cmd("migrate_cancel")
            want = "cancelled"
    r = wait_migration(q, timeout=60)
    ram = r.get("ram", {})
    if problem:
        pass
    elif kind == "refused" and (ram.get("normal") or ram.get("duplicate")):
        # The RAM counters outlive a migration: one that never connected
        # showed the previous one's pages (fixed in migration.c).
        problem = (f"{kind}: a migration that never connected reports "
                   f"pages sent: {ram}")
    elif r.get("status") != want:
        problem = f"{kind}: expected {want}, got {r}"
    elif wait_status(q, ("running",)) != "running":
        problem = f"{kind}: the source's guest does not run again"
    if dst is not None:
        problem = problem or destination_after(dst, kind)
        if problem:
            problem += "\n" + dst.describe()
        dst.kill()
        vms.vms.remove(dst)
    return problem


def destination_after(dst, kind):
    """A destination whose source failed or cancelled mid-stream exits
    (nothing runs). One cancelled before it sent anything may still be
    listening for a source (the connection, if one came, was dropped as a
    stranger's): its status must then be setup. None, or a problem."""
    if kind != "cancel-early":
        if dst.wait(15) is None:
            return f"{kind}: the destination did not exit"
        return None
    # A connection that closed before the stream header is dropped at
    # once, one that sent it fails the migration: half a second settles
    # either; then exited or setup, never stuck active.
    t0 = time.monotonic()
    st = None
    while time.monotonic() - t0 < 6:
        time.sleep(0.1)
        if dst.p.poll() is not None:
            return None
        try:
            q = Qmp(dst.qmp_path, timeout=2)
            st = q.cmd("query-migrate").get("status")
            q.close()
        except (OSError, QmpError):
            st = "no monitor"
            continue   # exiting
        if st == "setup" and time.monotonic() - t0 >= 0.5:
            return None
    rc = dst.wait(30)
    return (f"{kind}: the destination neither exited nor waited for a "
            f"source within 6 s (status: {st}); "
            f"{'it exited ' + str(rc) if rc is not None else 'it still ran'}"
            f" {time.monotonic() - t0:.1f} s after the cancel")


def long_lived_source(tap, vms, rounds, mode_on, rss):
    """rounds x (dst-killed, cancel, refused) on one source; 2 TAP lines."""
    mode = "multifd" if mode_on else "plain"
    kinds = ("dst-killed", "cancel", "cancel-early", "refused")
    src = vms.boot(f"{mode}-retry-src", APPEND, memory=MEMORY, extra=VERIFY)
    if not workload_started(src):
        tap.ok(False, f"long-lived source {mode}: the guest starts",
               src.describe())
        tap.skip(f"long-lived source {mode}: no growth", "no guest")
        return
    q = Qmp(src.qmp_path)
    if mode_on:
        set_multifd(q, True)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW_BANDWIDTH})
    problems, fps = [], []
    n = 0
    base = None
    for rnd in range(rounds + 1):   # round 0 warms up
        for kind in kinds:
            n += 1
            # A fresh QMP session each attempt, closed after it.
            qn = Qmp(src.qmp_path)
            p = fail_once(vms, qn, kind, mode_on, n)
            qn.close()
            if p:
                problems.append(f"round {rnd}: {p}")
        fp = settled_footprint(src.p.pid)
        fps.append(fp)
        print(f"# long-lived source {mode} round {rnd}: fds/threads/RSS "
              f"{fmt_fp(fp)}", flush=True)
        if rnd == 0:
            base = fp
        if problems:
            break
    after = fps[-1]
    # Then one that succeeds, at full speed.
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = vms.incoming(f"{mode}-retry-dst", "defer" if mode_on else uri,
                       memory=MEMORY, extra=VERIFY)
    qd = Qmp(dst.qmp_path)
    if mode_on:
        set_multifd(qd, True)
        qd.cmd("migrate-incoming", uri=uri)
    q.cmd("migrate", uri=uri)
    r = wait_migration(q, timeout=120)
    ok = (r.get("status") == "completed" and
          wait_status(qd, ("running",)) == "running" and
          dst.wait_heartbeats(200, 10, since=time.monotonic()))
    if not ok:
        problems.append(f"the final migration: {r}\n{dst.describe()}")
    bad = corrupt_lines(src, dst)
    if bad or ram_differs(src, dst):
        problems.append(f"CORRUPT {bad[:4]} or RAM differs")
    problems += quit_problems((src, q), (dst, qd))
    tap.ok(not problems,
           f"long-lived source {mode}: {rounds * len(kinds)} migrations "
           f"failed or were cancelled as asked, the guest ran on each "
           f"time, then one completed with no CORRUPT",
           "\n".join(problems) + "\n" + src.describe())
    growth = growth_problems(f"long-lived source {mode}", fps, rss)
    line = (f"long-lived source, multifd {'on' if mode_on else 'off'}: "
            f"{(len(fps) - 1) * len(kinds)} migrations failed or cancelled "
            f"({', '.join(kinds)}; each with a fresh QMP session) after "
            f"{len(kinds)} of warm-up, then one completed; fds/threads/"
            f"VMM RSS+guest RSS (MiB) after the warm-up {fmt_fp(base)}, "
            f"after the rounds {fmt_fp(after)}: "
            f"{'no growth' if not growth else '; '.join(growth)}"
            f"{'' if not problems else ' (FAILED)'}")
    print(f"# {line}", flush=True)
    tap.ok(not growth and len(fps) == rounds + 1,
           f"long-lived source {mode}: no growth of fds, threads or RSS "
           f"over {rounds} rounds of failures", "\n".join(growth) or
           f"stopped after {len(fps) - 1} rounds")
    return line


# ---- 3. a long-lived destination ----

def stranger(port, garbage):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if garbage:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
    s.close()


def qmp_session(path, n):
    """A well-behaved session, then one that sends a command that is not
    JSON and one that hangs up in the middle of a command."""
    q = Qmp(path)
    q.cmd("query-status")
    q.cmd("query-migrate")
    q.cmd("migrate-set-parameters", **{"max-bandwidth": (n + 1) << 20})
    q.cmd("query-migrate-parameters")
    q.cmd("query-migrate-capabilities")
    q.close()
    q = Qmp(path)
    q.sock.sendall(b'{"execute": "query-status"\n}}} not json\n')
    q.close()
    q = Qmp(path)
    q.sock.sendall(b'{"execute": "query-mig')
    q.close()


def silent_stranger(port):
    """A connection that says nothing (the listener gives it up to its
    hello timeout, 3 s); the caller closes it."""
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def long_lived_destination(tap, vms, rounds, mode_on, rss):
    """rounds x (15 QMP sessions, 6 strangers) on one `--incoming defer`
    destination, then the real source; 2 TAP lines."""
    mode = "multifd" if mode_on else "plain"
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = vms.incoming(f"{mode}-defer-dst", "defer", memory=MEMORY,
                       extra=VERIFY)
    qd = Qmp(dst.qmp_path)
    if mode_on:
        set_multifd(qd, True)
    qd.cmd("migrate-incoming", uri=uri)
    problems, fps = [], []
    base = None
    for rnd in range(rounds + 1):    # round 0 warms up
        try:
            silent = silent_stranger(port)
            for i in range(5):
                qmp_session(dst.qmp_path, i)
                stranger(port, garbage=bool(i % 2))
            silent.close()
        except (OSError, QmpError) as e:
            problems.append(f"round {rnd}: {e}")
            break
        time.sleep(0.2)   # the listener drops a stranger after reading it
        fp = settled_footprint(dst.p.pid)
        fps.append(fp)
        print(f"# long-lived destination {mode} round {rnd}: "
              f"fds/threads/RSS {fmt_fp(fp)}", flush=True)
        if rnd == 0:
            base = fp
    after = fps[-1] if fps else None
    st = qd.cmd("query-migrate").get("status")
    if st != "setup":
        problems.append(f"after the strangers the destination's status is "
                        f"{st}, not setup")
    qd.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    src = vms.boot(f"{mode}-defer-src", APPEND, memory=MEMORY, extra=VERIFY)
    if workload_started(src):
        qs = Qmp(src.qmp_path)
        if mode_on:
            set_multifd(qs, True)
        qs.cmd("migrate", uri=uri)
        r = wait_migration(qs, timeout=120)
        ok = (r.get("status") == "completed" and
              wait_status(qd, ("running",)) == "running" and
              dst.wait_heartbeats(200, 10, since=time.monotonic()))
        if not ok:
            problems.append(f"the real source's migration: {r}\n"
                            f"{src.describe()}\n{dst.describe()}")
        if corrupt_lines(src, dst) or ram_differs(src, dst):
            problems.append("CORRUPT or RAM differs")
        problems += quit_problems((src, qs), (dst, qd))
    else:
        problems.append("the source's guest did not start")
        quit_vm(dst, qd)
    tap.ok(not problems,
           f"long-lived destination {mode}: {rounds * 15} QMP sessions and "
           f"{rounds * 6} strangers, then the real source migrates in",
           "\n".join(problems))
    growth = growth_problems(f"long-lived destination {mode}", fps, rss)
    line = (f"long-lived destination (`--incoming defer`), multifd "
            f"{'on' if mode_on else 'off'}: {(len(fps) - 1) * 15} QMP "
            f"sessions (one in three sends a line that is not JSON, one "
            f"hangs up mid-command) and {(len(fps) - 1) * 6} strangers "
            f"(connect and close, send garbage, stay silent) after 15 and "
            f"6 of warm-up, then the real source migrated in; fds/threads/"
            f"VMM RSS+guest RSS (MiB) after the warm-up {fmt_fp(base)}, "
            f"after the rounds {fmt_fp(after)}: "
            f"{'no growth' if not growth else '; '.join(growth)}"
            f"{'' if not problems else ' (FAILED)'}")
    print(f"# {line}", flush=True)
    tap.ok(not growth and base is not None,
           f"long-lived destination {mode}: no growth of fds, threads or "
           f"RSS over {rounds} rounds of QMP sessions and strangers",
           "\n".join(growth))
    return line


# ---- summary ----

def summary(hops):
    """The per-mode summary lines (also printed)."""
    out = []
    print("#\n# Summary (fds/threads/RSS at the same point of each "
          "process's life)", flush=True)
    for line in TABLE_HEAD.splitlines():
        print(f"# {line}")
    for h in hops:
        print(f"# {row(h)}")
    for mode_on in (False, True):
        hs = [h for h in hops if h.multifd == mode_on and
              h.status == "completed"]
        if not hs:
            continue
        dts = [h.downtime for h in hs if h.downtime is not None]
        tts = [h.total for h in hs if h.total is not None]
        gaps = [h.gap for h in hs if h.gap is not None]
        out.append(f"multifd {'on' if mode_on else 'off'}: {len(hs)} hops "
              f"completed; downtime median {statistics.median(dts)} ms, "
              f"max {max(dts)} ms; total median {statistics.median(tts)} "
              f"ms, max {max(tts)} ms; guest gap median "
              f"{statistics.median(gaps):.1f} ms, max {max(gaps):.1f} ms; "
              f"destination fds {span(hs, 'dst_fp', 0)}, threads "
              f"{span(hs, 'dst_fp', 1)}, VMM RSS MiB "
              f"{span(hs, 'dst_fp', 2)}, guest RSS MiB "
              f"{span(hs, 'dst_fp', 3)}; source fds "
              f"{span(hs[1:], 'src_fp', 0)}, threads "
              f"{span(hs[1:], 'src_fp', 1)}, VMM RSS MiB "
              f"{span(hs[1:], 'src_fp', 2)}, guest RSS MiB "
              f"{span(hs[1:], 'src_fp', 3)}")
        print(f"# {out[-1]}", flush=True)
    return out


def span(hops, attr, i):
    vals = [getattr(h, attr)[i] for h in hops if getattr(h, attr)]
    if not vals:
        return "-"
    if i >= 2:
        return f"{mib(min(vals))}..{mib(max(vals))}"
    return f"{min(vals)}..{max(vals)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kvmig")
    ap.add_argument("guest")
    ap.add_argument("--rounds", type=int, default=100,
                    help="hops of the ping-pong per mode (default 100)")
    ap.add_argument("--modes", default="off,on",
                    help="multifd off, on or both (default off,on)")
    ap.add_argument("--leak-rounds", type=int, default=None,
                    help="rounds of the long-lived processes (default "
                         "rounds/5, at least 3)")
    ap.add_argument("--out", help="also write the report as markdown here")
    ap.add_argument("--sanitized", action="store_true",
                    help="KVMIG is an ASan build: RSS is reported but not "
                         "judged (ASan's quarantine and shadow hold "
                         "memory); a leak report fails the quit instead")
    args = ap.parse_args()
    modes = [m.strip() == "on" for m in args.modes.split(",") if m.strip()]
    leak = args.leak_rounds or max(3, args.rounds // 5)
    rss = not args.sanitized
    tap = Tap(len(modes) * (3 + 2 + 2))
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    t0 = time.monotonic()
    hops = []
    with tempfile.TemporaryDirectory(prefix="kvmig-soak-") as tmp, \
            VmSet(args.kvmig, args.guest, tmp) as vms:
        print(f"# ping-pong: {args.rounds} hops per mode; long-lived "
              f"processes: {leak} rounds", flush=True)
        for line in TABLE_HEAD.splitlines():
            print(f"# {line}")
        for mode_on in modes:
            hops += ping_pong(tap, vms, args.rounds, mode_on, rss)
        lived = []
        for mode_on in modes:
            lived.append(long_lived_source(tap, vms, leak, mode_on, rss))
            lived.append(long_lived_destination(tap, vms, leak, mode_on,
                                                rss))
    lines = summary(hops)
    took = time.monotonic() - t0
    print(f"# soak took {took:.0f} s", flush=True)
    if args.out:
        write_report(args, hops, lines, [x for x in lived if x], tap, took)
    return tap.finish()


def write_report(args, hops, lines, lived, tap, took):
    """The whole run as markdown (make soak: bench/results/soak-latest.md)."""
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short",
                                 "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip() or "?"
    except OSError:
        commit = "?"
    verdict = ("passed" if not tap.failed else
               f"FAILED ({tap.failed} of {tap.n} checks)")
    leak = f" --leak-rounds {args.leak_rounds}" if args.leak_rounds else ""
    sanitized = " --sanitized" if args.sanitized else ""
    with open(args.out, "w") as f:
        f.write(f"# kvmig soak: {verdict}\n\n"
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"kvmig {commit}, load average "
                f"{os.getloadavg()[0]:.1f} at the end, {took:.0f} s.\n"
                f"`tests/soak/soak.py KVMIG GUEST --rounds {args.rounds} "
                f"--modes {args.modes}{leak}{sanitized}`"
                f" (guest `{APPEND}`, {MEMORY}, 2 vCPUs, --verify-ram on "
                f"every side).\n\n")
        for line in lines + lived:
            f.write(f"- {line}\n")
        f.write("\nfds/threads/VMM RSS+guest RSS (MiB): VMM RSS is VmRSS "
                "less the guest RAM mapping's resident pages.\n\n")
        f.write(TABLE_HEAD + "\n")
        for h in hops:
            f.write(row(h) + "\n")


if __name__ == "__main__":
    sys.exit(main())
