#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Issue 10, defects 8 and 9, from outside the process: connections to a
destination's port that are not a migration source, and what a failing
migration reports.

(a) a port scan (connect, close) several times: the destination still
    listens, query-migrate says setup, then a real source migrates
    (--verify-ram) and the guest runs on;
(b) a stranger that holds its connection open sending nothing, and one
    that sends garbage, connect first: the real source migrates, the
    holder is dropped within the bound;
(c) strangers connect during a multifd migration (one holding, one
    posing as a multifd channel already connected): it completes;
(d) a proxy flips a byte in a multifd channel's packet: the destination
    names that channel's packet, the source a multifd channel, the source
    guest runs on, the destination runs nothing;
(e) query-migrate polled rapidly (and at once on each MIGRATION event)
    during failing migrations never says failed without error-desc.
Usage: test_vm_strangers.py KVMIG GUEST_ELF"""
import os
import socket
import struct
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, have_kvm,  # noqa: E402
                   wait_migration, workload_started)

PLAN = 17
VERIFY = ("--verify-ram",)
HELLO_BOUND_S = 3.0   # the destination's bound for a stream header
MFD_MAGIC = 0x11223344


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def wait_status(q, want, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        st = q.cmd("query-status")["status"]
        if st == want or time.monotonic() > deadline:
            return st
        time.sleep(0.02)


def migrated_and_running(tap, vms, q_src, dst, q_dst, name, r):
    tap.ok(r.get("status") == "completed", f"{name}: the migration completes",
           f"{r}\n{dst.describe()}")
    ds = wait_status(q_dst, "running")
    ok = dst.wait_heartbeats(200, 10, since=time.monotonic())
    tap.ok(ds == "running" and ok and
           "ram-verify: RAM differs" not in dst.stderr,
           f"{name}: the guest runs at the destination (--verify-ram)",
           f"{ds}\n{dst.describe()}")


def port_scan(tap, vms, src):
    port = free_port()
    dst = vms.incoming("scan-dst", f"tcp:127.0.0.1:{port}", extra=VERIFY)
    qd = vms.qmp(dst)
    for _ in range(5):
        connect(port).close()
        time.sleep(0.05)
    s = connect(port)  # fewer bytes than the header, then close
    s.sendall(b"QEV")
    s.close()
    time.sleep(0.5)
    st = qd.cmd("query-migrate").get("status")
    tap.ok(dst.p.poll() is None and st == "setup",
           "(a) after a port scan the destination still listens (setup)",
           f"{st}\n{dst.describe()}")
    tap.ok("127.0.0.1:" in dst.stderr and "not a migration source" in
           dst.stderr, "(a) each dropped connection is named with its "
           "peer address and why", dst.stderr)
    qs = vms.qmp(src)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    migrated_and_running(tap, vms, qs, dst, qd, "(a)", wait_migration(qs))
    return dst


def holders_first(tap, vms, src):
    port = free_port()
    dst = vms.incoming("hold-dst", f"tcp:127.0.0.1:{port}", extra=VERIFY)
    qd = vms.qmp(dst)
    holder = connect(port)
    t_hold = time.monotonic()
    junk = connect(port)
    junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
    qs = vms.qmp(src)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    holder.settimeout(HELLO_BOUND_S + 5)
    try:
        dropped = holder.recv(1) == b""
    except ConnectionResetError:
        dropped = True
    except socket.timeout:
        dropped = False
    took = time.monotonic() - t_hold
    tap.ok(dropped and took < HELLO_BOUND_S + 2,
           f"(b) a silent stranger is dropped within the bound "
           f"({took:.1f} s)", dst.stderr)
    holder.close()
    junk.close()
    migrated_and_running(tap, vms, qs, dst, qd, "(b)", wait_migration(qs))
    return dst


def set_multifd(q, channels=2):
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": "multifd", "state": True}])
    q.cmd("migrate-set-parameters", **{"multifd-channels": channels})


def multifd_init(chan_id):
    return struct.pack(">II16sB", MFD_MAGIC, 1, b"\0" * 16,
                       chan_id).ljust(64, b"\0")


def strangers_during_multifd(tap, vms, src):
    port = free_port()
    dst = vms.incoming("mfd-dst", "defer", extra=VERIFY)
    qd = vms.qmp(dst)
    qs = vms.qmp(src)
    set_multifd(qs)
    set_multifd(qd)
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 256 << 20})
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    # Right behind the source's channels, during their handshake.
    holder = connect(port)
    time.sleep(0.3)
    dup = connect(port)  # poses as channel 0, which already came
    dup.sendall(multifd_init(0))
    junk = connect(port)
    junk.sendall(b"\xff" * 100)
    r = wait_migration(qs)
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
    for s in (holder, dup, junk):
        s.close()
    migrated_and_running(tap, vms, qs, dst, qd, "(c)", r)
    tap.ok(r.get("ram", {}).get("multifd-bytes", 0) > 0,
           "(c) the pages went over the multifd channels", r)
    return dst


class FlipProxy:
    """Forwards every connection to port; on the multifd channel with id
    `chan`, flips the version byte of its packet number `nth` (counted on
    that channel from 0)."""

    def __init__(self, port, chan, nth):
        self.target = port
        self.chan = chan
        self.nth = nth
        self.flipped = threading.Event()
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [a, b]
            threading.Thread(target=self._pipe, args=(b, a, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(a, b, True),
                             daemon=True).start()

    @staticmethod
    def _recv_exact(s, n):
        out = b""
        while len(out) < n:
            d = s.recv(n - len(out))
            if not d:
                raise EOFError
            out += d
        return out

    def _pipe(self, a, b, forward):
        try:
            if forward:
                first = self._recv_exact(a, 4)
                b.sendall(first)
                if struct.unpack(">I", first)[0] == MFD_MAGIC:
                    self._channel(a, b, first)
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except (OSError, EOFError):
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _channel(self, a, b, first):
        init = self._recv_exact(a, 60)
        b.sendall(init)
        cid = (first + init)[24]
        n = 0
        while True:
            hdr = bytearray(self._recv_exact(a, 320))
            pages_alloc, next_size = struct.unpack(">I", hdr[12:16])[0], \
                struct.unpack(">I", hdr[20:24])[0]
            if cid == self.chan and n == self.nth:
                hdr[7] ^= 0x40
                self.flipped.set()
            b.sendall(hdr)
            rest = pages_alloc * 8 + next_size
            while rest:
                d = a.recv(min(rest, 65536))
                if not d:
                    raise EOFError
                b.sendall(d)
                rest -= len(d)
            n += 1

    def close(self):
        self.lsock.close()
        for s in self.socks:
            s.close()


def corrupted_channel(tap, vms, src):
    port = free_port()
    dst = vms.incoming("flip-dst", "defer", extra=VERIFY)
    qd = vms.qmp(dst)
    qs = vms.qmp(src)
    set_multifd(qs)
    set_multifd(qd)
    qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    proxy = FlipProxy(port, chan=1, nth=5)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    r = wait_migration(qs, timeout=30)
    desc = r.get("error-desc", "")
    print(f"# source: {desc}")
    # The source learns no reason over the wire (QEMU's return path
    # carries a status only): it names the channel the destination
    # closed under it, or, when the destination's SHUT(1) reached its
    # return-path reader first, the destination's refusal; never the main
    # stream's "section EOF".
    tap.ok(proxy.flipped.is_set() and r.get("status") == "failed" and
           ("multifd channel" in desc or
            "answered SHUT with status 1" in desc) and
           "section EOF" not in desc,
           "(d) the source fails naming a multifd channel or the "
           "destination's refusal", f"{r}")
    st = qs.cmd("query-status")["status"]
    ok = src.wait_heartbeats(200, 10, since=time.monotonic())
    tap.ok(st == "running" and ok, "(d) the source guest runs on",
           f"{st}\n{src.describe()}")
    rc = dst.wait(10)
    tap.ok(rc == 1 and "multifd channel 1, packet" in dst.stderr and
           "no guest was started" in dst.stderr and b"*" not in dst.console,
           "(d) the destination names the channel and runs nothing",
           dst.describe())
    print("# destination: " + " | ".join(
        l for l in dst.stderr.splitlines() if "multifd" in l or
        "section" in l))
    proxy.close()
    qs.cmd("migrate-set-capabilities",
           capabilities=[{"capability": "multifd", "state": False}])


def poll_failing(qs, start, events):
    """Start a migration that fails; poll query-migrate in a tight loop
    and once right after each MIGRATION event. The replies that say
    failed without error-desc."""
    bad, n = [], 0
    start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = qs.execute("query-migrate").get("return", {})
        n += 1
        if r.get("status") == "failed" and not r.get("error-desc"):
            bad.append(r)
        for e in [e for e in qs.events if e["event"] == "MIGRATION"]:
            qs.events.remove(e)
            events.append(e["data"]["status"])
            r = qs.execute("query-migrate").get("return", {})
            if r.get("status") == "failed" and not r.get("error-desc"):
                bad.append(r)
        if r.get("status") in ("failed", "completed", "cancelled"):
            break
    return bad, n, r


def failing_queries(tap, vms, src):
    qs = vms.qmp(src)
    qs.cmd("migrate-set-capabilities",
           capabilities=[{"capability": "events", "state": True}])
    bad, polls, events, last, refused = [], 0, [], {}, []
    for _ in range(20):  # refused connects: the fastest failure
        port = free_port()
        b, n, last = poll_failing(
            qs, lambda: qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}"),
            events)
        bad += b
        polls += n
    for i in range(3):  # the destination refuses the stream (RAM size)
        port = free_port()
        dst = vms.incoming(f"small-dst{i}", f"tcp:127.0.0.1:{port}",
                           memory="512M")
        vms.qmp(dst)
        b, n, last = poll_failing(
            qs, lambda: qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}"),
            events)
        bad += b
        polls += n
        refused.append(dst.wait(10) == 1 and
                       "no guest was started" in dst.stderr and
                       b"*" not in dst.console)
    # The last run's event may come after the reply that ended its loop.
    deadline = time.monotonic() + 3
    while events.count("failed") < 23 and time.monotonic() < deadline:
        qs.execute("query-status")
        for e in [e for e in qs.events if e["event"] == "MIGRATION"]:
            qs.events.remove(e)
            events.append(e["data"]["status"])
        time.sleep(0.05)
    print(f"# {polls} polls, {events.count('failed')} failed events, "
          f"last {last}")
    tap.ok(events.count("failed") >= 23 and not bad,
           "(e) query-migrate never says failed without error-desc "
           f"({len(bad)} of {polls} polls did)",
           f"{events.count('failed')} failed events; {bad[:3]}")
    tap.ok(all(refused), "(e) a destination that refuses the stream (its "
           "RAM differs) exits 1 and runs nothing", f"{refused}")
    st = qs.cmd("query-status")["status"]
    tap.ok(st == "running", "(e) the source guest runs on", st)


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-str-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        src = vms.boot("src", "mem=32 rate=16", extra=VERIFY)
        if not workload_started(src):
            tap.skip_rest("guest did not start: " + src.describe())
            return tap.finish()
        failing_queries(tap, vms, src)
        corrupted_channel(tap, vms, src)
        vm = port_scan(tap, vms, src)
        vm = holders_first(tap, vms, vm)
        strangers_during_multifd(tap, vms, vm)
        tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
               f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
