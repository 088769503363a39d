#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Live migration of a running guest with issue 5's capabilities: XBZRLE
(small writes, so deltas are sent), and the RAM compared byte for byte
with --verify-ram on both sides. After each, heartbeats go on at the
destination, its LAPIC timer ticks, and no CORRUPT line appears anywhere.
Usage: test_vm_capabilities.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from test_vm_migrate import migrate  # noqa: E402
from vmlib import VmSet, corrupt_lines, have_kvm, workload_started  # noqa: E402

VERIFY = ("--verify-ram",)
PLAN = 4 + 3 + 4 * 5 + 5 + 5


def boot_running(vms, name, append):
    """A source with --verify-ram whose workload runs; None if it did not
    start."""
    src = vms.boot(name, append, extra=VERIFY)
    if not workload_started(src):
        return None
    time.sleep(0.5)
    return src


def set_capability(q, cap):
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": cap, "state": True}])


def xbzrle(tap, vms):
    """small-writes dirties 8 bytes of a page: re-sent pages go as
    deltas. A 1 ms downtime limit makes the driver run several passes."""
    src = boot_running(vms, "xbzrle", "mem=64 rate=64 pattern=small-writes")
    if not src:
        return False
    q = vms.qmp(src)
    set_capability(q, "xbzrle")
    q.cmd("migrate-set-parameters", **{"xbzrle-cache-size": 32 << 20,
                                       "downtime-limit": 1})
    dst, _ = migrate(tap, vms, src, "xbzrle", verify=VERIFY)
    r = q.cmd("query-migrate")
    x = r.get("xbzrle-cache", {})
    print(f"# xbzrle-cache: {x}")
    tap.ok(x.get("cache-size") == 32 << 20 and x.get("pages", 0) > 0 and
           x.get("bytes", 0) < x.get("pages", 0) * 4096,
           "xbzrle: pages went as deltas smaller than pages",
           f"{r}")
    tap.ok(not any("ram-verify: RAM differs" in v.stderr
                   for v in (src, dst)),
           "xbzrle: --verify-ram found no difference",
           f"{src.describe()}\n{dst.describe()}")
    return True


def multifd(tap, vms, compression):
    """2 channels with each compression, zero pages found by the channel
    threads; 16 MiB/s of random writes while it runs (zlib moves
    about 60 MiB/s a channel here)."""
    name = f"multifd+{compression}"
    src = boot_running(vms, name, "mem=128 rate=16 pattern=random")
    if not src:
        return False

    def prepare(q):
        set_capability(q, "multifd")
        q.cmd("migrate-set-parameters", **{
            "multifd-channels": 2, "multifd-compression": compression,
            "zero-page-detection": "multifd"})
    dst, _ = migrate(tap, vms, src, name, verify=VERIFY, prepare=prepare)
    ram = vms.qmp(src).cmd("query-migrate").get("ram", {})
    tap.ok(not any("ram-verify: RAM differs" in v.stderr
                   for v in (src, dst)) and
           0 < ram.get("multifd-bytes", 0) < ram.get("transferred", 0),
           f"{name}: --verify-ram found no difference; the pages went "
           f"over the channels (ram.multifd-bytes)",
           f"{ram}\n{src.describe()}\n{dst.describe()}")
    return True


def auto_converge(tap, vms):
    """64 MiB/s of writes over a link capped at 24 MiB/s never converges;
    auto-converge throttles the vCPUs until it does."""
    src = boot_running(vms, "auto-converge", "mem=64 rate=64 pattern=random")
    if not src:
        return False
    q = vms.qmp(src)
    set_capability(q, "auto-converge")
    # x-compress off: compressed, the guest's pages would cross the cap
    # fast enough to converge without a throttle.
    q.cmd("migrate-set-parameters", **{
        "x-compress": "off",
        "max-bandwidth": 24 << 20, "downtime-limit": 50,
        "cpu-throttle-initial": 50, "cpu-throttle-increment": 20})
    dst, _ = migrate(tap, vms, src, "auto-converge", verify=VERIFY)
    r = q.cmd("query-migrate")
    print(f"# auto-converge: throttle {r.get('cpu-throttle-percentage')} %")
    tap.ok(r.get("cpu-throttle-percentage", 0) >= 50,
           "auto-converge: the source throttled its vCPUs (>= 50 %)", r)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    return True


def compress(tap, vms):
    """x-compress always: every page that is not zero goes through the
    main stream's zstd stream, 64 MiB/s of writes while it runs."""
    src = boot_running(vms, "x-compress", "mem=64 rate=64 pattern=random")
    if not src:
        return False
    q = vms.qmp(src)
    q.cmd("migrate-set-parameters", **{"x-compress": "always"})
    dst, _ = migrate(tap, vms, src, "x-compress", verify=VERIFY)
    r = q.cmd("query-migrate")
    c = r.get("compression", {})
    print(f"# compression: {c}")
    tap.ok(c.get("pages", 0) > 0 and
           0 < c.get("compressed-size", 0) < c.get("pages", 0) * 4096 and
           c.get("x-mode") == "always" and
           not any("ram-verify: RAM differs" in v.stderr
                   for v in (src, dst)),
           "x-compress always: pages went compressed, and --verify-ram "
           "found no difference", f"{r}\n{src.describe()}\n"
           f"{dst.describe()}")
    return True


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-cap-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        if not xbzrle(tap, vms):
            tap.skip_rest("the guest did not start: " +
                          vms.vms[-1].describe())
            return tap.finish()
        for comp in ("none", "zlib", "zstd", "lz4"):
            multifd(tap, vms, comp)
        auto_converge(tap, vms)
        compress(tap, vms)
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
