#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Exactly one side runs the guest (issue 3): the destination killed
mid-migration leaves the source guest running with no long pause; a corrupt
or truncated stream into --incoming is refused clearly and no guest starts;
a cancelled migration leaves the source running.
Usage: test_vm_failures.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, guest_downtime_ms,  # noqa: E402
                   have_kvm, wait_migration, workload_started)

PLAN = 13
SLOW = 64 * 1024 * 1024  # bytes/s: keeps a 1 GiB migration in flight


def wait_transferring(q, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") == "active" and r["ram"]["transferred"] > 1 << 20:
            return True
        time.sleep(0.02)
    return False


def killed_destination(tap, vms):
    src = vms.boot("src", "mem=64 rate=64")
    if not workload_started(src):
        tap.skip_rest("guest did not start: " + src.describe())
        return False
    port = free_port()
    dst = vms.incoming("dst", f"tcp:127.0.0.1:{port}")
    qs = vms.qmp(src)
    vms.qmp(dst)
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW})
    t0 = time.monotonic()
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    tap.ok(wait_transferring(qs), "migration is under way",
           qs.cmd("query-migrate"))
    dst.kill()
    t_kill = time.monotonic()
    r = wait_migration(qs, timeout=10)
    took = time.monotonic() - t_kill
    tap.ok(r.get("status") == "failed" and took < 5,
           f"the source sees the failure within 5 s ({took:.2f} s)", r)
    tap.ok(r.get("error-desc"), "query-migrate says why",
           f"{r}\n{src.stderr}")
    print(f"# source error: {r.get('error-desc')}")
    st = qs.cmd("query-status")["status"]
    ok = src.wait_heartbeats(300, 5, since=time.monotonic())
    tap.ok(st == "running" and ok, "the source guest keeps running",
           f"{st}\n{src.describe()}")
    gap = guest_downtime_ms(src, since=t0)
    print(f"# largest heartbeat gap on the source: {gap:.1f} ms")
    tap.ok(gap is not None and gap < 500,
           "no heartbeat gap beyond a normal pause (< 500 ms)", gap)
    # The same source can migrate again afterwards.
    port2 = free_port()
    vms.qmp(vms.incoming("dst2", f"tcp:127.0.0.1:{port2}"))
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port2}")
    r = wait_migration(qs)
    tap.ok(r.get("status") == "completed",
           "a later migration of the same guest completes", r)
    return True


def cancelled(tap, vms):
    src = vms.boot("cancel-src", "mem=64 rate=64")
    workload_started(src)
    port = free_port()
    dst = vms.incoming("cancel-dst", f"tcp:127.0.0.1:{port}")
    vms.qmp(dst)  # its monitor is up once it listens
    qs = vms.qmp(src)
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW})
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    wait_transferring(qs)
    qs.cmd("migrate_cancel")
    r = wait_migration(qs, timeout=10)
    tap.ok(r.get("status") == "cancelled", "migrate_cancel cancels", r)
    st = qs.cmd("query-status")["status"]
    ok = src.wait_heartbeats(200, 5, since=time.monotonic())
    tap.ok(st == "running" and ok, "after a cancel the source runs on",
           src.describe())
    rc = dst.wait(10)
    tap.ok(rc == 1 and "no guest was started" in dst.stderr,
           "the destination of a cancelled migration exits 1 without "
           "starting a guest", dst.describe())


def corrupt_stream(tap, vms, tmp):
    src = vms.boot("save", "mem=32 rate=16")
    workload_started(src)
    path = os.path.join(tmp, "vm.kvmig")
    qs = vms.qmp(src)
    qs.cmd("migrate", uri=f"file:{path}")
    r = wait_migration(qs)
    if r.get("status") != "completed":
        tap.ok(False, "saving a stream to corrupt", r)
        tap.skip_rest("no stream")
        return
    data = bytearray(open(path, "rb").read())
    # A byte in the middle of the RAM data and one in the device sections.
    bad = bytearray(data)
    bad[len(bad) * 3 // 4] ^= 0xff
    for i in range(len(bad) - 2000, len(bad) - 1000):
        bad[i] ^= 0x5a
    bad_path = os.path.join(tmp, "bad.kvmig")
    open(bad_path, "wb").write(bad)
    dst = vms.incoming("bad-dst", f"file:{bad_path}")
    rc = dst.wait(20)
    tap.ok(rc == 1 and "stream offset" in dst.stderr
           and "no guest was started" in dst.stderr,
           "a corrupt stream: exit 1, an error naming the stream offset, "
           "no guest", dst.describe())
    tap.ok(b"*" not in dst.console and b"guest:" not in dst.console,
           "nothing ran on the destination's console", dst.describe())
    cut_path = os.path.join(tmp, "cut.kvmig")
    open(cut_path, "wb").write(data[:len(data) // 2])
    dst = vms.incoming("cut-dst", f"file:{cut_path}")
    rc = dst.wait(20)
    tap.ok(rc == 1 and "end of stream" in dst.stderr
           and b"*" not in dst.console,
           "a truncated stream is refused, no guest", dst.describe())


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-vm-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        if killed_destination(tap, vms):
            cancelled(tap, vms)
            corrupt_stream(tap, vms, tmp)
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
