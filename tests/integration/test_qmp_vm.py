#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QMP against real `kvmig run` VMs (issue 4): migration capabilities and
parameters (round trips and errors), query-cpus-fast thread ids,
system_powerdown, SHUTDOWN reasons, and two clients at once (over tcp) that
both see a migration's events. Usage: test_qmp_vm.py KVMIG GUEST_ELF"""
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (Qmp, Vm, VmSet, free_port, have_kvm,  # noqa: E402
                   wait_migration, workload_started)

PLAN = 24
MEMORY = "256M"
APPEND = "mem=32 rate=16"
PARAMS = ("downtime-limit", "max-bandwidth", "avail-switchover-bandwidth",
          "x-converge-timeout", "x-return-path-timeout")
QEMU_CAPS = ("xbzrle", "auto-converge", "zero-blocks", "events",
             "postcopy-ram", "return-path", "multifd", "release-ram",
             "pause-before-switchover", "dirty-bitmaps", "switchover-ack")


def error_desc(reply):
    """desc of a GenericError reply, or None."""
    err = reply.get("error") or {}
    return err.get("desc") if err.get("class") == "GenericError" else None


def caps_of(q):
    return {c["capability"]: c["state"]
            for c in q.cmd("query-migrate-capabilities")}


def set_caps(q, **states):
    return q.execute("migrate-set-capabilities", capabilities=[
        {"capability": k.replace("_", "-"), "state": v}
        for k, v in states.items()])


def check_capabilities(tap, q):
    listed = q.cmd("query-migrate-capabilities")
    caps = {c["capability"]: c["state"] for c in listed}
    tap.ok(len(caps) == len(listed) and all(n in caps for n in QEMU_CAPS)
           and all(set(c) == {"capability", "state"} for c in listed)
           and caps["events"] is True and caps["return-path"] is True
           and caps["xbzrle"] is False,
           "query-migrate-capabilities lists QEMU's names "
           "(events and return-path on, xbzrle off)", listed)

    r = set_caps(q, release_ram=True)
    tap.ok(error_desc(r) == "Capability 'release-ram' is not supported "
           "by kvmig yet", "an unsupported capability set to true is a "
           "GenericError naming it", r)

    bad = [
        ([{"capability": "warp-drive", "state": False}], "warp-drive"),
        ([{"capability": "events", "state": "yes"}],
         "Invalid parameter type for 'capabilities[0].state'"),
        ([{"capability": "return-path", "state": False}],
         "'return-path' cannot be turned off"),
        ([{"capability": "events", "state": False},
          {"capability": "x-colo", "state": True}], "'x-colo'"),
    ]
    descs = [error_desc(q.execute("migrate-set-capabilities",
                                  capabilities=c)) for c, _ in bad]
    tap.ok(all(d and want in d for d, (_, want) in zip(descs, bad))
           and caps_of(q)["events"] is True,
           "unknown names, wrong types and return-path off are refused; "
           "a refused list changes nothing", descs)

    r1 = set_caps(q, events=False, xbzrle=False)
    off = caps_of(q)["events"]
    r2 = set_caps(q, events=True, return_path=True)
    tap.ok(r1 == {"return": {}} and off is False and r2 == {"return": {}}
           and caps_of(q)["events"] is True,
           "events can be turned off and on again", (r1, off, r2))


def check_parameters(tap, q):
    want = {"downtime-limit": 123, "max-bandwidth": 500000000,
            "avail-switchover-bandwidth": 0, "x-converge-timeout": 45000,
            "x-return-path-timeout": 7000}
    q.cmd("migrate-set-parameters", **want)
    got = q.cmd("query-migrate-parameters")
    tap.ok(all(got.get(k) == v for k, v in want.items()),
           "migrate-set-parameters round-trips every parameter", got)

    descs = {k: error_desc(q.execute("migrate-set-parameters",
                                     **{k: "10"})) for k in PARAMS}
    tap.ok(all(d == f"Invalid parameter type for '{k}', expected: integer"
               for k, d in descs.items()),
           "a wrong type is a GenericError naming the parameter", descs)

    ranges = [("downtime-limit", -1), ("downtime-limit", 2000001),
              ("max-bandwidth", -5), ("x-converge-timeout", -1),
              ("x-return-path-timeout", 0)]
    rdescs = [error_desc(q.execute("migrate-set-parameters", **{k: v}))
              for k, v in ranges]
    tap.ok(all(d and f"'{k}'" in d for d, (k, _) in zip(rdescs, ranges)),
           "out-of-range values are refused, naming the parameter", rdescs)

    r = q.execute("migrate-set-parameters",
                  **{"downtime-limit": 77, "x-return-path-timeout": 0})
    after = q.cmd("query-migrate-parameters")
    tap.ok("error" in r and after == got,
           "a refused call changes no parameter", (r, after))
    r = q.execute("migrate-set-parameters", **{"x-no-such-thing": 4})
    tap.ok(error_desc(r) == "Parameter 'x-no-such-thing' is unexpected",
           "an unknown parameter is refused", r)
    # Issue 5's parameters round-trip; enums and ranges are checked.
    want5 = {"xbzrle-cache-size": 32 << 20, "multifd-channels": 3,
             "multifd-compression": "zstd", "multifd-zlib-level": 6,
             "multifd-zstd-level": 3, "zero-page-detection": "legacy",
             "cpu-throttle-initial": 30, "cpu-throttle-increment": 15,
             "cpu-throttle-tailslow": True, "max-cpu-throttle": 90,
             "throttle-trigger-threshold": 40, "x-compress": "always"}
    q.cmd("migrate-set-parameters", **want5)
    got5 = q.cmd("query-migrate-parameters")
    bad5 = [("multifd-compression", "gzip"), ("zero-page-detection", "yes"),
            ("multifd-channels", 0), ("multifd-zstd-level", 21),
            ("cpu-throttle-initial", 100), ("xbzrle-cache-size", 100),
            ("x-compress", "zstd")]
    d5 = [error_desc(q.execute("migrate-set-parameters", **{k: v}))
          for k, v in bad5]
    tap.ok(all(got5.get(k) == v for k, v in want5.items()) and
           all(d and f"'{k}'" in d for d, (k, _) in zip(d5, bad5)),
           "issue 5's parameters round-trip; bad values name the "
           "parameter", (got5, d5))
    q.cmd("migrate-set-parameters", **{
        "xbzrle-cache-size": 64 << 20, "multifd-channels": 2,
        "multifd-compression": "none", "zero-page-detection": "multifd",
        "cpu-throttle-tailslow": False, "x-compress": "auto"})
    q.cmd("migrate-set-parameters", **{"downtime-limit": 300,
                                       "max-bandwidth": 0,
                                       "x-converge-timeout": 0,
                                       "x-return-path-timeout": 30000})


def vcpu_threads(q, vm, ncpus, timeout=10):
    """query-cpus-fast once every vCPU thread has reported its id."""
    deadline = time.monotonic() + timeout
    while True:
        cpus = q.cmd("query-cpus-fast")
        if all(c.get("thread-id", 0) > 0 for c in cpus) or \
                time.monotonic() > deadline:
            return cpus
        time.sleep(0.05)


def check_cpus(tap, q, vm, label, ncpus=2):
    cpus = vcpu_threads(q, vm, ncpus)
    pid = vm.p.pid
    tids = [c.get("thread-id") for c in cpus]
    shape = all(c.get("cpu-index") == i and c.get("target") == "x86_64"
                and c.get("qom-path") == f"/machine/unattached/device[{i}]"
                and c.get("props") == {"core-id": i, "thread-id": 0,
                                       "socket-id": 0}
                for i, c in enumerate(cpus))
    names = []
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            names.append(None)
    tap.ok(len(cpus) == ncpus and shape and len(set(tids)) == ncpus
           and names == [f"vcpu{i}" for i in range(ncpus)],
           f"{label}: query-cpus-fast gives CpuInfoFast with the vCPU "
           f"threads' ids (in /proc/{pid}/task)", (cpus, names))


def powerdown(tap, q, vm, label):
    r = q.execute("system_powerdown")
    pd = q.wait_event("POWERDOWN", timeout=10)
    rc = vm.wait(30)
    sd = q.wait_event("SHUTDOWN", timeout=5)
    tap.ok(r == {"return": {}} and pd is not None and rc == 0
           and vm.wait_console(rb"guest: power off", 1) is not None,
           f"{label}: system_powerdown powers the guest off (POWERDOWN, "
           f"exit 0)", (r, pd, rc, vm.describe()))
    tap.ok(sd is not None and sd.get("data") == {"guest": True,
                                                  "reason": "guest-shutdown"},
           f"{label}: SHUTDOWN says guest-shutdown", sd)


def statuses_until_completed(q):
    """Every MIGRATION status the client got, once "completed" is in."""
    done = q.wait_event("MIGRATION", timeout=10,
                        pred=lambda e: e["data"]["status"] == "completed")
    got = [e["data"]["status"] for e in q.events if e["event"] == "MIGRATION"]
    return got + ["completed"] if done else got


def migrate_two_clients(tap, vms, tmp):
    kvmig, guest = vms.kvmig, vms.guest
    qport, dport = free_port(), free_port()
    src = Vm([kvmig, "run", "--qmp", f"tcp:127.0.0.1:{qport}",
              "--memory", MEMORY, "--cpus", "2", "--kernel", guest,
              "--append", APPEND], "src")
    vms.vms.append(src)
    dst = vms.incoming("dst", "defer", memory=MEMORY)
    if not tap.ok(workload_started(src), "source guest reaches its workload",
                  src.describe()):
        tap.skip_rest("no source guest")
        return
    qa, qb = (Qmp(f"tcp:127.0.0.1:{qport}"),
              Qmp(f"tcp:127.0.0.1:{qport}"))
    vms.qmps += [qa, qb]
    qd = vms.qmp(dst)
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{dport}")

    # Slow enough (the working set is ~32 MiB) to act during the migration.
    qa.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20})
    qa.cmd("migrate", uri=f"tcp:127.0.0.1:{dport}")
    busy = error_desc(set_caps(qb, events=False))
    qb.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    tap.ok(busy == "There's a migration process in progress",
           "capabilities cannot change during a migration", busy)
    r = wait_migration(qa, timeout=90)
    sa, sb = [statuses_until_completed(q) for q in (qa, qb)]
    tap.ok(r.get("status") == "completed" and
           sa[:1] == ["setup"] and "active" in sa and "completed" in sa and
           sb[:1] == ["setup"] and "active" in sb and "completed" in sb,
           "two tcp clients both get MIGRATION setup/active/completed",
           (r, sa, sb))
    tap.ok(all(any(e["event"] == "MIGRATION_PASS" and
                   e["data"].get("pass", 0) >= 1 for e in q.events) and
               any(e["event"] == "STOP" for e in q.events)
               for q in (qa, qb)),
           "both also get MIGRATION_PASS {pass} and STOP",
           (qa.events, qb.events))
    sd = statuses_until_completed(qd)
    resume = qd.wait_event("RESUME", timeout=10)
    tap.ok(sd == ["setup", "active", "completed"] and resume is not None,
           "the deferred destination's client gets MIGRATION setup, "
           "active, completed (its own status table) and RESUME",
           (sd, qd.events))

    r = qa.execute("system_powerdown")
    tap.ok(error_desc(r) and "migrated" in error_desc(r),
           "system_powerdown on a migrated-away source is refused", r)
    qa.cmd("quit")
    sd = qb.wait_event("SHUTDOWN", timeout=15)
    rc = src.wait(15)
    tap.ok(rc == 0 and sd is not None and
           sd.get("data") == {"guest": False, "reason": "host-qmp-quit"},
           "quit: SHUTDOWN {guest: false, reason: host-qmp-quit}, exit 0",
           (rc, sd, src.describe()))

    check_cpus(tap, qd, dst, "destination")
    powerdown(tap, qd, dst, "destination")


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-qmp-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        vm = vms.boot("vm", APPEND, memory=MEMORY)
        if not tap.ok(workload_started(vm), "guest reaches its workload",
                      vm.describe()):
            tap.skip_rest("no guest")
            return tap.finish()
        q = vms.qmp(vm)
        check_capabilities(tap, q)
        check_parameters(tap, q)
        check_cpus(tap, q, vm, "booted VM")
        powerdown(tap, q, vm, "booted VM")
        migrate_two_clients(tap, vms, tmp)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
