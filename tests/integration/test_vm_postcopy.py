#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Postcopy between kvmig processes (issue 11), with the project's guest
and --verify-ram on both sides: started at once, after a few passes, and
for a guest that dirties faster than a max-bandwidth cap lets precopy
converge. Each completes on both sides, the RAM digests agree, the
guest's heartbeats go on at the destination and nobody prints CORRUPT.
Then the failures: the destination killed before POSTCOPY_RUN (the source
resumes its guest), and either side killed during postcopy (the other
says, in its status and error-desc, that the guest cannot be completed).
Recovery (item 5): the link cut for real (a TCP proxy the test controls)
mid-postcopy: both sides postcopy-paused; migrate-recover and migrate
with resume through a second proxy that cuts again at the destination's
first RECV_BITMAP: paused again; a third link completes with the RAM
digests equal. And migrate-pause breaking the link on purpose; and
postcopy-preempt. x-compress after the switch: background pages go on in
ZPAGES records (the source's compressed-pages figure grows after
postcopy-active), also across a recovery (a new zstd stream on the new
link). make check runs the quick cases; KVMIG_TEST_FULL=1 all.
Usage: test_vm_postcopy.py KVMIG GUEST_ELF"""
import os
import signal
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "faults"))
from faultproxy import Proxy, Rule  # noqa: E402
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, have_kvm,  # noqa: E402
                   workload_started)

VERIFY = ("--verify-ram",)
FINAL = ("completed", "failed", "cancelled", "postcopy-paused")


def caps(q, **on):
    q.cmd("migrate-set-capabilities", capabilities=[
        {"capability": k.replace("_", "-"), "state": v}
        for k, v in on.items()])


def wait_status(q, want, timeout=60):
    """Poll query-migrate until the status is one of want; the reply."""
    deadline = time.monotonic() + timeout
    r = {}
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") in want:
            return r
        time.sleep(0.02)
    return r


def start_pair(vms, name, append, cap_bw=0, dst_blocktime=True,
               preempt=False, src_extra=()):
    """A booted source and a --incoming defer destination, postcopy-ram on
    both (and postcopy-preempt). Returns (src, dst, qs, qd, uri)."""
    src = vms.boot(f"{name}-src", append, extra=VERIFY + tuple(src_extra))
    workload_started(src)
    dst = vms.incoming(f"{name}-dst", "defer", extra=VERIFY)
    qs, qd = vms.qmp(src), vms.qmp(dst)
    caps(qs, postcopy_ram=True, postcopy_preempt=preempt)
    caps(qd, postcopy_ram=True, postcopy_blocktime=dst_blocktime,
         postcopy_preempt=preempt)
    if cap_bw:
        qs.cmd("migrate-set-parameters", **{"max-bandwidth": cap_bw})
    uri = f"tcp:127.0.0.1:{free_port()}"
    qd.cmd("migrate-incoming", uri=uri)
    return src, dst, qs, qd, uri


def check_completed(tap, name, src, dst, qs, qd, t0):
    """5 checks: both sides completed, RAM verified, heartbeats go on at
    the destination, no CORRUPT, the figures."""
    rs = wait_status(qs, FINAL)
    rd = wait_status(qd, FINAL, timeout=15)
    tap.ok(rs.get("status") == "completed" and
           rd.get("status") == "completed",
           f"{name}: completed on both sides",
           f"source {rs}\ndestination {rd}\n{src.describe()}\n"
           f"{dst.describe()}")
    print(f"# {name}: total {rs.get('total-time')} ms, downtime "
          f"{rs.get('downtime')} ms, {rs.get('ram', {}).get('transferred')} "
          f"bytes, {rs.get('ram', {}).get('dirty-sync-count')} passes, "
          f"{rs.get('ram', {}).get('postcopy-requests')} requests; dst "
          f"blocktime {rd.get('postcopy-blocktime')} ms, latency "
          f"{rd.get('postcopy-latency')} ns, p99 "
          f"{rd.get('x-postcopy-latency-p99')} ns")
    deadline = time.monotonic() + 10  # stderr is read by a thread
    while time.monotonic() < deadline and not (
            "ram-verify: RAM identical" in dst.stderr and
            "kvmig-verify" in dst.stderr):
        time.sleep(0.05)
    tap.ok("ram-verify: RAM identical" in dst.stderr and
           "kvmig-verify" in dst.stderr,
           f"{name}: the destination's RAM digest equals the source's",
           dst.describe())
    ok = dst.wait_heartbeats(300, 10, since=time.monotonic())
    tap.ok(ok and qd.cmd("query-status")["status"] == "running" and
           qs.cmd("query-status")["status"] == "postmigrate",
           f"{name}: heartbeats go on at the destination; source "
           "postmigrate", dst.describe())
    tap.ok(not corrupt_lines(src, dst), f"{name}: no CORRUPT line",
           f"{corrupt_lines(src, dst)}")
    dist = rd.get("postcopy-latency-dist")
    tap.ok("postcopy-requests" in rs.get("ram", {}) and
           "postcopy-requests" in rd.get("ram", {}) and
           isinstance(dist, list) and len(dist) == 24 and
           isinstance(rd.get("postcopy-vcpu-blocktime"), list) and
           "postcopy-blocktime" in rd and "postcopy-latency" in rd,
           f"{name}: postcopy-requests on both sides, blocktime and "
           "latency on the destination", f"{rs}\n{rd}")
    return t0


def at_once(tap, vms):
    src, dst, qs, qd, uri = start_pair(vms, "at-once",
                                       "mem=64 rate=64 pattern=random")
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    qs.cmd("migrate-start-postcopy")
    check_completed(tap, "at once", src, dst, qs, qd, t0)


def after_passes(tap, vms):
    src, dst, qs, qd, uri = start_pair(
        vms, "passes", "mem=128 rate=256 pattern=random",
        cap_bw=128 << 20)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    deadline = time.monotonic() + 30
    r = {}
    while time.monotonic() < deadline:
        r = qs.cmd("query-migrate")
        if r.get("ram", {}).get("dirty-sync-count", 0) >= 3 or \
                r.get("status") in FINAL:
            break
        time.sleep(0.05)
    tap.ok(r.get("status") == "active",
           "after passes: precopy is in its third pass", f"{r}")
    qs.cmd("migrate-start-postcopy")
    check_completed(tap, "after 3 passes", src, dst, qs, qd, t0)


def wait_passes(qs, n, timeout=60):
    """Poll the source until dirty-sync-count reaches n (or it ended)."""
    deadline = time.monotonic() + timeout
    r = {}
    while time.monotonic() < deadline:
        r = qs.cmd("query-migrate")
        if r.get("ram", {}).get("dirty-sync-count", 0) >= n or \
                r.get("status") in FINAL:
            break
        time.sleep(0.01)
    return r


def skipped_after_first_pass(tap, vms):
    """A guest rewriting its 256 MiB at 1024 MiB/s, switched as the
    benchmark does (when the first pass ended): the pass skipped pages the
    guest had written again (they went after the switch), its peeks are
    not syncs, and nothing was lost."""
    name = "re-dirtied pages skipped"
    src, dst, qs, qd, uri = start_pair(
        vms, "skip", "mem=256 rate=1024 pattern=random", cap_bw=128 << 20)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    r = wait_passes(qs, 2)
    qs.cmd("migrate-start-postcopy")
    ram = r.get("ram", {})
    tap.ok(r.get("status") == "active" and
           ram.get("x-redirtied-skipped", 0) > 0 and
           ram.get("x-dirty-peeks", 0) > ram.get("dirty-sync-count", 0),
           f"{name}: the first pass skipped re-dirtied pages; peeks are "
           "not counted as syncs", f"{r}")
    print(f"# {name}: at the switch {ram.get('dirty-sync-count')} syncs, "
          f"{ram.get('x-dirty-peeks')} peeks, "
          f"{ram.get('x-redirtied-skipped')} pages skipped")
    check_completed(tap, name, src, dst, qs, qd, t0)


def precopy_with_skips(tap, vms, tracker="log"):
    """postcopy-ram on but no switch: precopy converges with the passes
    skipping re-dirtied pages, and the last sync sends them: RAM equal.
    With KVM's dirty log (peek: KVM_GET_DIRTY_LOG) or its dirty ring
    (peek: a harvest)."""
    name = f"precopy with skips ({tracker})"
    src, dst, qs, qd, uri = start_pair(
        vms, f"pre-skip-{tracker}", "mem=64 rate=128 pattern=random",
        src_extra=("--dirty-tracker", tracker))
    qs.cmd("migrate", uri=uri)
    rs = wait_status(qs, FINAL)
    wait_status(qd, FINAL, timeout=15)
    ram = rs.get("ram", {})
    tap.ok(rs.get("status") == "completed" and
           ram.get("x-redirtied-skipped", 0) > 0,
           f"{name}: completed by precopy, pages skipped", f"{rs}")
    print(f"# {name}: {ram.get('dirty-sync-count')} syncs, "
          f"{ram.get('x-dirty-peeks')} peeks, "
          f"{ram.get('x-redirtied-skipped')} pages skipped")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and \
            "ram-verify: RAM identical" not in dst.stderr:
        time.sleep(0.05)
    tap.ok("ram-verify: RAM identical" in dst.stderr,
           f"{name}: the destination's RAM digest equals the source's",
           dst.describe())
    tap.ok(not corrupt_lines(src, dst), f"{name}: no CORRUPT line",
           f"{corrupt_lines(src, dst)}")


def never_converges(tap, vms):
    """A guest dirtying 512 MiB/s under a 32 MiB/s cap: precopy alone
    would never end; postcopy does (the cap is precopy's only, as QEMU's
    max-postcopy-bandwidth 0)."""
    src, dst, qs, qd, uri = start_pair(
        vms, "cap", "mem=256 rate=512 pattern=random", cap_bw=32 << 20)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    time.sleep(3)
    r = qs.cmd("query-migrate")
    tap.ok(r.get("status") == "active",
           "32 MiB/s cap: precopy has not converged after 3 s", f"{r}")
    qs.cmd("migrate-start-postcopy")
    check_completed(tap, "32 MiB/s cap", src, dst, qs, qd, t0)


def with_preempt(tap, vms):
    """postcopy-preempt: requested pages on their own connection; the
    fault latency must beat the main stream's (printed, and p50 under
    what the same guest sees without preempt: tens of ms here)."""
    src, dst, qs, qd, uri = start_pair(
        vms, "preempt", "mem=256 rate=512 pattern=random", cap_bw=32 << 20,
        preempt=True)
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    time.sleep(2)
    qs.cmd("migrate-start-postcopy")
    check_completed(tap, "preempt", src, dst, qs, qd, t0)
    rd = qd.cmd("query-migrate")
    p50 = rd.get("x-postcopy-latency-p50", 0)
    tap.ok(0 < p50 < 5_000_000 and rd.get("x-postcopy-preempt-pages", 0) > 0,
           "preempt: requested pages come on the preempt channel and are "
           "served within 5 ms (p50)", f"{rd}")


def zpages(r):
    """The source's compressed pages so far (query-migrate)."""
    return r.get("compression", {}).get("pages", 0)


def wait_postcopy_zpages(qs, timeout=30):
    """The source's compressed pages when it said postcopy-active, and
    its reply then."""
    r = wait_status(qs, ("postcopy-active",) + FINAL, timeout=timeout)
    return zpages(r), r


def compress_after_switch(tap, vms):
    """x-compress always (deterministic): precopy under a cap, then
    postcopy; the background pages after the switch go compressed."""
    name = "x-compress after the switch"
    src, dst, qs, qd, uri = start_pair(
        vms, "zpages", "mem=256 rate=512", cap_bw=32 << 20)
    qs.cmd("migrate-set-parameters", **{"x-compress": "always"})
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    time.sleep(2)
    qs.cmd("migrate-start-postcopy")
    before, r = wait_postcopy_zpages(qs)
    check_completed(tap, name, src, dst, qs, qd, t0)
    after = zpages(qs.cmd("query-migrate"))
    print(f"# {name}: {before} compressed pages at postcopy-active, "
          f"{after} at the end")
    tap.ok(r.get("status") == "postcopy-active" and before > 0 and
           after > before,
           f"{name}: pages went compressed after postcopy-active",
           f"{before} -> {after}: {r}")


def dst_killed_before_run(tap, vms):
    src, dst, qs, qd, uri = start_pair(
        vms, "before-run", "mem=64 rate=64 pattern=random", cap_bw=8 << 20)
    qs.cmd("migrate", uri=uri)
    wait_status(qs, ("active",) + FINAL)
    time.sleep(0.5)
    dst.kill()
    r = wait_status(qs, FINAL, timeout=30)
    ok = src.wait_heartbeats(300, 10, since=time.monotonic())
    tap.ok(r.get("status") == "failed" and ok and
           qs.cmd("query-status")["status"] == "running",
           "destination killed in precopy: the source fails and its guest "
           "runs on", f"{r}\n{src.describe()}")


def killed_during_postcopy(tap, vms, victim):
    """SIGSTOP the victim as soon as postcopy began (so that it stays
    unfinished), then SIGKILL it: the survivor says the guest cannot be
    completed and why."""
    name = f"{victim} killed in postcopy"
    src, dst, qs, qd, uri = start_pair(
        vms, victim, "mem=512 rate=1024 pattern=random", cap_bw=32 << 20)
    qs.cmd("migrate", uri=uri)
    time.sleep(1.5)
    qs.cmd("migrate-start-postcopy")
    # The destination runs the guest: POSTCOPY_RUN came.
    r = wait_status(qd, ("postcopy-active",) + FINAL, timeout=30)
    dead, q_alive = (src, qd) if victim == "source" else (dst, qs)
    os.kill(dead.p.pid, signal.SIGSTOP)
    tap.ok(r.get("status") == "postcopy-active",
           f"{name}: postcopy began", f"{r}")
    dead.kill()
    r = wait_status(q_alive, ("postcopy-paused", "completed", "failed"),
                    timeout=40)
    desc = r.get("error-desc", "")
    tap.ok(r.get("status") == "postcopy-paused" and
           "cannot" in desc and "pages" in desc,
           f"{name}: the survivor is postcopy-paused and says why",
           f"{r}")
    print(f"# {name}: {desc}")
    alive = dst if victim == "source" else src
    tap.ok(not corrupt_lines(alive), f"{name}: no CORRUPT line",
           f"{corrupt_lines(alive)}")


def both_status(qs, qd, want, timeout=40):
    """Wait until both sides say want; their last replies."""
    deadline = time.monotonic() + timeout
    rs = rd = {}
    while time.monotonic() < deadline:
        rs, rd = qs.cmd("query-migrate"), qd.cmd("query-migrate")
        if rs.get("status") == want and rd.get("status") == want:
            break
        time.sleep(0.02)
    return rs, rd


def resumed(q, timeout=20):
    """Wait until the source left postcopy-paused (its resume began)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and \
            q.cmd("query-migrate").get("status") == "postcopy-paused":
        time.sleep(0.02)


def recovery_compressed(tap, vms):
    """x-compress always: a cut mid-postcopy, then a recovery whose link
    starts a new zstd stream; pages go compressed on it too."""
    name = "recovery with x-compress"
    src = vms.boot(f"{name}-src", "mem=512 rate=1024", extra=VERIFY)
    workload_started(src)
    dst = vms.incoming(f"{name}-dst", "defer", extra=VERIFY)
    qs, qd = vms.qmp(src), vms.qmp(dst)
    caps(qs, postcopy_ram=True)
    caps(qd, postcopy_ram=True, postcopy_blocktime=True)
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20,
                                        "x-compress": "always"})
    port = free_port()
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    p1 = Proxy(port)
    qs.cmd("migrate", uri=p1.uri)
    time.sleep(1.5)
    t0 = time.monotonic()
    qs.cmd("migrate-start-postcopy")
    r = wait_status(qd, ("postcopy-active",) + FINAL, timeout=30)
    p1.cut_all()
    rs, rd = both_status(qs, qd, "postcopy-paused")
    paused = zpages(rs)
    tap.ok(r.get("status") == "postcopy-active" and
           rs.get("status") == "postcopy-paused" and
           rd.get("status") == "postcopy-paused",
           f"{name}: a cut mid-postcopy pauses both sides",
           f"{r}\n{rs}\n{rd}")
    port2 = free_port()
    qd.cmd("migrate-recover", uri=f"tcp:127.0.0.1:{port2}")
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port2}", resume=True)
    resumed(qs)
    check_completed(tap, name, src, dst, qs, qd, t0)
    after = zpages(qs.cmd("query-migrate"))
    print(f"# {name}: {paused} compressed pages when paused, {after} at "
          "the end")
    tap.ok(after > paused,
           f"{name}: pages went compressed on the resumed link",
           f"{paused} -> {after}")
    p1.close()


def recovery(tap, vms, preempt=False):
    """Cut mid-postcopy, cut again during the recovery, then recover.
    With postcopy-preempt (1 more check): each proxy carries the preempt
    channel too (the cut takes both), and after the recovery a new
    preempt channel carries the requested pages."""
    name = "recovery, preempt" if preempt else "recovery"
    src = vms.boot(f"{name}-src", "mem=512 rate=1024 pattern=random",
                   extra=VERIFY)
    workload_started(src)
    dst = vms.incoming(f"{name}-dst", "defer", extra=VERIFY)
    qs, qd = vms.qmp(src), vms.qmp(dst)
    caps(qs, postcopy_ram=True, postcopy_preempt=preempt)
    caps(qd, postcopy_ram=True, postcopy_blocktime=True,
         postcopy_preempt=preempt)
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20})
    port = free_port()
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    p1 = Proxy(port)
    qs.cmd("migrate", uri=p1.uri)
    time.sleep(1.5)
    t0 = time.monotonic()
    qs.cmd("migrate-start-postcopy")
    r = wait_status(qd, ("postcopy-active",) + FINAL, timeout=30)
    p1.cut_all()
    rs, rd = both_status(qs, qd, "postcopy-paused")
    tap.ok(r.get("status") == "postcopy-active" and
           rs.get("status") == "postcopy-paused" and
           rd.get("status") == "postcopy-paused" and
           "error-desc" in rs and "error-desc" in rd,
           f"{name}: a cut mid-postcopy pauses both sides",
           f"{r}\n{rs}\n{rd}")
    # The second link is cut at the destination's first received bitmap.
    port2 = free_port()
    p2 = Proxy(port2, [Rule("cut", direction="d2s", rp_type=5)])
    qd.cmd("migrate-recover", uri=f"tcp:127.0.0.1:{port2}")
    qs.cmd("migrate", uri=p2.uri, resume=True)
    time.sleep(0.5)
    rs, rd = both_status(qs, qd, "postcopy-paused")
    tap.ok(rs.get("status") == "postcopy-paused" and
           rd.get("status") == "postcopy-paused" and
           p2.rules[0].fired.is_set(),
           f"{name}: a cut during the recovery pauses both again",
           f"{rs}\n{rd}\n{p2.log}")
    before = rd.get("x-postcopy-preempt-pages", 0)
    port3 = free_port()
    qd.cmd("migrate-recover", uri=f"tcp:127.0.0.1:{port3}")
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port3}", resume=True)
    resumed(qs)
    check_completed(tap, f"{name} (third link)", src, dst, qs, qd, t0)
    if preempt:
        after = qd.cmd("query-migrate").get("x-postcopy-preempt-pages", 0)
        print(f"# {name}: {before} pages on the preempt channels before "
              f"the recovery, {after} in all")
        tap.ok(after > before and "new preempt channel" in dst.stderr,
               f"{name}: after the recovery requested pages come on a "
               "new preempt channel", f"{before} -> {after}\n"
               f"{dst.describe()}")
    p1.close()
    p2.close()


def pause_on_purpose(tap, vms):
    """migrate-pause on the source, then recover on a new port."""
    name = "migrate-pause"
    src, dst, qs, qd, uri = start_pair(
        vms, "pause", "mem=512 rate=1024 pattern=random", cap_bw=32 << 20)
    qs.cmd("migrate", uri=uri)
    time.sleep(1)
    t0 = time.monotonic()
    qs.cmd("migrate-start-postcopy")
    wait_status(qd, ("postcopy-active",) + FINAL, timeout=30)
    qs.cmd("migrate-pause")
    rs, rd = both_status(qs, qd, "postcopy-paused")
    tap.ok(rs.get("status") == "postcopy-paused" and
           rd.get("status") == "postcopy-paused",
           f"{name}: both sides postcopy-paused", f"{rs}\n{rd}")
    port = free_port()
    qd.cmd("migrate-recover", uri=f"tcp:127.0.0.1:{port}")
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}", resume=True)
    resumed(qs)
    check_completed(tap, name, src, dst, qs, qd, t0)


# Each case, with how many checks it makes. make check runs the quick
# ones (about a minute here); KVMIG_TEST_FULL=1 runs every one.
CASES = [
    ("at once", lambda tap, vms: at_once(tap, vms), 5, True),
    ("after 3 passes", lambda tap, vms: after_passes(tap, vms), 6, False),
    ("32 MiB/s cap", lambda tap, vms: never_converges(tap, vms), 6, False),
    ("re-dirtied pages skipped",
     lambda tap, vms: skipped_after_first_pass(tap, vms), 6, True),
    ("precopy with skips (log)",
     lambda tap, vms: precopy_with_skips(tap, vms), 3, True),
    ("precopy with skips (ring)",
     lambda tap, vms: precopy_with_skips(tap, vms, "ring"), 3, False),
    ("preempt", lambda tap, vms: with_preempt(tap, vms), 6, True),
    ("destination killed in precopy",
     lambda tap, vms: dst_killed_before_run(tap, vms), 1, False),
    ("destination killed in postcopy",
     lambda tap, vms: killed_during_postcopy(tap, vms, "destination"), 3,
     False),
    ("source killed in postcopy",
     lambda tap, vms: killed_during_postcopy(tap, vms, "source"), 3, True),
    ("recovery, cut twice", lambda tap, vms: recovery(tap, vms), 7, False),
    ("recovery with preempt, cut twice",
     lambda tap, vms: recovery(tap, vms, preempt=True), 8, True),
    ("migrate-pause", lambda tap, vms: pause_on_purpose(tap, vms), 6, False),
    ("x-compress after the switch",
     lambda tap, vms: compress_after_switch(tap, vms), 6, True),
    ("recovery with x-compress",
     lambda tap, vms: recovery_compressed(tap, vms), 7, True),
]


def run_cases(cases, prefix):
    """The case table (name, run(tap, vms), checks, quick): the quick
    ones always, the rest with KVMIG_TEST_FULL=1; a fresh VmSet each."""
    tap = Tap(sum(c[2] for c in cases))
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    full = os.environ.get("KVMIG_TEST_FULL") == "1"
    os.environ["KVMIG_LOG"] = "info"  # the verification's verdicts
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for name, run, checks, quick in cases:
            if not (quick or full):
                for _ in range(checks):
                    tap.skip(name, "a longer case: KVMIG_TEST_FULL=1 runs it")
                continue
            with VmSet(kvmig, guest, tmp) as vms:
                run(tap, vms)
    return tap.finish()


def main():
    return run_cases(CASES, "kvmig-pc-")


if __name__ == "__main__":
    sys.exit(main())
