#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Never two copies (issue 10, defects 1 and 3): the switch-over is a
commit protocol, and whatever breaks during it, at most one copy of the
guest runs at any time and exactly one runs once the link is back.

Faults come from outside: a TCP proxy between the source and the
destination that closes both directions the moment a given message of the
switch-over reaches it (before forwarding it), and SIGSTOP/SIGKILL of
either process. After each case the test checks which copy runs (its
heartbeats), that the other produced no heartbeat after the switch-over
began, and that --verify-ram found the destination's RAM identical.
Usage: test_vm_switchover.py KVMIG GUEST_ELF"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, have_kvm,  # noqa: E402
                   wait_migration, workload_started)

PLAN = 60

READY = b"\x4b\x01\x00\x10"            # return path: kvmig READY, 16 bytes
GO = b"KVMIGDEC"                        # main stream: the decision record
SHUT0 = b"\x00\x01\x00\x04\x00\x00\x00\x00"  # return path: SHUT(0)
FINAL = ("completed", "failed", "cancelled")


class CutProxy:
    """Forwards 127.0.0.1:port to the destination. On the first
    connection, closes both directions as soon as `pattern` appears in
    `direction` ('up' = source to destination, 'down' = back), without
    forwarding the pattern or anything after it; with `after`, only once
    `after` went by in that direction first. Later connections (the
    source's RESOLVE) are forwarded untouched."""

    def __init__(self, dst_port, direction, pattern, after=None,
                 reconnect=True):
        self.reconnect = reconnect
        self.dst_port = dst_port
        self.direction = direction
        self.pattern = pattern
        self.after = after
        self.cut_at = None
        self.conns = 0
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                d = socket.create_connection(("127.0.0.1", self.dst_port))
            except OSError:
                c.close()
                continue
            self.conns += 1
            watch = self.conns == 1
            if self.cut_at is not None and not self.reconnect:
                c.close()  # the link stays down for the source
                d.close()
                continue
            pair = [c, d]
            for src, dst, way in ((c, d, "up"), (d, c, "down")):
                threading.Thread(target=self._pump,
                                 args=(src, dst, pair,
                                       watch and way == self.direction),
                                 daemon=True).start()

    def _cut(self, pair):
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump(self, src, dst, pair, watch):
        tail = b""
        armed = self.after is None
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if watch and self.cut_at is None:
                hay = tail + data
                start = 0
                if not armed:
                    i = hay.find(self.after)
                    if i >= 0:
                        armed = True
                        start = i + len(self.after)
                j = hay.find(self.pattern, start) if armed else -1
                if j >= 0:
                    keep = j - len(tail)
                    try:
                        if keep > 0:
                            dst.sendall(data[:keep])
                    except OSError:
                        pass
                    self.cut_at = time.monotonic()
                    self._cut(pair)
                    return
                tail = hay[-64:]
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.closed = True
        self.ls.close()


def start_pair(vms, label, timeout_ms=3000, multifd=0):
    src = vms.boot(f"{label}-src", "mem=64 rate=64", extra=("--verify-ram",))
    port = free_port()
    dst = vms.incoming(f"{label}-dst", f"tcp:127.0.0.1:{port}",
                       extra=("--verify-ram",))
    if not workload_started(src):
        return None
    qs, qd = vms.qmp(src), vms.qmp(dst)
    for q in (qs, qd):
        q.cmd("migrate-set-parameters", **{"x-return-path-timeout": timeout_ms})
        if multifd:
            q.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "multifd", "state": True}])
            q.cmd("migrate-set-parameters", **{"multifd-channels": multifd})
    return src, dst, qs, qd, port


def status_of(q):
    try:
        return q.cmd("query-migrate").get("status")
    except Exception:  # noqa: BLE001 - a process that went away
        return None


def wait_status(q, want, timeout):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = status_of(q)
        if st in want:
            return st
        time.sleep(0.05)
    return st


def stop_time(src):
    """When the source's vCPUs last produced a heartbeat."""
    t = src.heartbeat_times()
    return t[-1] if t else 0.0


def check_one_runs(tap, label, src, dst, t_switch, runner):
    """runner: 'src' or 'dst', the copy that must run; the other must
    have produced no heartbeat since t_switch."""
    now = time.monotonic()
    if runner == "src":
        runs = src.wait_heartbeats(30, 10, since=now)
        other = dst.heartbeats_since(0)
    else:
        runs = dst.wait_heartbeats(30, 10, since=now)
        other = src.heartbeats_since(t_switch + 0.3)
    tap.ok(runs, f"{label}: the {runner} copy runs",
           f"{src.describe()}\n{dst.describe()}")
    tap.ok(other == 0,
           f"{label}: the other copy ran not once after the switch-over ({other} heartbeats)",
           f"{src.describe()}\n{dst.describe()}")
    tap.ok(not corrupt_lines(src, dst), f"{label}: no CORRUPT on either console",
           corrupt_lines(src, dst))


def cut_case(tap, vms, label, direction, pattern, after, runner, multifd=0):
    """The link cut at one message of the switch-over; the proxy lets the
    source reconnect (the link came back). With multifd, its channels go
    through the proxy too and stay up: only the main connection is cut."""
    p = start_pair(vms, label, multifd=multifd)
    if not p:
        tap.skip_rest("guest did not start")
        return
    src, dst, qs, qd, port = p
    proxy = CutProxy(port, direction, pattern, after)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    rs = wait_migration(qs, timeout=60)
    t_switch = proxy.cut_at or time.monotonic()
    tap.ok(proxy.cut_at is not None, f"{label}: the proxy cut the link at the message",
           f"{rs}\n{src.describe()}")
    want = "completed" if runner == "dst" else "failed"
    tap.ok(rs.get("status") == want,
           f"{label}: the source ends {want} ({rs.get('error-desc', '')})",
           f"{rs}\n{src.describe()}")
    if runner == "dst":
        rd = wait_status(qd, ("completed",), 20)
        tap.ok(rd == "completed", f"{label}: the destination completed", dst.describe())
    else:
        rc = dst.wait(20)
        tap.ok(rc == 1, f"{label}: the destination discarded the guest and exited 1 (rc {rc})",
               dst.describe())
        tap.ok("ABORT" in dst.stderr or "took its guest back" in dst.stderr,
               f"{label}: the destination says the source kept the guest",
               dst.stderr)
    check_one_runs(tap, label, src, dst, t_switch, runner)
    ss = qs.cmd("query-status")["status"]
    want = "postmigrate" if runner == "dst" else "running"
    tap.ok(ss == want, f"{label}: the source's run state is {want} ({ss})", src.describe())
    proxy.close()


def frozen_destination(tap, vms):
    """Defect 1: the destination frozen at the switch-over for longer than
    the timeout, then thawed."""
    label = "frozen-dst"
    p = start_pair(vms, label, timeout_ms=1000)
    if not p:
        tap.skip_rest("guest did not start")
        return
    src, dst, qs, qd, port = p
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    ev = qs.wait_event("MIGRATION", timeout=60,
                       pred=lambda e: e["data"]["status"] == "device")
    os.kill(dst.p.pid, signal.SIGSTOP)
    t_switch = time.monotonic()
    tap.ok(ev is not None, f"{label}: the switch-over began", src.describe())
    time.sleep(2.5)  # well past x-return-path-timeout (1 s)
    mid = status_of(qs)
    os.kill(dst.p.pid, signal.SIGCONT)
    print(f"# {label}: source status while the destination was frozen: {mid}")
    rs = wait_migration(qs, timeout=30)
    runner = "dst" if rs.get("status") == "completed" else "src"
    print(f"# {label}: source ended {rs.get('status')}: {rs.get('error-desc', '')}")
    tap.ok(rs.get("status") in ("completed", "failed"),
           f"{label}: the source ends completed or failed, never undecided for good",
           f"{rs}\n{src.describe()}")
    if runner == "src":
        rc = dst.wait(20)
        tap.ok(rc == 1, f"{label}: the thawed destination ran nothing and exited 1 (rc {rc})",
               dst.describe())
    else:
        tap.ok(wait_status(qd, ("completed",), 20) == "completed",
               f"{label}: the destination completed", dst.describe())
    check_one_runs(tap, label, src, dst, t_switch, runner)


def settle_by_hand(tap, vms):
    """GO lost and the source then killed: the destination stays
    undecided, stopped, until an operator settles it."""
    label = "settle-dst"
    p = start_pair(vms, label)
    if not p:
        tap.skip_rest("guest did not start")
        return
    src, dst, qs, qd, port = p
    proxy = CutProxy(port, "up", GO, reconnect=False)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    st = wait_status(qd, ("x-undecided",) + FINAL, 60)
    tap.ok(st == "x-undecided", f"{label}: the destination says x-undecided ({st})",
           dst.describe())
    ev = qd.wait_event("MIGRATION", timeout=1,
                       pred=lambda e: e["data"]["status"] == "x-undecided")
    tap.ok(ev is not None, f"{label}: with a MIGRATION event", qd.events)
    r = qd.cmd("query-migrate")
    tap.ok("undecided" in r.get("error-desc", ""),
           f"{label}: query-migrate says why ({r.get('error-desc')})", r)
    tap.ok(wait_status(qs, ("x-undecided",), 10) == "x-undecided",
           f"{label}: the source says x-undecided too", src.describe())
    # The source host goes away for good: QMP quit must end a process
    # whose switch-over is undecided (it stops asking, runs nothing).
    st = qs.cmd("query-status")["status"]
    t_quit = time.monotonic()
    try:
        qs.cmd("quit")
    except Exception:  # noqa: BLE001 - the monitor may close first
        pass
    rc = src.wait(10)
    took = time.monotonic() - t_quit
    tap.ok(rc is not None and took < 5 and st != "running",
           f"{label}: quit ends an undecided source in {took:.1f} s (rc {rc}); its guest was {st}, never resumed",
           src.describe())
    src.kill()
    t = time.monotonic()
    time.sleep(1.5)
    tap.ok(dst.heartbeats_since(0) == 0 and status_of(qd) == "x-undecided",
           f"{label}: undecided, the destination runs nothing on its own",
           dst.describe())
    try:
        qs_err = None
        qd.cmd("x-migrate-settle", outcome="maybe")
    except Exception as e:  # noqa: BLE001
        qs_err = str(e)
    tap.ok(qs_err and "outcome" in qs_err, "a bad outcome is refused, naming it", qs_err)
    qd.cmd("x-migrate-settle", outcome="run")
    tap.ok(wait_status(qd, ("completed",), 10) == "completed",
           f"{label}: settled by hand, the destination completes", dst.describe())
    tap.ok(dst.wait_heartbeats(30, 10, since=t),
           f"{label}: and runs the guest", dst.describe())
    tap.ok(not corrupt_lines(dst), f"{label}: no CORRUPT", corrupt_lines(dst))


def settle_source(tap, vms):
    """GO lost and the destination then killed: the source stays
    undecided until an operator gives the guest back to it."""
    label = "settle-src"
    p = start_pair(vms, label)
    if not p:
        tap.skip_rest("guest did not start")
        return
    src, dst, qs, qd, port = p
    proxy = CutProxy(port, "up", GO, reconnect=False)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    st = wait_status(qs, ("x-undecided",) + FINAL, 60)
    t_und = time.monotonic()
    tap.ok(st == "x-undecided", f"{label}: the source says x-undecided ({st})",
           src.describe())
    dst.kill()  # the destination host is gone for good
    try:
        err = None
        qs.cmd("migrate_cancel")
        r = qs.cmd("query-migrate")
    except Exception as e:  # noqa: BLE001
        err, r = str(e), {}
    tap.ok(r.get("status") == "x-undecided",
           f"{label}: migrate_cancel cannot take back a guest handed over ({r.get('status')}, {err})",
           r)
    time.sleep(1.0)
    t = time.monotonic()
    tap.ok(src.heartbeats_since(t_und + 0.2) == 0,
           f"{label}: the source runs nothing meanwhile", src.describe())
    # The command line's way (kvmig settle), over the same QMP socket.
    out = subprocess.run([vms.kvmig, "settle", "--qmp", src.qmp_path,
                          "--outcome", "run"], capture_output=True,
                         text=True, timeout=30)
    tap.ok(out.returncode == 0 and "settled" in out.stdout,
           f"{label}: kvmig settle --outcome run (rc {out.returncode}: {out.stdout.strip()})",
           out.stderr)
    r = wait_migration(qs, timeout=10)
    tap.ok(r.get("status") == "failed" and "settled" in r.get("error-desc", ""),
           f"{label}: settled: failed, saying it was settled ({r.get('error-desc')})", r)
    tap.ok(src.wait_heartbeats(30, 10, since=t), f"{label}: the source runs the guest again",
           src.describe())
    try:
        err = None
        qs.cmd("x-migrate-settle", outcome="run")
    except Exception as e:  # noqa: BLE001
        err = str(e)
    tap.ok(err and "not undecided" in err,
           "x-migrate-settle with nothing undecided is refused, saying so", err)


def main():
    tap = Tap(PLAN)
    if len(sys.argv) != 3:
        tap.skip_rest("usage: test_vm_switchover.py KVMIG GUEST_ELF")
        return tap.finish()
    why = have_kvm()
    if why:
        tap.skip_rest(why)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-swo-") as tmp:
        for label, direction, pattern, after, runner, multifd in (
                ("cut-at-READY", "down", READY, None, "src", 0),
                ("cut-at-GO", "up", GO, None, "dst", 0),
                ("cut-at-SHUT", "down", SHUT0, None, "dst", 0),
                ("multifd-cut-at-READY", "down", READY, None, "src", 2),
                ("multifd-cut-at-GO", "up", GO, None, "dst", 2)):
            with VmSet(kvmig, guest, tmp) as vms:
                cut_case(tap, vms, label, direction, pattern, after, runner,
                         multifd)
        with VmSet(kvmig, guest, tmp) as vms:
            frozen_destination(tap, vms)
        with VmSet(kvmig, guest, tmp) as vms:
            settle_by_hand(tap, vms)
        with VmSet(kvmig, guest, tmp) as vms:
            settle_source(tap, vms)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
