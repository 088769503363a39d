#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""migrate_cancel ends any phase (issue 10, defect 6), from outside the
process, on one running `kvmig run` guest:

- a destination whose SYNs are dropped: inside a network namespace the
  test makes (a veth pair; an nft or iptables DROP rule for the port, or,
  with neither installed, a neighbour entry with a MAC nobody has, so the
  namespace drops the frames), and a listener whose backlog is full (the
  kernel drops the SYN; needs no privilege). query-migrate says "setup"
  while connecting; migrate_cancel makes it "cancelled" within 1 s, the
  MIGRATION events say setup, cancelling, cancelled; the guest runs on and
  a new migrate is accepted at once.
- x-connect-timeout: a short one fails the migration, naming the address
  and the time; the guest runs on.
- a destination frozen with SIGSTOP mid-migration (its socket buffers
  fill): migrate_cancel is "cancelled" within 1 s, the guest runs on.
- then a migration to a real destination completes.
Usage: test_vm_cancel_connect.py KVMIG GUEST_ELF"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, have_kvm,  # noqa: E402
                   wait_migration, workload_started)

PLAN = 21
CANCEL_LIMIT_S = 1.0
SLOW = 64 * 1024 * 1024  # bytes/s: keeps a 1 GiB migration in flight


def run(*argv):
    return subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


class BacklogHole:
    """A listener nobody accepts from whose one-entry backlog is taken:
    the kernel drops every further SYN."""

    how = "a full listen backlog"

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.filler = socket.create_connection(self.lsock.getsockname())
        time.sleep(0.05)
        self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]

    def close(self):
        self.filler.close()
        self.lsock.close()


class NetnsHole:
    """An address inside a network namespace the test makes, whose SYNs
    for the port are dropped there."""

    def __init__(self):
        self.ns = None
        tag = "%d%03d" % (os.getpid() % 10000, random.randrange(1000))
        self.ns = f"kvmig-cc-{tag}"
        self.va, self.vb = f"kvca{tag}"[:15], f"kvcb{tag}"[:15]
        net = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.mine, self.theirs = f"{net}.1", f"{net}.2"
        self.port = 4444
        steps = [
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.va, "type", "veth", "peer", "name",
             self.vb],
            ["ip", "link", "set", self.vb, "netns", self.ns],
            ["ip", "addr", "add", f"{self.mine}/30", "dev", self.va],
            ["ip", "link", "set", self.va, "up"],
            ["ip", "-n", self.ns, "addr", "add", f"{self.theirs}/30", "dev",
             self.vb],
            ["ip", "-n", self.ns, "link", "set", self.vb, "up"],
        ]
        steps += self._drop_steps()
        for argv in steps:
            r = run(*argv)
            if r.returncode != 0:
                self.close()
                raise OSError(f"{' '.join(argv)}: {r.stdout.strip()}")
        self.uri = f"tcp:{self.theirs}:{self.port}"

    def _drop_steps(self):
        inns = ["ip", "netns", "exec", self.ns]
        port = str(self.port)
        if shutil.which("nft"):
            self.how = "an nft DROP rule in a network namespace"
            return [inns + ["nft", "add", "table", "inet", "kvt"],
                    inns + ["nft", "add", "chain", "inet", "kvt", "in",
                            "{ type filter hook input priority 0; }"],
                    inns + ["nft", "add", "rule", "inet", "kvt", "in", "tcp",
                            "dport", port, "drop"]]
        if shutil.which("iptables"):
            self.how = "an iptables DROP rule in a network namespace"
            return [inns + ["iptables", "-A", "INPUT", "-p", "tcp",
                            "--dport", port, "-j", "DROP"]]
        self.how = ("a network namespace that drops the frames (no nft or "
                    "iptables here: a neighbour entry with a MAC nobody has)")
        return [["ip", "neigh", "replace", self.theirs, "lladdr",
                 "02:00:5e:00:53:01", "dev", self.va, "nud", "permanent"]]

    def close(self):
        if self.ns:
            run("ip", "netns", "del", self.ns)
            run("ip", "link", "del", self.va)
            self.ns = None


def netns_unavailable():
    if os.geteuid() != 0:
        return "not root: cannot make a network namespace"
    if not shutil.which("ip"):
        return "no ip(8) here"
    return None


def wait_status(q, want, timeout):
    """Poll query-migrate until its status is in want: (reply, seconds)."""
    t0 = time.monotonic()
    r = {}
    while time.monotonic() - t0 < timeout:
        r = q.cmd("query-migrate")
        if r.get("status") in want:
            break
        time.sleep(0.01)
    return r, time.monotonic() - t0


def guest_runs(q, vm):
    st = q.cmd("query-status")["status"]
    return st == "running" and vm.wait_heartbeats(100, 5,
                                                  since=time.monotonic())


def migration_events(q):
    q.wait_event("MIGRATION", timeout=0.2,
                 pred=lambda e: False)  # collect what has arrived
    seen = [e["data"]["status"] for e in q.events
            if e["event"] == "MIGRATION"]
    q.events = [e for e in q.events if e["event"] != "MIGRATION"]
    return seen


def cancel_connect(tap, q, src, hole):
    what = hole.how
    migration_events(q)
    r = q.execute("migrate", uri=hole.uri)
    if not tap.ok("return" in r, f"{what}: migrate is accepted", r):
        tap.skip_rest("no migration to cancel")
        return None
    time.sleep(0.5)
    r = q.cmd("query-migrate")
    tap.ok(r.get("status") == "setup",
           f"{what}: query-migrate says setup while connecting", r)
    t0 = time.monotonic()
    q.cmd("migrate_cancel")
    r, took = wait_status(q, ("cancelled", "failed", "completed"), 10)
    print(f"# {what}: cancelled {took * 1000:.0f} ms after migrate_cancel")
    tap.ok(r.get("status") == "cancelled" and took < CANCEL_LIMIT_S and
           "error-desc" not in r,
           f"{what}: cancelled within {CANCEL_LIMIT_S} s ({took:.2f} s), "
           "with no error-desc (a cancel is no failure)", r)
    tap.ok(guest_runs(q, src), f"{what}: the guest runs on",
           src.describe())
    events = migration_events(q)
    tap.ok(events == ["setup", "cancelling", "cancelled"],
           f"{what}: MIGRATION events setup, cancelling, cancelled", events)
    return t0


def connect_timeout(tap, q, src):
    hole = BacklogHole()
    try:
        q.cmd("migrate-set-parameters", **{"x-connect-timeout": 500})
        q.cmd("migrate", uri=hole.uri)
        r, took = wait_status(q, ("cancelled", "failed", "completed"), 10)
        desc = r.get("error-desc", "")
        tap.ok(r.get("status") == "failed" and 0.4 < took < 3,
               f"x-connect-timeout 500: failed after {took:.2f} s", r)
        tap.ok(hole.uri in desc and "500 ms" in desc,
               "the message names the address and the time", desc)
        print(f"# {desc}")
        tap.ok(guest_runs(q, src), "after the timeout the guest runs on",
               src.describe())
    finally:
        hole.close()
        q.cmd("migrate-set-parameters", **{"x-connect-timeout": 30000})


def wait_transferring(q, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") == "active" and r["ram"]["transferred"] > 1 << 20:
            return True
        time.sleep(0.02)
    return False


def cancel_frozen_destination(tap, vms, q, src):
    port = free_port()
    dst = vms.incoming("frozen-dst", f"tcp:127.0.0.1:{port}")
    vms.qmp(dst)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW})
    q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    tap.ok(wait_transferring(q), "SIGSTOP: the migration is under way",
           q.cmd("query-migrate"))
    dst.p.send_signal(signal.SIGSTOP)
    try:
        # Until the source has nothing left to write into: the buffers
        # are full once the bytes sent stop growing.
        last, still = -1, 0
        deadline = time.monotonic() + 10
        while still < 5 and time.monotonic() < deadline:
            sent = q.cmd("query-migrate")["ram"]["transferred"]
            still = still + 1 if sent == last else 0
            last = sent
            time.sleep(0.1)
        tap.ok(still >= 5, "SIGSTOP: the source's writes stall", last)
        migration_events(q)
        q.cmd("migrate_cancel")
        r, took = wait_status(q, ("cancelled", "failed", "completed"), 10)
        print(f"# frozen destination: cancelled {took * 1000:.0f} ms after "
              "migrate_cancel")
        tap.ok(r.get("status") == "cancelled" and took < CANCEL_LIMIT_S,
               f"SIGSTOP: cancelled within {CANCEL_LIMIT_S} s "
               f"({took:.2f} s)", r)
        tap.ok(guest_runs(q, src), "SIGSTOP: the guest runs on",
               src.describe())
    finally:
        dst.p.send_signal(signal.SIGCONT)
        q.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    rc = dst.wait(10)
    tap.ok(rc == 1 and b"*" not in dst.console,
           "SIGCONT: the destination exits 1, no guest started",
           dst.describe())


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-vm-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        src = vms.boot("src", "mem=64 rate=64")
        if not workload_started(src):
            tap.ok(False, "the guest starts", src.describe())
            return tap.finish()
        q = vms.qmp(src)
        why = netns_unavailable()
        hole = None
        if not why:
            try:
                hole = NetnsHole()
            except OSError as e:
                why = f"cannot make the network namespace: {e}"
        if hole:
            try:
                cancel_connect(tap, q, src, hole)
            finally:
                hole.close()
        else:
            print(f"# SKIP network namespace case: {why}")
            for _ in range(5):
                tap.skip("SYNs dropped in a network namespace", why)
        hole = BacklogHole()
        try:
            t0 = cancel_connect(tap, q, src, hole)
        finally:
            hole.close()
        if t0 is None:
            return tap.finish()
        # A new migrate is accepted at once after a cancelled connect.
        r = q.execute("migrate", uri=f"tcp:127.0.0.1:{free_port()}")
        took = time.monotonic() - t0
        tap.ok("return" in r, f"a new migrate is accepted at once "
               f"({took:.2f} s after the cancel)", r)
        wait_status(q, ("cancelled", "failed", "completed"), 10)
        connect_timeout(tap, q, src)
        cancel_frozen_destination(tap, vms, q, src)
        port = free_port()
        vms.qmp(vms.incoming("dst", f"tcp:127.0.0.1:{port}"))
        q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        r = wait_migration(q)
        tap.ok(r.get("status") == "completed",
               "then a migration to a real destination completes", r)
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
