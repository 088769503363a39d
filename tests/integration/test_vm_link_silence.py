#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A silent link is noticed by both sides (issue 10, defect 7, item 4),
from outside the processes, with x-link-timeout set on both sides:

- the link black-holed mid-migration (the destination runs inside a
  network namespace the test makes; every frame either way is then sent
  to a MAC nobody has, so nothing arrives and nothing is refused), with
  and without multifd: the source reports failed and the destination
  exits 1, each within the timeout plus a margin, both naming
  x-link-timeout; the source's guest runs on, no guest starts on the
  destination;
- the destination frozen with SIGSTOP: the source fails in time and its
  guest runs on; after SIGCONT the destination exits 1, no guest started;
- the source frozen with SIGSTOP: the destination exits 1 in time; after
  SIGCONT the source reports failed and its guest runs on;
- the end of a pass: a raw socket that reads everything and never
  answers (no PONG): the source fails "waiting for the destination to
  read pass 1" within the timeout after its last byte went;
- migrate_cancel during that wait (a long x-link-timeout): cancelled
  within 1 s, the guest runs on;
- setup: a proxy that goes silent both ways after the first 64 bytes
  (the stream's header and a part of its configuration): both sides fail
  in time, the destination while loading the setup;
- the switch-over: a proxy that goes silent both ways (it reads and drops,
  holding the connections open) as soon as the VM description passes it:
  the source fails "in the switch-over", the destination exits 1, each in
  time, and the source's guest runs on.
- and no false alarm: a healthy migration with a short x-link-timeout on
  both sides and 2 multifd channels, slowed down by max-bandwidth (its
  main stream idles while the channels carry the pages, and at the ends
  of its passes), completes and the guest runs on the destination.
Detection times are printed (`# ... detected after N ms`).
Usage: test_vm_link_silence.py KVMIG GUEST_ELF"""
import os
import signal
import socket
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from netns import VethLink, unavailable  # noqa: E402
from vmlib import (Vm, VmSet, corrupt_lines, free_port,  # noqa: E402
                   have_kvm, workload_started)

PLAN = 46
LINK_TIMEOUT_MS = 2000
# What detection may take beyond the timeout: buffers filling, the
# failure's cleanup, and a loaded 2-core machine.
MARGIN_S = 3.0
GIVE_UP_S = LINK_TIMEOUT_MS / 1000 + 10
SLOW = 64 * 1024 * 1024  # bytes/s: keeps a 1 GiB migration in flight
CANCEL_LIMIT_S = 1.0
# A keepalive: QEMU's MIG_CMD_PING, 9 bytes (two may come in one read).
KEEPALIVE_BYTES = 18


class Sink:
    """Accepts one connection and reads everything, never answering.
    last_byte: when the last read of more than a keepalive came."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.last_byte = None
        self.conn = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        try:
            self.conn, _ = self.lsock.accept()
            while True:
                d = self.conn.recv(1 << 20)
                if not d:
                    return
                if len(d) > KEEPALIVE_BYTES:
                    self.last_byte = time.monotonic()
        except OSError:
            pass

    def close(self):
        for s in (self.conn, self.lsock):
            if s:
                s.close()


# The VM description's first bytes (FORMAT.md): only the end of the
# stream carries them.
VMDESC = b'{"page_size":'


class CutProxy:
    """Forwards one migration to port; once the source's stream shows the
    VM description (or after its first cut_after bytes), it forwards
    nothing more either way, and reads and drops what comes, holding both
    connections open: a black hole at the switch-over (or in setup)."""

    def __init__(self, port, cut_after=None):
        self.target = port
        self.cut_after = cut_after
        self.forwarded = 0
        self.cut = threading.Event()
        self.cut_time = None
        self.socks = []
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
                b = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.socks += [a, b]
            threading.Thread(target=self._pipe, args=(a, b, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, a, False),
                             daemon=True).start()

    def _pipe(self, a, b, forward):
        tail = b""
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    return
                if self.cut.is_set():
                    continue
                if forward and self.cut_after is not None and \
                        self.forwarded + len(d) > self.cut_after:
                    d = d[:self.cut_after - self.forwarded]
                    b.sendall(d)
                    self.cut_time = time.monotonic()
                    self.cut.set()
                    continue
                if forward and VMDESC in tail + d:
                    self.cut_time = time.monotonic()
                    self.cut.set()
                    continue
                if forward:
                    self.forwarded += len(d)
                tail = (tail + d)[-len(VMDESC):]
                b.sendall(d)
        except OSError:
            pass

    def close(self):
        for s in self.socks + [self.lsock]:
            s.close()


def start_destination(vms, label, netns=None):
    """A `kvmig run --incoming defer` (in netns when given)."""
    vms.n += 1
    sock = os.path.join(vms.tmp, f"qmp{vms.n}.sock")
    argv = [vms.kvmig, "run", "--qmp", f"unix:{sock}", "--memory", "1G",
            "--cpus", "2", "--incoming", "defer"]
    if netns:
        argv = ["ip", "netns", "exec", netns.ns] + argv
    vm = Vm(argv, label)
    vm.qmp_path = sock
    vms.vms.append(vm)
    return vm


def set_params(q, **params):
    return q.execute("migrate-set-parameters", **params)


def wait_transferring(q, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") == "active" and r["ram"]["transferred"] > 8 << 20:
            return True
        time.sleep(0.02)
    return False


def wait_final(q, t0, timeout=GIVE_UP_S):
    """(query-migrate reply, seconds after t0) once it is final."""
    r = {}
    while time.monotonic() - t0 < timeout:
        r = q.cmd("query-migrate")
        if r.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.02)
    return r, time.monotonic() - t0


def wait_exit(vm, t0, timeout=GIVE_UP_S):
    """(exit code or None, seconds after t0)."""
    rc = vm.wait(max(0.0, t0 + timeout - time.monotonic()))
    return rc, (vm.exit_time or time.monotonic()) - t0


def guest_runs(q, vm):
    st = q.cmd("query-status")["status"]
    return st == "running" and vm.wait_heartbeats(100, 5,
                                                  since=time.monotonic())


def end_leftovers(q, dst):
    """A side that never noticed (as before the fix) must not hold up the
    next case: cancel the source's migration, kill the destination."""
    if q.cmd("query-migrate").get("status") not in ("completed", "failed",
                                                      "cancelled", "none"):
        q.execute("migrate_cancel")
        wait_final(q, time.monotonic())
    dst.kill()


def said(vm):
    """What a process said about x-link-timeout on stderr."""
    lines = [x for x in vm.stderr.splitlines() if "x-link-timeout" in x]
    return lines[-1] if lines else ""


def in_time(took):
    return took < LINK_TIMEOUT_MS / 1000 + MARGIN_S


def prepare(tap, vms, q, what, netns=None, multifd=False):
    """A destination set up for the case, the migration under way:
    (destination, its URI) or None."""
    dst = start_destination(vms, f"dst-{what}", netns)
    dq = vms.qmp(dst)
    caps = [{"capability": "multifd", "state": multifd}]
    params = {"x-link-timeout": LINK_TIMEOUT_MS}
    if multifd:
        params["multifd-channels"] = 2
    dq.cmd("migrate-set-capabilities", capabilities=caps)
    r = set_params(dq, **params)
    host = netns.theirs if netns else "127.0.0.1"
    port = free_port() if not netns else 4444 + vms.n
    dq.cmd("migrate-incoming", uri=f"tcp:{host}:{port}")
    q.cmd("migrate-set-capabilities", capabilities=caps)
    r2 = set_params(q, **params, **{"max-bandwidth": SLOW})
    tap.ok("return" in r and "return" in r2,
           f"{what}: both sides accept x-link-timeout {LINK_TIMEOUT_MS}",
           f"{r} {r2}")
    q.cmd("migrate", uri=f"tcp:{host}:{port}")
    if not tap.ok(wait_transferring(q), f"{what}: the migration is under way",
                  q.cmd("query-migrate")):
        end_leftovers(q, dst)
        return None
    return dst


def black_hole(tap, vms, q, src, netns, multifd):
    what = "black hole" + (" (multifd)" if multifd else "")
    dst = prepare(tap, vms, q, what, netns, multifd)
    if not dst:
        return
    netns.drop()
    t0 = time.monotonic()
    try:
        r, took = wait_final(q, t0)
        rc, dtook = wait_exit(dst, t0)
    finally:
        netns.restore()
    desc = r.get("error-desc", "")
    print(f"# {what}: source detected after {took * 1000:.0f} ms "
          f"({desc}); destination after {dtook * 1000:.0f} ms "
          f"({said(dst)})")
    tap.ok(r.get("status") == "failed" and in_time(took),
           f"{what}: the source fails within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s ({took:.2f} s)", r)
    tap.ok("x-link-timeout" in desc and netns.theirs in desc,
           f"{what}: the source's error names the destination and "
           "x-link-timeout", desc)
    tap.ok(rc == 1 and in_time(dtook),
           f"{what}: the destination exits 1 within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s ({dtook:.2f} s)", dst.describe())
    tap.ok("x-link-timeout" in dst.stderr and b"*" not in dst.console,
           f"{what}: the destination names x-link-timeout, no guest ran "
           "there", dst.describe())
    tap.ok(guest_runs(q, src), f"{what}: the source's guest runs on",
           src.describe())
    end_leftovers(q, dst)


def frozen_destination(tap, vms, q, src):
    what = "SIGSTOP destination"
    dst = prepare(tap, vms, q, what)
    if not dst:
        return
    dst.p.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        r, took = wait_final(q, t0)
    finally:
        dst.p.send_signal(signal.SIGCONT)
    desc = r.get("error-desc", "")
    print(f"# {what}: source detected after {took * 1000:.0f} ms ({desc})")
    tap.ok(r.get("status") == "failed" and in_time(took),
           f"{what}: the source fails within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s ({took:.2f} s)", r)
    tap.ok("x-link-timeout" in desc, f"{what}: the error names "
           "x-link-timeout", desc)
    tap.ok(guest_runs(q, src), f"{what}: the source's guest runs on",
           src.describe())
    rc = dst.wait(10)
    tap.ok(rc == 1 and b"*" not in dst.console,
           f"{what}: after SIGCONT the destination exits 1, no guest ran",
           dst.describe())
    end_leftovers(q, dst)


def frozen_source(tap, vms, q, src):
    what = "SIGSTOP source"
    dst = prepare(tap, vms, q, what)
    if not dst:
        return
    src.p.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        rc, dtook = wait_exit(dst, t0)
    finally:
        src.p.send_signal(signal.SIGCONT)
    print(f"# {what}: destination detected after {dtook * 1000:.0f} ms "
          f"({said(dst)})")
    tap.ok(rc == 1 and in_time(dtook),
           f"{what}: the destination exits 1 within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s ({dtook:.2f} s)", dst.describe())
    tap.ok("x-link-timeout" in dst.stderr and b"*" not in dst.console,
           f"{what}: the destination names x-link-timeout, no guest ran "
           "there", dst.describe())
    r, _ = wait_final(q, time.monotonic())
    tap.ok(r.get("status") == "failed",
           f"{what}: after SIGCONT the source reports failed", r)
    tap.ok(guest_runs(q, src), f"{what}: the source's guest runs on",
           src.describe())
    end_leftovers(q, dst)


def pass_end(tap, q, src):
    what = "end of a pass"
    sink = Sink()
    try:
        q.cmd("migrate-set-parameters",
              **{"x-link-timeout": LINK_TIMEOUT_MS, "max-bandwidth": 0})
        q.cmd("migrate", uri=sink.uri)
        r, _ = wait_final(q, time.monotonic(), timeout=GIVE_UP_S + 20)
        last = sink.last_byte
        took = (time.monotonic() - last) if last else 0
    finally:
        sink.close()
    desc = r.get("error-desc", "")
    print(f"# {what}: source failed {took * 1000:.0f} ms after its last "
          f"byte but keepalives ({desc})")
    tap.ok(r.get("status") == "failed" and in_time(took),
           f"{what}: the source fails within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s of its last byte but keepalives ({took:.2f} s)", r)
    tap.ok("waiting for the destination to read pass 1" in desc and
           "x-link-timeout" in desc, f"{what}: the error names the wait "
           "and x-link-timeout", desc)
    tap.ok(guest_runs(q, src), f"{what}: the source's guest runs on",
           src.describe())


def cancel_pass_end(tap, q, src):
    what = "cancel at the end of a pass"
    sink = Sink()
    try:
        q.cmd("migrate-set-parameters",
              **{"x-link-timeout": 60000, "max-bandwidth": 0})
        q.cmd("migrate", uri=sink.uri)
        # Waiting for the PONG: the pass went, only keepalives come.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                sink.last_byte and time.monotonic() - sink.last_byte > 1):
            time.sleep(0.05)
        t0 = time.monotonic()
        q.cmd("migrate_cancel")
        r, took = wait_final(q, t0)
    finally:
        sink.close()
    print(f"# {what}: cancelled {took * 1000:.0f} ms after migrate_cancel")
    tap.ok(r.get("status") == "cancelled" and took < CANCEL_LIMIT_S,
           f"{what}: cancelled within {CANCEL_LIMIT_S} s ({took:.2f} s)", r)
    tap.ok(guest_runs(q, src), f"{what}: the source's guest runs on",
           src.describe())


def cut_link(tap, vms, q, src, what, cut_after, phase):
    dst = start_destination(vms, f"dst-{what}")
    dq = vms.qmp(dst)
    port = free_port()
    dq.cmd("migrate-set-parameters", **{"x-link-timeout": LINK_TIMEOUT_MS})
    dq.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    proxy = CutProxy(port, cut_after)
    try:
        q.cmd("migrate-set-parameters",
              **{"x-link-timeout": LINK_TIMEOUT_MS, "max-bandwidth": 0})
        q.cmd("migrate", uri=proxy.uri)
        cut = proxy.cut.wait(60)
        tap.ok(cut, f"{what}: the proxy cut the link")
        t0 = proxy.cut_time or time.monotonic()
        r, took = wait_final(q, t0)
        rc, dtook = wait_exit(dst, t0)
    finally:
        proxy.close()
    desc = r.get("error-desc", "")
    print(f"# {what}: source detected after {took * 1000:.0f} ms "
          f"({desc}); destination after {dtook * 1000:.0f} ms "
          f"({said(dst)})")
    tap.ok(r.get("status") == "failed" and in_time(took),
           f"{what}: the source fails within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s ({took:.2f} s)", r)
    tap.ok(phase in desc and "x-link-timeout" in desc,
           f"{what}: the error names '{phase}' and x-link-timeout", desc)
    tap.ok(rc == 1 and in_time(dtook),
           f"{what}: the destination exits 1 within {LINK_TIMEOUT_MS} ms + "
           f"{MARGIN_S} s ({dtook:.2f} s)", dst.describe())
    tap.ok("x-link-timeout" in dst.stderr and b"*" not in dst.console,
           f"{what}: the destination names x-link-timeout, no guest ran "
           "there", dst.describe())
    tap.ok(guest_runs(q, src), f"{what}: the source's guest runs on",
           src.describe())
    end_leftovers(q, dst)


def healthy(tap, vms, q, src):
    what = "healthy, x-link-timeout 1000 ms, multifd"
    dst = start_destination(vms, "dst-healthy")
    dq = vms.qmp(dst)
    caps = [{"capability": "multifd", "state": True}]
    params = {"x-link-timeout": 1000, "multifd-channels": 2}
    port = free_port()
    dq.cmd("migrate-set-capabilities", capabilities=caps)
    dq.cmd("migrate-set-parameters", **params)
    dq.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    q.cmd("migrate-set-capabilities", capabilities=caps)
    q.cmd("migrate-set-parameters", **params, **{"max-bandwidth": SLOW})
    t0 = time.monotonic()
    q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r, took = wait_final(q, t0, timeout=120)
    print(f"# {what}: {r.get('status')} after {took:.1f} s, "
          f"{r.get('ram', {}).get('dirty-sync-count')} passes")
    tap.ok(r.get("status") == "completed",
           f"{what}: the migration completes ({took:.1f} s)", r)
    tap.ok(dst.wait_heartbeats(100, 10, since=time.monotonic()),
           f"{what}: the guest runs on the destination", dst.describe())


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-ls-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        src = vms.boot("src", "mem=64 rate=64")
        if not workload_started(src):
            tap.ok(False, "the guest starts", src.describe())
            return tap.finish()
        q = vms.qmp(src)
        why = unavailable()
        netns = None
        if not why:
            try:
                netns = VethLink()
            except OSError as e:
                why = f"cannot make the network namespace: {e}"
        if netns:
            try:
                black_hole(tap, vms, q, src, netns, multifd=False)
                black_hole(tap, vms, q, src, netns, multifd=True)
            finally:
                netns.close()
        else:
            print(f"# SKIP black-hole cases: {why}")
            for _ in range(14):
                tap.skip("black-holed link in a network namespace", why)
        q.cmd("migrate-set-capabilities",
              capabilities=[{"capability": "multifd", "state": False}])
        frozen_destination(tap, vms, q, src)
        frozen_source(tap, vms, q, src)
        pass_end(tap, q, src)
        cancel_pass_end(tap, q, src)
        cut_link(tap, vms, q, src, "setup", 64, "the link went silent")
        cut_link(tap, vms, q, src, "switch-over", None,
                 "the link went silent in the switch-over")
        healthy(tap, vms, q, src)
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
