#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A destination started with `--incoming tcp:...` (listening at once) is
given multifd over QMP before the source connects, as a management tool
does with QEMU: the settings are read when the source connects, so the
multifd channels are accepted and the migration completes, with the RAM
compared by --verify-ram and the guest's heartbeats going on at the
destination. Once the source connected, a change of multifd settings on
the destination is refused, saying what to do; other parameters are still
accepted. The destination's MIGRATION events and query-migrate follow its
own status table (setup, active, completed).
Usage: test_vm_incoming_caps.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (QmpError, VmSet, corrupt_lines, free_port,  # noqa: E402
                   have_kvm, wait_migration, workload_started)

VERIFY = ("--verify-ram",)
PLAN = 8
CHANNELS = 3


def error_desc(reply):
    err = reply.get("error") or {}
    return err.get("desc")


def set_multifd(q, on=True):
    return q.execute("migrate-set-capabilities", capabilities=[
        {"capability": "multifd", "state": on}])


def multifd_set_before_connect(tap, vms):
    src = vms.boot("src", "mem=64 rate=16 pattern=random", extra=VERIFY)
    if not tap.ok(workload_started(src), "source guest reaches its workload",
                  src.describe()):
        return False
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    # Listening from the start: the listener is open before QMP is.
    dst = vms.incoming("dst", uri, extra=VERIFY)
    qs, qd = vms.qmp(src), vms.qmp(dst)
    for q in (qs, qd):
        q.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "multifd", "state": True}])
        q.cmd("migrate-set-parameters", **{"multifd-channels": CHANNELS})
    before = qd.cmd("query-migrate")
    # Slow enough to act on the destination while it runs.
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20})
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    during = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        during = qd.cmd("query-migrate")
        if during.get("status") != "setup":
            break
        time.sleep(0.01)
    refused = [error_desc(set_multifd(qd, False)),
               error_desc(qd.execute("migrate-set-parameters",
                                     **{"multifd-channels": 2}))]
    other = qd.execute("migrate-set-parameters", **{"downtime-limit": 250})
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    tap.ok(before == {"status": "setup"} and
           during.get("status") == "active",
           "the listening destination reports setup, then active once the "
           "source connected", (before, during))
    tap.ok(all(d and "cannot change now" in d and
               "before the source connects" in d for d in refused) and
           "the multifd capability" in refused[0] and
           "multifd-channels" in refused[1] and other == {"return": {}},
           "after the source connected, a multifd change on the "
           "destination is refused saying what to do; downtime-limit is "
           "still accepted", (refused, other))

    r = wait_migration(qs, timeout=90)
    tap.ok(r.get("status") == "completed" and
           r.get("ram", {}).get("multifd-bytes", 0) > 0,
           "the migration completes, its pages over the multifd channels",
           f"{r}\n{src.describe()}\n{dst.describe()}")
    deadline = time.monotonic() + 5
    ds = None
    while time.monotonic() < deadline:
        ds = qd.cmd("query-status")["status"]
        if ds == "running":
            break
        time.sleep(0.02)
    tap.ok(ds == "running" and
           not any("ram-verify: RAM differs" in v.stderr
                   for v in (src, dst)),
           "destination running, --verify-ram found the RAM identical",
           f"{ds}\n{src.describe()}\n{dst.describe()}")
    ok = dst.wait_heartbeats(100, 10, since=time.monotonic())
    tap.ok(ok and not corrupt_lines(src, dst),
           "heartbeats go on at the destination, no CORRUPT line",
           dst.describe())
    done = qd.wait_event("MIGRATION", timeout=5,
                         pred=lambda e: e["data"]["status"] == "completed")
    got = [e["data"]["status"] for e in qd.events
           if e["event"] == "MIGRATION"] + (["completed"] if done else [])
    after = qd.cmd("query-migrate")
    tap.ok(got == ["active", "completed"] and
           after == {"status": "completed"},
           "the destination's MIGRATION events go active, completed "
           "(setup came before the monitor); query-migrate says completed",
           (got, done, after))
    tap.ok(set_multifd(qd, False) == {"return": {}},
           "once the incoming migration ended, multifd can change again",
           qd.events)
    print(f"# source connected {t0:.3f}, completed in "
          f"{r.get('total-time')} ms")
    return True


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-incaps-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        try:
            if not multifd_set_before_connect(tap, vms):
                tap.skip_rest("no source guest")
        except (OSError, QmpError) as e:
            # A VM that died (the failure this test is about): its QMP
            # socket closes; what is left fails, not crashes.
            tap.ok(False, "both VMs answer QMP to the end", repr(e))
            tap.skip_rest(f"a VM's QMP went away: {e!r}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
