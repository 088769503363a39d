#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kvmig migrate | status | cancel | set against running `kvmig run` VMs
(issue 4, item 2): set then query-migrate-parameters; migrate --wait;
status --json; status --watch on a pipe; cancel during a slow migration;
a failed migration; QMP over tcp; bad sockets, names and usage.
Usage: test_cli_ctl.py KVMIG GUEST_ELF"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (Vm, VmSet, free_port, have_kvm,  # noqa: E402
                   workload_started)

QEMU = "qemu-system-x86_64"
QEMU_CHECKS = 8
PLAN = 34 + QEMU_CHECKS


def ctl(kvmig, *args, timeout=90):
    """Run a kvmig control command: (rc, stdout, stderr)."""
    try:
        p = subprocess.run([kvmig, *args], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", f"timed out after {timeout} s"
    return p.returncode, p.stdout, p.stderr


def parse_json(text):
    try:
        o = json.loads(text)
    except ValueError:
        return {}
    return o if isinstance(o, dict) else {}


def show(r):
    return f"rc={r[0]}\n--- stdout ---\n{r[1]}\n--- stderr ---\n{r[2]}"


def usage_checks(tap, kvmig, tmp):
    """No VM needed: what a user gets for a bad socket or bad arguments."""
    bad = os.path.join(tmp, "nobody.sock")
    r = ctl(kvmig, "status", "--qmp", bad)
    tap.ok(r[0] == 1 and bad in r[2] and "cannot connect" in r[2],
           "status on a missing socket: exit 1, the message names it", show(r))
    r = ctl(kvmig, "set", "--qmp", f"tcp:127.0.0.1:{free_port()}",
            "downtime-limit=5")
    tap.ok(r[0] == 1 and "tcp:127.0.0.1:" in r[2] and "refused" in r[2],
           "set on a closed tcp port: exit 1, connection refused", show(r))
    r = ctl(kvmig, "migrate", "tcp:127.0.0.1:1")
    tap.ok(r[0] == 2 and "--qmp" in r[2], "migrate without --qmp: exit 2",
           show(r))
    r = ctl(kvmig, "set", "--qmp", bad, "downtime-limit")
    tap.ok(r[0] == 2 and "NAME=VALUE" in r[2],
           "set NAME without a value: exit 2", show(r))
    r = ctl(kvmig, "set", "--qmp", bad, "--capability", "xbzrle=maybe")
    tap.ok(r[0] == 2 and "on|off" in r[2],
           "set --capability with a bad state: exit 2", show(r))
    r = ctl(kvmig, "status", "--qmp", bad, "--bogus")
    tap.ok(r[0] == 2 and "--bogus" in r[2], "an unknown option: exit 2",
           show(r))


def poll_ctl(kvmig, done, *args, timeout=10):
    """Run a control command until done(result) or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        r = ctl(kvmig, *args)
        if done(r) or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def wait_status(q, want, timeout=30):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = q.cmd("query-migrate").get("status")
        if st in want:
            return st
        time.sleep(0.05)
    return st


def main():
    tap = Tap(PLAN)
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-ctl-") as tmp:
        usage_checks(tap, kvmig, tmp)
        reason = have_kvm()
        if reason:
            tap.skip_rest(reason)
            return tap.finish()
        with VmSet(kvmig, guest, tmp) as vms:
            run_vms(tap, kvmig, vms)
        with VmSet(kvmig, guest, tmp) as vms:
            run_qemu(tap, kvmig, guest, vms, tmp)
    return tap.finish()


def run_vms(tap, kvmig, vms):
    src = vms.boot("src", "mem=64 rate=64")
    port = free_port()
    dst = vms.incoming("dst", f"tcp:127.0.0.1:{port}")
    if not workload_started(src):
        tap.skip_rest("the guest did not start: " + src.describe())
        return
    qs = vms.qmp(src)
    qd = vms.qmp(dst)
    S = f"unix:{src.qmp_path}"

    # set, then the VM reports it
    r = ctl(kvmig, "set", "--qmp", S, "downtime-limit=50",
            "max-bandwidth=1G")
    p = qs.cmd("query-migrate-parameters")
    tap.ok(r[0] == 0 and p.get("downtime-limit") == 50 and
           p.get("max-bandwidth") == 1 << 30,
           "set downtime-limit=50 max-bandwidth=1G: the VM has them",
           f"{show(r)}\n{p}")
    tap.ok("downtime-limit = 50" in r[1] and
           "max-bandwidth = 1073741824" in r[1],
           "set echoes the values the VM now has", show(r))
    r = ctl(kvmig, "set", "--qmp", src.qmp_path, "no-such-parameter=1")
    tap.ok(r[0] == 1 and "GenericError" in r[2] and
           "no-such-parameter" in r[2],
           "set with an unknown NAME: exit 1, the VM's error class and text",
           show(r))
    r = ctl(kvmig, "set", "--qmp", S, "downtime-limit=soon")
    tap.ok(r[0] == 1 and "downtime-limit" in r[2] and
           qs.cmd("query-migrate-parameters").get("downtime-limit") == 50,
           "set with a wrongly typed VALUE: exit 1, nothing changed", show(r))

    # status before any migration
    r = ctl(kvmig, "status", "--qmp", S, "--json")
    o = parse_json(r[1])
    tap.ok(r[0] == 0 and o.get("status") == "none" and
           o.get("vm-status") == "running" and o.get("migrate") == {},
           "status --json before a migration: none, VM running", show(r))
    r = ctl(kvmig, "status", "--qmp", S)
    tap.ok(r[0] == 0 and "VM: running" in r[1] and "migration: none" in r[1],
           "status as text before a migration", show(r))
    r = ctl(kvmig, "cancel", "--qmp", S)
    tap.ok(r[0] == 1 and "no migration in progress" in r[2],
           "cancel with no migration: exit 1, says so", show(r))

    # status --watch on a pipe, then migrate --wait
    watch = subprocess.Popen([kvmig, "status", "--qmp", S, "--watch",
                              "--interval", "100"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    r = ctl(kvmig, "migrate", "--qmp", S, f"tcp:127.0.0.1:{port}", "--wait",
            "--max-bandwidth", "128M", "--downtime-limit", "300")
    tap.ok(r[0] == 0 and "migration completed in" in r[1],
           "migrate --wait (128M/s cap): exit 0 and a summary", show(r))
    try:
        wout, werr = watch.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        watch.kill()
        wout, werr = watch.communicate()
    lines = wout.splitlines()
    progress = [ln for ln in lines if ln.startswith("migration active:")]
    tap.ok(watch.returncode == 0 and len(progress) >= 2 and
           lines[-1].startswith("migration completed in") and
           "\r" not in wout and "\033" not in wout,
           "status --watch on a pipe: plain progress lines, ends completed",
           f"rc={watch.returncode}\n{wout}\n{werr}")
    tap.ok(all("pass " in ln and "%" in ln and "/s" in ln and
               "remaining" in ln and "expected downtime" in ln
               for ln in progress),
           "each progress line has pass, percent, rate, remaining, "
           "expected downtime", wout)
    p = qs.cmd("query-migrate-parameters")
    tap.ok(p.get("max-bandwidth") == 128 << 20 and
           p.get("downtime-limit") == 300,
           "migrate --max-bandwidth/--downtime-limit set the parameters",
           f"{p}")

    r = ctl(kvmig, "status", "--qmp", S, "--json")
    o = parse_json(r[1])
    mig = o.get("migrate", {})
    tap.ok(r[0] == 0 and o.get("status") == "completed" and
           mig.get("status") == "completed" and
           mig.get("ram", {}).get("transferred", 0) > 0 and
           "downtime" in mig and o.get("vm-status") == "postmigrate",
           "status --json after: completed, raw query-migrate inside",
           show(r))
    tap.ok(o.get("progress", {}).get("percent") == 100.0,
           "status --json: percent 100 when completed", show(r))
    r = ctl(kvmig, "status", "--qmp", S, "--watch", "--json")
    try:
        objs = [json.loads(ln) for ln in r[1].splitlines()]
    except ValueError:
        objs = []
    tap.ok(r[0] == 0 and len(objs) == 1 and
           objs[0].get("status") == "completed",
           "status --watch --json on a finished migration: one line, exit 0",
           show(r))
    deadline = time.monotonic() + 10
    while True:
        st = qd.cmd("query-status")["status"]
        if st == "running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    tap.ok(st == "running" and
           dst.wait_heartbeats(50, 10, since=time.monotonic()),
           "the guest runs on at the destination", f"{st}\n{dst.describe()}")

    # cancel a slow migration of the (now running) destination
    D = f"unix:{dst.qmp_path}"
    port2 = free_port()
    dst2 = vms.incoming("dst2", f"tcp:127.0.0.1:{port2}")
    vms.qmp(dst2)  # its monitor is up once it listens for the migration
    r = ctl(kvmig, "migrate", "--qmp", D, f"tcp:127.0.0.1:{port2}",
            "--max-bandwidth", "16M")
    tap.ok(r[0] == 0 and "started" in r[1],
           "migrate without --wait returns once started", show(r))
    st = wait_status(qd, ("active",), timeout=10)
    time.sleep(0.5)
    r = ctl(kvmig, "status", "--qmp", D)
    tap.ok(r[0] == 0 and "migration: active" in r[1] and
           "expected downtime" in r[1],
           "status as text during a migration", show(r))
    r = ctl(kvmig, "cancel", "--qmp", D)
    st = qd.cmd("query-migrate").get("status")
    tap.ok(r[0] == 0 and "migration cancelled" in r[1] and
           st == "cancelled",
           "cancel during a 16M/s migration: cancelled, exit 0",
           f"{show(r)}\nquery-migrate status {st}")
    tap.ok(qd.cmd("query-status")["status"] == "running" and
           dst.wait_heartbeats(50, 10, since=time.monotonic()),
           "after cancel the guest runs on at the source", dst.describe())
    r = ctl(kvmig, "status", "--qmp", D, "--watch")
    tap.ok(r[0] == 1 and "migration cancelled after" in r[1],
           "status --watch on a cancelled migration: exit 1, says cancelled",
           show(r))
    dst2.kill()

    # QMP over tcp, on a destination waiting for its migration
    qport = free_port()
    port3 = free_port()
    d3 = Vm([kvmig, "run", "--memory", "1G", "--cpus", "2", "--qmp",
             f"tcp:127.0.0.1:{qport}", "--incoming",
             f"tcp:127.0.0.1:{port3}"], "dst3")
    vms.vms.append(d3)
    T = f"tcp:127.0.0.1:{qport}"
    deadline = time.monotonic() + 10
    while True:
        r = ctl(kvmig, "status", "--qmp", T, "--json")
        if r[0] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    o = parse_json(r[1])
    tap.ok(r[0] == 0 and o.get("vm-status") == "inmigrate",
           "status --json over tcp: the destination is inmigrate", show(r))
    # (0: no cap, the 16M/s of the cancelled one is still set)
    r = ctl(kvmig, "migrate", "--qmp", D, f"tcp:127.0.0.1:{port3}", "--wait",
            "--json", "--max-bandwidth", "0")
    o = parse_json(r[1])
    tap.ok(r[0] == 0 and o.get("status") == "completed" and
           o.get("migrate", {}).get("status") == "completed",
           "migrate --wait --json: one final JSON object, completed", show(r))
    # the destination resumes a moment after the source reports completed
    r = poll_ctl(kvmig, lambda r: "VM: running" in r[1], "status", "--qmp", T)
    tap.ok(r[0] == 0 and "VM: running" in r[1],
           "the tcp-monitored destination runs the guest", show(r))
    r = ctl(kvmig, "set", "--qmp", T, "--capability", "no-such-cap=on")
    # (the monitor may not have capabilities yet: then it says that)
    tap.ok(r[0] == 1 and "migrate-set-capabilities: " in r[2] and
           ("no-such-cap" in r[2] or "CommandNotFound" in r[2] or
            "not supported" in r[2]),
           "set --capability with an unknown name: exit 1, the VM's error",
           show(r))
    tap.ok(d3.wait_heartbeats(50, 10, since=time.monotonic()),
           "heartbeats on the tcp-monitored destination", d3.describe())

    # a migration that fails: --wait exits 1 with the reason
    dead = free_port()
    r = ctl(kvmig, "migrate", "--qmp", T, f"tcp:127.0.0.1:{dead}", "--wait")
    tap.ok(r[0] == 1 and ("failed" in r[1] + r[2]),
           "migrate --wait to a port nobody listens on: exit 1, failed",
           show(r))
    r = ctl(kvmig, "status", "--qmp", T, "--json")
    o = parse_json(r[1])
    tap.ok(r[0] == 0 and o.get("vm-status") == "running" and
           o.get("status") == "failed" and
           o.get("migrate", {}).get("error-desc"),
           "after the failed migration: VM running, status failed", show(r))

    tap.ok(all(v.p.poll() is None for v in (src, dst, d3)),
           "no kvmig run process died",
           "\n".join(v.describe() for v in (src, dst, d3)))



def qemu(vms, guest, tmp, label, extra=()):
    """A QEMU VM (console on stdout, like kvmig run's) with a QMP socket.
    QEMU serves one QMP client per socket at a time, so the test holds no
    connection of its own: every command goes through kvmig."""
    sock = os.path.join(tmp, f"{label}.sock")
    vm = Vm([QEMU, "-enable-kvm", "-cpu", "host,-arch-capabilities",
             "-nodefaults", "-display", "none", "-no-reboot",
             "-kernel", guest, "-append", "mem=64 rate=64",
             "-qmp", f"unix:{sock},server=on,wait=off", "-serial", "stdio",
             "-m", "1G", "-smp", "2", *extra], label)
    vms.vms.append(vm)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return vm, sock


def qemu_listening(kvmig, sock, timeout=30):
    """QEMU's QMP comes up before -incoming listens; query-migrate shows
    the socket-address once it does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        o = parse_json(ctl(kvmig, "status", "--qmp", sock, "--json")[1])
        if o.get("migrate", {}).get("socket-address"):
            return True
        time.sleep(0.1)
    return False


def run_qemu(tap, kvmig, guest, vms, tmp):
    """The same commands against QEMU's QMP."""
    if not shutil.which(QEMU):
        for _ in range(QEMU_CHECKS):
            tap.skip("kvmig against QEMU", f"{QEMU} not installed")
        return
    start = tap.n
    port = free_port()
    src, S = qemu(vms, guest, tmp, "qemu-src")
    dst, D = qemu(vms, guest, tmp, "qemu-dst",
                  ("-incoming", f"tcp:127.0.0.1:{port}"))
    if not workload_started(src, timeout=90) or \
            not qemu_listening(kvmig, D):
        while tap.n < start + QEMU_CHECKS:
            tap.skip("kvmig against QEMU",
                     "the guest did not start under QEMU")
        return
    r = ctl(kvmig, "set", "--qmp", S, "downtime-limit=100",
            "--capability", "events=on")
    tap.ok(r[0] == 0 and "downtime-limit = 100" in r[1] and
           "capability events = on" in r[1],
           "QEMU: set a parameter and a capability", show(r))
    r = ctl(kvmig, "set", "--qmp", S, "no-such-parameter=1")
    tap.ok(r[0] == 1 and "GenericError" in r[2] and
           "no-such-parameter" in r[2],
           "QEMU: set with an unknown NAME: exit 1, QEMU's error", show(r))
    r = ctl(kvmig, "migrate", "--qmp", S, f"tcp:127.0.0.1:{port}", "--wait")
    tap.ok(r[0] == 0 and "migration completed in" in r[1],
           "QEMU: migrate --wait completes", show(r))
    o = parse_json(ctl(kvmig, "status", "--qmp", S, "--json")[1])
    tap.ok(o.get("status") == "completed" and
           o.get("vm-status") == "postmigrate" and
           o.get("migrate", {}).get("ram", {}).get("transferred", 0) > 0,
           "QEMU: status --json on the source: completed", f"{o}")
    o = parse_json(poll_ctl(kvmig, lambda r: '"running":true' in r[1],
                            "status", "--qmp", D, "--json")[1])
    tap.ok(o.get("vm-status") == "running" and
           dst.wait_heartbeats(50, 10, since=time.monotonic()),
           "QEMU: the guest runs on at the destination",
           f"{o}\n{dst.describe()}")

    port2 = free_port()
    _, D2 = qemu(vms, guest, tmp, "qemu-dst2",
                 ("-incoming", f"tcp:127.0.0.1:{port2}"))
    qemu_listening(kvmig, D2)
    r = ctl(kvmig, "migrate", "--qmp", D, f"tcp:127.0.0.1:{port2}",
            "--max-bandwidth", "16M")
    time.sleep(1)
    r2 = ctl(kvmig, "status", "--qmp", D)
    tap.ok(r[0] == 0 and "migration: active" in r2[1],
           "QEMU: a 16M/s migration is active", f"{show(r)}\n{show(r2)}")
    r = ctl(kvmig, "cancel", "--qmp", D)
    tap.ok(r[0] == 0 and "migration cancelled" in r[1],
           "QEMU: cancel gives cancelled", show(r))
    o = parse_json(ctl(kvmig, "status", "--qmp", D, "--json")[1])
    tap.ok(o.get("status") == "cancelled" and o.get("running") is True,
           "QEMU: after cancel the source runs on", f"{o}")


if __name__ == "__main__":
    sys.exit(main())
