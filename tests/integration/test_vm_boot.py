#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kvmig run boots the project's guest to its workload and powers off
(issue 3). Usage: test_vm_boot.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import VmSet, corrupt_lines, have_kvm, workload_started  # noqa: E402

PLAN = 7


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-vm-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        t0 = time.monotonic()
        vm = vms.boot("vm", "mem=64 rate=64")
        ok = tap.ok(workload_started(vm), "guest reaches its workload",
                    vm.describe())
        tap.ok(ok and vm.wait_heartbeats(500, 10, since=time.monotonic()),
               "heartbeats arrive (500 within 10 s)", vm.describe())
        tap.ok(vm.wait_console(rb"guest: vcpu=1 t=\d+", 10) is not None,
               "both vCPUs print status lines", vm.describe())
        q = vms.qmp(vm)
        st = q.cmd("query-status")
        tap.ok(st.get("status") == "running" and st.get("running") is True,
               "query-status says running", st)
        vm.send_console(b"q")
        rc = vm.wait(15)
        tap.ok(rc == 0, "power-off from the guest ends kvmig with exit 0",
               vm.describe())
        tap.ok(not corrupt_lines(vm), "no CORRUPT line", vm.describe())
        print(f"# boot to workload + run + power-off: "
              f"{time.monotonic() - t0:.2f} s")

        bad = vms._start("bad", ["--memory", "64M", "--kernel", "/etc/hostname"])
        rc = bad.wait(15)
        tap.ok(rc == 1 and "multiboot" in bad.stderr.lower(),
               "a kernel that is not multiboot is refused clearly",
               bad.describe())
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
