#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Live migration of a running guest between kvmig processes (issue 3):
idle; 2 vCPUs at 64 MiB/s with --verify-ram; twice in a row (A -> B -> C);
with the dirty-ring tracker. After each, heartbeats go on at the
destination, its LAPIC timer ticks, and no CORRUPT line appears anywhere.
Usage: test_vm_migrate.py KVMIG GUEST_ELF"""
import os
import re
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, guest_downtime_ms,  # noqa: E402
                   have_kvm, wait_migration, workload_started)

PLAN = 20
TICKS = re.compile(rb"guest: vcpu=(\d+) t=\d+ .*ticks=(\d+)")


def last_ticks(vm):
    """vCPU -> last reported LAPIC timer tick count."""
    out = {}
    for cpu, ticks in TICKS.findall(vm.console):
        out[int(cpu)] = int(ticks)
    return out


def migrate(tap, vms, src, name, tracker=(), verify=(), dst_extra=(),
            prepare=None):
    """Migrate src to a new destination; 4 checks. Returns (dst, t_switch).
    prepare(qmp): called on both sides before the migration (capabilities
    and parameters); the destination then starts with --incoming defer."""
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst = vms.incoming(f"{name}-dst", "defer" if prepare else uri,
                       extra=(*verify, *dst_extra))
    qs = vms.qmp(src)
    qd = vms.qmp(dst)
    if prepare:
        prepare(qs)
        prepare(qd)
        qd.cmd("migrate-incoming", uri=uri)
    st = qd.cmd("query-status")
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    r = wait_migration(qs)
    ok = tap.ok(r.get("status") == "completed" and st["status"] == "inmigrate",
                f"{name}: migration completes", f"{r}\n{src.describe()}\n"
                f"{dst.describe()}")
    if ok:
        print(f"# {name}: total {r['total-time']} ms, downtime "
              f"{r.get('downtime')} ms, {r['ram']['transferred']} bytes, "
              f"{r['ram']['dirty-sync-count']} passes")
    ss = qs.cmd("query-status")["status"]
    # The destination runs once it has confirmed and started its vCPUs,
    # a moment after the source reads "completed".
    deadline = time.monotonic() + 5
    while True:
        ds = qd.cmd("query-status")["status"]
        if ds == "running" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    tap.ok(ss == "postmigrate" and ds == "running",
           f"{name}: source postmigrate, destination running",
           f"source {ss}, destination {ds}")
    ticks_before = last_ticks(dst)
    ok = dst.wait_heartbeats(300, 10, since=time.monotonic())
    ok = ok and dst.wait_console(rb"guest: vcpu=\d+ t=\d+", 5) is not None
    time.sleep(1.2)
    ticks_after = last_ticks(dst)
    ticking = bool(ticks_after) and all(
        ticks_after[c] > ticks_before.get(c, 0) for c in ticks_after)
    tap.ok(ok and ticking,
           f"{name}: heartbeats and timer ticks go on at the destination",
           f"ticks {ticks_before} -> {ticks_after}\n{dst.describe()}")
    gap = guest_downtime_ms(src, dst, since=t0)
    print(f"# {name}: guest-observed downtime {gap:.1f} ms" if gap else
          f"# {name}: no heartbeats to measure")
    tap.ok(not corrupt_lines(src, dst), f"{name}: no CORRUPT line",
           f"{corrupt_lines(src, dst)}")
    return dst, t0


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-vm-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        # 1. idle guest
        a = vms.boot("idle", "mem=64 rate=0")
        if not workload_started(a):
            tap.skip_rest("the guest did not start: " + a.describe())
            return tap.finish()
        migrate(tap, vms, a, "idle")

        # 2. 2 vCPUs, 64 MiB/s, --verify-ram on both sides
        b = vms.boot("busy", "mem=64 rate=64 pattern=random",
                     extra=("--verify-ram",))
        workload_started(b)
        time.sleep(1)
        dst, _ = migrate(tap, vms, b, "64MiB/s+verify-ram",
                         verify=("--verify-ram",))

        # 3. and on: B -> C (the destination migrates again)
        migrate(tap, vms, dst, "second hop", verify=("--verify-ram",))

        # 4. the dirty ring tracker
        c = vms.boot("ring", "mem=64 rate=64 pattern=small-writes",
                     extra=("--dirty-tracker", "ring"))
        workload_started(c)
        time.sleep(0.5)
        migrate(tap, vms, c, "dirty ring")

        # 5. the destination of a migration can be told to power off
        d = vms.vms[-1]
        d.send_console(b"q")
        tap.ok(d.wait(15) == 0,
               "the migrated guest powers off its (destination) kvmig",
               d.describe())
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
        tap.ok(not any("ram-verify: RAM differs" in v.stderr for v in vms.vms),
               "--verify-ram found no difference",
               "\n".join(v.stderr for v in vms.vms))
        tap.ok(all(v.p.poll() is None or v.p.returncode == 0 for v in vms.vms),
               "no kvmig process failed", "\n".join(v.describe() for v in vms.vms))
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
