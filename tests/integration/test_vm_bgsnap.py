#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Background snapshot (issue 13, item 4): with the background-snapshot
capability, `migrate` writes the guest's state at one moment while the
guest goes on writing its memory; the source keeps running after
"completed", and the stream is an ordinary one.

- to file: the snapshot resumes on a fresh `kvmig run --incoming file:`:
  heartbeats, no CORRUPT, and with --verify-ram on both sides the
  destination checks its RAM against per-page hashes the source took at
  the moment the snapshot began (with the guest stopped), so a page saved
  after the guest changed it would be refused; a copy with a byte flipped
  in the middle (page data) is refused, and nothing runs;
- to tcp: a destination runs the copy while the source runs on;
- cancelled midway, or its tcp destination killed: the guest runs on,
  its RAM no longer protected (its vCPUs would stop at the first write
  otherwise), and a later snapshot works;
- with multifd (as QEMU) it is refused and the guest runs on.
Usage: test_vm_bgsnap.py KVMIG GUEST_ELF"""
import os
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, guest_downtime_ms,  # noqa: E402
                   have_kvm, wait_migration, workload_started)

PLAN = 18
MEMORY = "256M"
WORKLOAD = "mem=128 rate=128 pattern=random"
VERIFY = ("--verify-ram",)
STATUS_LINE = rb"guest: vcpu=\d+ t=\d+ .*corrupt=0"


def set_bg(q, on=True, multifd=False):
    q.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "background-snapshot", "state": on},
        {"capability": "multifd", "state": multifd}])


def runs_on(vm, since, n=500, timeout=10):
    """The guest is running: n more heartbeats after since."""
    return vm.wait_heartbeats(n, timeout, since=since)


def snapshot_to_file(tap, vms, src, q, path):
    """The reply, or None when this host cannot write-protect (skipped)."""
    t0 = time.monotonic()
    q.cmd("migrate", uri=f"file:{path}")
    r = wait_migration(q)
    t1 = time.monotonic()
    if "background-snapshot is not supported" in r.get("error-desc", ""):
        return None
    tap.ok(r.get("status") == "completed",
           "background snapshot to a file completes while the guest writes",
           f"{r}\n{src.describe()}")
    print(f"# snapshot: {(t1 - t0) * 1000:.0f} ms, pause "
          f"{r.get('downtime')} ms (with --verify-ram's hashing), longest "
          f"heartbeat gap {guest_downtime_ms(src, since=t0):.1f} ms")
    tap.ok(q.cmd("query-status")["status"] == "running" and
           runs_on(src, t1),
           "the source guest runs on after completed", src.describe())
    return r


def resume_file(tap, vms, path):
    dst = vms.incoming("resume", f"file:{path}", memory=MEMORY, extra=VERIFY)
    ok = dst.wait_heartbeats(500, 20, since=0)
    tap.ok(ok and "RAM differs" not in dst.stderr,
           "the snapshot resumes on a fresh kvmig: heartbeats, RAM equal "
           "to the source's at the snapshot's moment (--verify-ram)",
           dst.describe())
    tap.ok(dst.wait_console(STATUS_LINE, 5) is not None and
           not corrupt_lines(dst),
           "the resumed guest's memory checks find no corruption",
           dst.describe())
    dst.send_console(b"q")
    tap.ok(dst.wait(15) == 0, "the resumed guest powers off cleanly",
           dst.describe())


def flipped_copy_refused(tap, vms, tmp, path):
    bad = os.path.join(tmp, "flipped.kvmig")
    shutil.copyfile(path, bad)
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))
    dst = vms.incoming("flipped", f"file:{bad}", memory=MEMORY, extra=VERIFY)
    rc = dst.wait(30)
    why = [ln for ln in dst.stderr.splitlines() if "RAM differs" in ln]
    print("# flipped copy: " + (why[0] if why else dst.stderr[-300:]))
    tap.ok(rc not in (None, 0) and not dst.heartbeat_times(),
           "a snapshot with a byte flipped in its page data is refused, "
           "nothing runs", dst.describe())


def snapshot_over_tcp(tap, vms, src, q):
    port = free_port()
    dst = vms.incoming("tcp-copy", f"tcp:127.0.0.1:{port}", memory=MEMORY,
                       extra=VERIFY)
    time.sleep(0.3)
    q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_migration(q)
    t1 = time.monotonic()
    tap.ok(r.get("status") == "completed" and
           dst.wait_heartbeats(300, 20, since=0),
           "over tcp: the destination runs the snapshot",
           f"{r}\n{dst.describe()}")
    tap.ok(runs_on(src, t1) and q.cmd("query-status")["status"] == "running",
           "over tcp: the source runs on as well", src.describe())
    dst.send_console(b"q")
    dst.wait(15)


def cancel_midway(tap, vms, src, q, tmp):
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20})
    q.cmd("migrate", uri=f"file:{os.path.join(tmp, 'cancelled.kvmig')}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") == "active" and r["ram"]["transferred"] > 2 << 20:
            break
        time.sleep(0.02)
    tap.ok(r.get("status") == "active", "a rate-limited snapshot is active",
           str(r))
    q.cmd("migrate_cancel")
    r = wait_migration(q, timeout=10)
    t1 = time.monotonic()
    tap.ok(r.get("status") == "cancelled", "migrate_cancel cancels it", str(r))
    tap.ok(runs_on(src, t1, n=1000) and
           q.cmd("query-status")["status"] == "running",
           "after the cancel the guest runs and writes on: nothing is left "
           "write-protected", src.describe())
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 0})


def destination_killed(tap, vms, src, q):
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20})
    port = free_port()
    dst = vms.incoming("killed", f"tcp:127.0.0.1:{port}", memory=MEMORY)
    time.sleep(0.3)
    q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    time.sleep(0.5)
    dst.kill()
    r = wait_migration(q, timeout=30)
    t1 = time.monotonic()
    tap.ok(r.get("status") == "failed",
           "a snapshot whose destination is killed fails", str(r))
    tap.ok(runs_on(src, t1, n=1000) and
           q.cmd("query-status")["status"] == "running",
           "and the guest runs and writes on, nothing left protected",
           src.describe())
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 0})


def refused_with_multifd(tap, vms, src, q, tmp):
    set_bg(q, True, multifd=True)
    q.cmd("migrate", uri=f"file:{os.path.join(tmp, 'refused.kvmig')}")
    r = wait_migration(q)
    t1 = time.monotonic()
    tap.ok(r.get("status") == "failed" and
           "Snapshot not compatible with multifd" in r.get("error-desc", ""),
           "with multifd it is refused, as QEMU does", str(r))
    tap.ok(runs_on(src, t1), "the refused guest runs on", src.describe())
    set_bg(q, True)


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-bgsnap-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        src = vms.boot("source", WORKLOAD, memory=MEMORY, extra=VERIFY)
        if not workload_started(src):
            tap.skip_rest("guest did not start: " + src.describe())
            return tap.finish()
        time.sleep(0.5)
        q = vms.qmp(src)
        set_bg(q)
        path = os.path.join(tmp, "snapshot.kvmig")
        if snapshot_to_file(tap, vms, src, q, path) is None:
            tap.skip_rest("userfaultfd cannot write-protect here: " +
                          q.cmd("query-migrate").get("error-desc", ""))
            return tap.finish()
        resume_file(tap, vms, path)
        flipped_copy_refused(tap, vms, tmp, path)
        snapshot_over_tcp(tap, vms, src, q)
        cancel_midway(tap, vms, src, q, tmp)
        destination_killed(tap, vms, src, q)
        snapshot_to_file(tap, vms, src, q, path)
        refused_with_multifd(tap, vms, src, q, tmp)
        tap.ok(not corrupt_lines(src), "the source guest never saw corruption",
               src.describe())
        q.cmd("quit")
        src.wait(10)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
