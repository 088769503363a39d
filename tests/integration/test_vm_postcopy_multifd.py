#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Postcopy with multifd (issue 11 item 4a, kvmig's extension: QEMU 7.2
refuses the pair): the background pages take the multifd channels after
the switch, requested pages the main stream. With the project's guest,
2 channels and --verify-ram on both sides: started at once and after a
few passes, each completes on both sides with the RAM digests equal, the
guest's heartbeats going on and no CORRUPT; the source's multifd-bytes
grew after the switch (the channels carried postcopy's pages) and are
part of its transferred bytes. Then the breaks, cut for real by a TCP
proxy (tests/faults/faultproxy.py, which sees the main channel as
connection 0 and the multifd channels as 1 and 2): a multifd channel
reset mid-postcopy pauses both sides (not failed, not hung), and so does
the whole link cut; each recovers over a new link (the background pages
then go on the main stream) and completes with the digests equal.
postcopy-preempt with multifd is refused, on one line saying so.
make check runs the quick cases; KVMIG_TEST_FULL=1 all.
Usage: test_vm_postcopy_multifd.py KVMIG GUEST_ELF"""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "faults"))
from faultproxy import Proxy, Rule  # noqa: E402
from test_vm_postcopy import (FINAL, VERIFY, both_status, caps,  # noqa: E402
                              check_completed, resumed, run_cases,
                              wait_status)
from vmlib import free_port, workload_started  # noqa: E402

CHANNELS = 2


def multifd_on(q):
    caps(q, multifd=True)
    q.cmd("migrate-set-parameters", **{"multifd-channels": CHANNELS})


def start_pair(vms, name, append, cap_bw=0):
    """A booted source and a --incoming defer destination with
    postcopy-ram and multifd on both. Returns (src, dst, qs, qd, port)."""
    src = vms.boot(f"{name}-src", append, extra=VERIFY)
    workload_started(src)
    dst = vms.incoming(f"{name}-dst", "defer", extra=VERIFY)
    qs, qd = vms.qmp(src), vms.qmp(dst)
    caps(qs, postcopy_ram=True)
    caps(qd, postcopy_ram=True, postcopy_blocktime=True)
    multifd_on(qs)
    multifd_on(qd)
    if cap_bw:
        qs.cmd("migrate-set-parameters", **{"max-bandwidth": cap_bw})
    port = free_port()
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    return src, dst, qs, qd, port


def mfd_bytes(r):
    return r.get("ram", {}).get("multifd-bytes", 0)


def switch(qs, qd):
    """migrate-start-postcopy; once the destination runs the guest, the
    source's multifd-bytes then (the destination's reply)."""
    qs.cmd("migrate-start-postcopy")
    r = wait_status(qd, ("postcopy-active",) + FINAL, timeout=30)
    return mfd_bytes(qs.cmd("query-migrate")), r


def check_multifd_figures(tap, name, qs, at_switch):
    """The channels carried postcopy's background pages, and their bytes
    are counted in transferred."""
    r = qs.cmd("query-migrate")
    ram = r.get("ram", {})
    grew = mfd_bytes(r) - at_switch
    print(f"# {name}: multifd-bytes {mfd_bytes(r)} ({grew} after the "
          f"switch), transferred {ram.get('transferred')}")
    tap.ok(grew >= 8 << 20 and
           ram.get("transferred", 0) >= mfd_bytes(r) > 0,
           f"{name}: the multifd channels carried postcopy's pages "
           "(multifd-bytes grew by 8 MiB or more after the switch, within "
           "transferred)", f"{r}\nat the switch: {at_switch}")


def at_once(tap, vms):
    name = "multifd, at once"
    src, dst, qs, qd, port = start_pair(vms, "mfd-at-once",
                                        "mem=128 rate=64 pattern=random",
                                        cap_bw=32 << 20)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    at_switch, _ = switch(qs, qd)
    check_completed(tap, name, src, dst, qs, qd, t0)
    check_multifd_figures(tap, name, qs, at_switch)


def after_passes(tap, vms):
    name = "multifd, after 3 passes"
    src, dst, qs, qd, port = start_pair(vms, "mfd-passes",
                                        "mem=128 rate=256 pattern=random",
                                        cap_bw=128 << 20)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    r = {}
    while time.monotonic() < deadline:
        r = qs.cmd("query-migrate")
        if r.get("ram", {}).get("dirty-sync-count", 0) >= 3 or \
                r.get("status") in FINAL:
            break
        time.sleep(0.05)
    tap.ok(r.get("status") == "active" and mfd_bytes(r) > 0,
           f"{name}: precopy is in its third pass, over the channels",
           f"{r}")
    at_switch, _ = switch(qs, qd)
    check_completed(tap, name, src, dst, qs, qd, t0)
    check_multifd_figures(tap, name, qs, at_switch)


def cut_then_recover(tap, vms, what):
    """what: "channel" resets multifd connection 1 only, "link" cuts every
    connection. Both sides pause; a new link (no multifd channels: the
    background pages go on the main stream) completes."""
    name = f"multifd, {what} cut mid-postcopy"
    src, dst, qs, qd, port = start_pair(vms, f"mfd-cut-{what}",
                                        "mem=512 rate=1024 pattern=random",
                                        cap_bw=32 << 20)
    proxy = Proxy(port)
    qs.cmd("migrate", uri=proxy.uri)
    time.sleep(1.5)
    t0 = time.monotonic()
    at_switch, r = switch(qs, qd)
    if what == "channel":
        proxy.fire(Rule("reset"), conn=1)
    else:
        proxy.cut_all()
    rs, rd = both_status(qs, qd, "postcopy-paused")
    tap.ok(r.get("status") == "postcopy-active" and
           len(proxy.conns) == 1 + CHANNELS and
           rs.get("status") == "postcopy-paused" and
           rd.get("status") == "postcopy-paused" and
           "error-desc" in rs and "error-desc" in rd,
           f"{name}: both sides postcopy-paused, saying why",
           f"{r}\n{rs}\n{rd}\n{proxy.log}")
    print(f"# {name}: source: {rs.get('error-desc')}")
    print(f"# {name}: destination: {rd.get('error-desc')}")
    time.sleep(0.5)  # a write already under way fails or ends by now
    at_pause = mfd_bytes(qs.cmd("query-migrate"))
    port2 = free_port()
    qd.cmd("migrate-recover", uri=f"tcp:127.0.0.1:{port2}")
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port2}", resume=True)
    resumed(qs)
    check_completed(tap, name, src, dst, qs, qd, t0)
    final = mfd_bytes(qs.cmd("query-migrate"))
    tap.ok(final == at_pause >= at_switch > 0,
           f"{name}: multifd-bytes count what the channels carried, and "
           "nothing went on them after the recovery",
           f"at the switch {at_switch}, paused {at_pause}, final {final}")
    proxy.close()


def preempt_refused(tap, vms):
    name = "postcopy-preempt with multifd"
    src, dst, qs, qd, port = start_pair(vms, "mfd-preempt",
                                        "mem=64 rate=64 pattern=random")
    caps(qs, postcopy_preempt=True)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_status(qs, FINAL, timeout=20)
    desc = r.get("error-desc", "")
    tap.ok(r.get("status") == "failed" and
           "postcopy-preempt with multifd is not supported by kvmig" in desc
           and "turn postcopy-preempt off" in desc and
           qs.cmd("query-status")["status"] == "running",
           f"{name}: refused before anything is sent, saying which to turn "
           "off; the guest runs on", f"{r}")


# Each case, with how many checks it makes, and whether make check runs it.
CASES = [
    ("at once", at_once, 6, True),
    ("after 3 passes", after_passes, 7, False),
    ("multifd channel cut",
     lambda tap, vms: cut_then_recover(tap, vms, "channel"), 7, True),
    ("whole link cut",
     lambda tap, vms: cut_then_recover(tap, vms, "link"), 7, False),
    ("preempt refused", preempt_refused, 1, True),
]


def main():
    return run_cases(CASES, "kvmig-pcmfd-")


if __name__ == "__main__":
    sys.exit(main())
