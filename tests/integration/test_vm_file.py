#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Suspend to a file and resume from it (issue 3): migrate file:PATH while
the workload runs, end that kvmig, start a new one with --incoming
file:PATH, and the guest goes on with its memory intact.
Usage: test_vm_file.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, have_kvm, wait_migration,  # noqa: E402
                   workload_started)

PLAN = 6


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-vm-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        src = vms.boot("suspend", "mem=128 rate=64 pattern=hot-cold",
                       extra=("--verify-ram",))
        if not workload_started(src):
            tap.skip_rest("guest did not start: " + src.describe())
            return tap.finish()
        time.sleep(1)
        path = os.path.join(tmp, "suspended.kvmig")
        q = vms.qmp(src)
        q.cmd("migrate", uri=f"file:{path}")
        r = wait_migration(q)
        tap.ok(r.get("status") == "completed", "saved to a file",
               f"{r}\n{src.describe()}")
        tap.ok(q.cmd("query-status")["status"] == "postmigrate",
               "the saved guest is not running any more")
        q.cmd("quit")
        tap.ok(src.wait(10) == 0, "the suspended kvmig quits cleanly",
               src.describe())
        size = os.path.getsize(path)
        print(f"# stream file: {size} bytes")
        dst = vms.incoming("resume", f"file:{path}", extra=("--verify-ram",))
        ok = dst.wait_heartbeats(500, 15, since=0)
        tap.ok(ok and "ram-verify: RAM differs" not in dst.stderr,
               "resumed from the file: heartbeats go on", dst.describe())
        tap.ok(dst.wait_console(rb"guest: vcpu=\d+ t=\d+ .*corrupt=0", 5)
               is not None and not corrupt_lines(src, dst),
               "its memory checks find no corruption", dst.describe())
        dst.send_console(b"q")
        tap.ok(dst.wait(15) == 0, "the resumed guest powers off cleanly",
               dst.describe())
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
