#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""An operator's pause is kept (issue 10, defect 5), as QEMU keeps it: a
guest stopped with QMP `stop` before `migrate` stays paused when the
switch-over fails (no RESUME, no heartbeat until `cont`), and arrives
paused on the destination of a migration that completes (QEMU's
"globalstate" section carries the run state); `cont` then runs it there
with no CORRUPT under --verify-ram. A cancelled migration leaves a paused
guest paused too. A running guest still resumes on a failed switch-over. The failure is the destination's own refusal at the
switch-over: it was started with one vCPU fewer than the source.
Usage: test_vm_pause.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, have_kvm,  # noqa: E402
                   wait_migration, workload_started)

PLAN = 17
QUIET_S = 1.5  # a paused guest prints no heartbeat for this long
SLOW = 64 * 1024 * 1024  # bytes/s: keeps a migration in flight to cancel


def wait_transferring(q, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") == "active" and r["ram"]["transferred"] > 1 << 20:
            return True
        time.sleep(0.02)
    return False


def stop_guest(tap, vms, vm):
    q = vms.qmp(vm)
    q.cmd("stop")
    st = q.cmd("query-status")
    tap.ok(st["status"] == "paused" and q.wait_event("STOP", 5),
           f"[{vm.label}] QMP stop pauses the guest (STOP event)", st)
    return q


def stays_paused(vm, q):
    """(ok, diagnostics): paused, no RESUME, no heartbeat for QUIET_S."""
    t0 = time.monotonic()
    resume = q.wait_event("RESUME", timeout=QUIET_S)
    st = q.cmd("query-status")
    beats = vm.heartbeats_since(t0)
    ok = (st["status"] == "paused" and not st["running"] and resume is None
          and beats == 0)
    return ok, f"{st} RESUME={resume} heartbeats={beats}\n{vm.describe()}"


def cont_runs(vm, q):
    t0 = time.monotonic()
    q.cmd("cont")
    resume = q.wait_event("RESUME", timeout=5)
    ok = vm.wait_heartbeats(50, 10, since=t0)
    st = q.cmd("query-status")["status"]
    return resume is not None and ok and st == "running", \
        f"RESUME={resume} status={st}\n{vm.describe()}"


def refused_switch_over(vms, label, src_q):
    """Migrate to a destination with one vCPU fewer: it refuses the
    stream in the switch-over (after the source stopped its vCPUs)."""
    port = free_port()
    dst = vms.incoming(label, f"tcp:127.0.0.1:{port}", cpus=1)
    vms.qmp(dst)  # its monitor is up once it listens
    src_q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_migration(src_q, timeout=30)
    dst.wait(10)
    return r, dst


def paused_source_fails(tap, vms):
    src = vms.boot("paused-src", "mem=64 rate=64")
    if not workload_started(src):
        tap.skip_rest("guest did not start: " + src.describe())
        return False
    qs = stop_guest(tap, vms, src)
    r, dst = refused_switch_over(vms, "refusing-dst", qs)
    tap.ok(r.get("status") == "failed" and "the destination" in
           r.get("error-desc", ""),
           "the destination refuses the switch-over: the migration fails",
           f"{r}\n{dst.describe()}")
    ok, diag = stays_paused(src, qs)
    tap.ok(ok, "the paused source stays paused: query-status paused, no "
           "RESUME, no heartbeat", diag)
    ok, diag = cont_runs(src, qs)
    tap.ok(ok, "cont then resumes it (RESUME, heartbeats)", diag)
    # Paused again, then a migration cancelled wherever it is.
    q2 = stop_guest(tap, vms, src)
    port = free_port()
    vms.qmp(vms.incoming("cancel-dst", f"tcp:127.0.0.1:{port}"))
    q2.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW})
    q2.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    wait_transferring(q2)
    q2.cmd("migrate_cancel")
    r = wait_migration(q2, timeout=10)
    ok, diag = stays_paused(src, q2)
    tap.ok(r.get("status") == "cancelled" and ok,
           "after a cancelled migration the paused source stays paused",
           f"{r}\n{diag}")
    return True


def running_source_fails(tap, vms):
    src = vms.boot("running-src", "mem=64 rate=64")
    workload_started(src)
    qs = vms.qmp(src)
    r, dst = refused_switch_over(vms, "refusing-dst2", qs)
    tap.ok(r.get("status") == "failed", "a running source's switch-over "
           "is refused too", f"{r}\n{dst.describe()}")
    stop = qs.wait_event("STOP", timeout=5)
    resume = qs.wait_event("RESUME", timeout=5)
    st = qs.cmd("query-status")["status"]
    ok = src.wait_heartbeats(50, 10, since=time.monotonic())
    tap.ok(stop and resume and st == "running" and ok,
           "a running source resumes (STOP, RESUME, running, heartbeats)",
           f"STOP={stop} RESUME={resume} status={st}\n{src.describe()}")


def paused_source_completes(tap, vms):
    vr = ("--verify-ram",)
    src = vms.boot("paused-src2", "mem=64 rate=64", extra=vr)
    workload_started(src)
    qs = stop_guest(tap, vms, src)
    port = free_port()
    dst = vms.incoming("dst", f"tcp:127.0.0.1:{port}", extra=vr)
    qd = vms.qmp(dst)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_migration(qs)
    tap.ok(r.get("status") == "completed", "a paused guest migrates", r)
    rd = wait_migration(qd, timeout=10)
    done = qd.wait_event("MIGRATION", timeout=5,
                         pred=lambda e: e["data"]["status"] == "completed")
    tap.ok(rd.get("status") == "completed" and done,
           "the destination reports its incoming migration completed",
           f"{rd} {done}\n{dst.describe()}")
    tap.ok(qs.cmd("query-status")["status"] == "postmigrate"
           and qs.wait_event("RESUME", timeout=0.5) is None,
           "the source ends in postmigrate, never resumed", src.describe())
    ok, diag = stays_paused(dst, qd)
    tap.ok(ok, "the destination keeps the guest paused: query-status "
           "paused, no RESUME, no heartbeat", diag)
    tap.ok("paused as on the source" in dst.stderr,
           "the destination says the guest stays paused as on the source",
           dst.describe())
    ok, diag = cont_runs(dst, qd)
    tap.ok(ok, "cont on the destination runs the guest there", diag)
    tap.ok(src.heartbeats_since(time.monotonic() - 1) == 0,
           "the source runs nothing meanwhile", src.describe())


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-pause-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        if paused_source_fails(tap, vms):
            running_source_fails(tap, vms)
            paused_source_completes(tap, vms)
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
