#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Where the guest's pause at the switch to postcopy goes (issue 11).

  bench/pc_pause.py KVMIG GUEST_ELF [MEMORY ...] [--runs N]

For each guest size (default 1G 4G), a source running the project's guest
(mem=256 rate=256 pattern=random) and a --incoming defer destination,
postcopy-ram on both, KVMIG_LOG=debug on both so that each prints its
switch-over timeline (kv_switch_log: "@MS what" on the host's monotonic
clock, the clock the heartbeats are stamped with). Precopy under a
32 MiB/s cap for 2 s, then migrate-start-postcopy. Printed per run: the
guest's pause (last heartbeat on the source -> first on the destination)
and each timeline step in ms after the source's "postcopy: stop"."""
import os
import re
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "integration"))
from vmlib import VmSet, free_port, workload_started  # noqa: E402

STEP = re.compile(r"@([0-9.]+) (.*)$")


def steps(vm, side):
    out = []
    for line in vm.stderr.splitlines():
        if "switchover" not in line:
            continue
        m = STEP.search(line)
        if m:
            out.append((float(m.group(1)), f"{side}: {m.group(2)}"))
    return out


def caps(q, **on):
    q.cmd("migrate-set-capabilities", capabilities=[
        {"capability": k.replace("_", "-"), "state": v}
        for k, v in on.items()])


def wait_final(q, timeout=120):
    deadline = time.monotonic() + timeout
    r = {}
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") in ("completed", "failed", "postcopy-paused"):
            return r
        time.sleep(0.05)
    return r


def one_run(kvmig, guest, memory):
    with tempfile.TemporaryDirectory() as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        src = vms.boot("src", "mem=256 rate=256 pattern=random",
                       memory=memory)
        workload_started(src)
        dst = vms.incoming("dst", "defer", memory=memory)
        qs, qd = vms.qmp(src), vms.qmp(dst)
        caps(qs, postcopy_ram=True)
        caps(qd, postcopy_ram=True)
        qs.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20})
        uri = f"tcp:127.0.0.1:{free_port()}"
        qd.cmd("migrate-incoming", uri=uri)
        qs.cmd("migrate", uri=uri)
        time.sleep(2)
        qs.cmd("migrate-start-postcopy")
        rs = wait_final(qs)
        time.sleep(0.5)
        tl = sorted(steps(src, "src") + steps(dst, "dst"))
        t_stop = next((t for t, w in tl if "postcopy: stop" in w), None)
        hs = [t * 1000 for t in src.heartbeat_times()]
        hd = [t * 1000 for t in dst.heartbeat_times()]
        pause = None
        if t_stop is not None and hs and hd:
            last = max((t for t in hs if t <= t_stop + 1), default=None)
            first = min((t for t in hd if t >= t_stop), default=None)
            if last is not None and first is not None:
                pause = first - last
                tl += [(last, "guest: last heartbeat on the source"),
                       (first, "guest: first heartbeat on the destination")]
        print(f"## {memory}: status {rs.get('status')}, pause "
              f"{pause if pause is None else round(pause)} ms, downtime "
              f"{rs.get('downtime')} ms")
        for t, what in sorted(tl):
            if t_stop is not None and t >= t_stop - 50:
                print(f"  {t - t_stop:9.1f} ms  {what}")
        sys.stdout.flush()


def main():
    args = sys.argv[1:]
    runs = 1
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i:i + 2]
    kvmig, guest, sizes = args[0], args[1], args[2:] or ["1G", "4G"]
    os.environ["KVMIG_LOG"] = "debug"
    print(f"# load average {os.getloadavg()}")
    for _ in range(runs):
        for memory in sizes:  # interleaved: load hits every size alike
            one_run(kvmig, guest, memory)
    print(f"# load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
