#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QEMU's command-line conventions (issue 9, part 2):
 - the destination started with the source's command line plus --incoming
   (tcp:, defer + migrate-incoming, file:) runs the source's guest, never
   its own boot; --memory or --cpus that differ fail naming the option and
   both values;
 - a multiboot kernel linked by GNU ld with its default settings (headers
   in a segment at 0xff000) boots; one whose headers land on the MP table
   is refused naming both ranges;
 - a stream written with default settings is a QEMU stream: no ZPAGES
   record (flag 0x400) to file: nor over loopback.
Usage: test_vm_qemu_cli.py KVMIG GUEST_ELF LD_DEFAULT_ELF LD_COLLIDE_ELF"""
import os
import socket
import struct
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

PLAN = 15
APPEND = "mem=32 rate=16 pattern=hot-cold"
BOOTED = rb"kvmig guest booted"

# ---- RAM records of a stream (docs/FORMAT.md 1, 2, 5) ----

ZERO, MEM_SIZE, PAGE, EOS, CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
XBZRLE, MULTIFD_FLUSH, ZPAGES = 0x40, 0x200, 0x400


class Reader:
    def __init__(self, data):
        self.b, self.o = data, 0

    def take(self, n):
        if self.o + n > len(self.b):
            raise ValueError(f"stream ends at {len(self.b)}, need {n} "
                             f"more bytes at {self.o}")
        v = self.b[self.o:self.o + n]
        self.o += n
        return v

    def u(self, n):
        return int.from_bytes(self.take(n), "big")

    def str8(self):
        return self.take(self.u(1)).decode()


def ram_payload(r, census):
    """Records until EOS; census counts them by type."""
    while True:
        v = r.u(8)
        flags = v & 0xfff
        kind = flags & ~CONTINUE
        census[kind] = census.get(kind, 0) + 1
        if kind in (PAGE, XBZRLE, ZPAGES):
            census.setdefault("first", kind)
        if kind in (ZERO, PAGE, XBZRLE, ZPAGES) and not flags & CONTINUE:
            r.str8()
        if kind == MEM_SIZE:
            left = v & ~0xfff
            while left:
                r.str8()
                left -= r.u(8)
        elif kind == ZERO:
            r.take(1)
        elif kind == PAGE:
            r.take(4096)
        elif kind == XBZRLE:
            r.take(1)
            r.take(r.u(2))
        elif kind == ZPAGES:
            r.take(1)
            r.take((r.u(2) - 1) * 8)
            r.take(r.u(4))
        elif kind == EOS:
            return
        elif kind != MULTIFD_FLUSH:
            raise ValueError(f"unknown RAM flags 0x{flags:x} at {r.o - 8}")


def ram_census(data):
    """Walk a stream up to its first device section: {record type: count}."""
    r = Reader(data)
    if r.u(4) != 0x5145564d or r.u(4) != 3:
        raise ValueError("not a QEVM v3 stream")
    census, live = {}, {}
    while True:
        t = r.u(1)
        if t == 0x07:
            r.take(r.u(4))
        elif t == 0x08:
            r.u(2)
            r.take(r.u(2))
        elif t == 0x01:
            sid = r.u(4)
            live[sid] = r.str8()
            r.take(8)
        elif t in (0x02, 0x03):
            sid = r.u(4)
        else:
            return census  # FULL, EOF: the RAM is all behind
        if t in (0x01, 0x02, 0x03):
            if live.get(sid) != "ram":
                raise ValueError(f"live section {sid} is not ram")
            ram_payload(r, census)
            if r.u(1) != 0x7e or r.u(4) != sid:
                raise ValueError(f"no footer for section {sid} at {r.o}")


class Tee:
    """A TCP relay from the source to the destination that keeps a copy
    of what the source sent (the return path goes back untouched)."""

    def __init__(self, dst_port):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.dst_port = dst_port
        self.data = bytearray()
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _pipe(self, a, b, keep):
        try:
            while True:
                d = a.recv(1 << 16)
                if not d:
                    break
                if keep:
                    self.data += d
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if keep:
            self.done.set()

    def _run(self):
        src, _ = self.ls.accept()
        dst = socket.create_connection(("127.0.0.1", self.dst_port))
        threading.Thread(target=self._pipe, args=(dst, src, False),
                         daemon=True).start()
        self._pipe(src, dst, True)


# ---- the tests ----

def guest_args(guest, memory="1G", cpus=2):
    return ["--memory", memory, "--cpus", str(cpus), "--kernel", guest,
            "--append", APPEND]


def start(vms, label, args):
    return vms._start(label, args)


def resumed(dst):
    """Heartbeats from the migrated guest, and no boot of its own."""
    return (dst.wait_heartbeats(300, 20, since=time.monotonic())
            and not corrupt_lines(dst) and
            dst.wait_console(BOOTED, 0) is None)


def same_command_line(tap, vms, guest, how, tmp):
    src = start(vms, f"src-{how}", guest_args(guest))
    if not workload_started(src):
        for _ in range(1 + (how != "defer")):
            tap.ok(False, f"{how}: source guest started", src.describe())
        return
    qs = vms.qmp(src)
    if how == "file":
        path = os.path.join(tmp, "same-cmdline.kvmig")
        qs.cmd("migrate", uri=f"file:{path}")
        r = wait_migration(qs)
        qs.cmd("quit")
        src.wait(10)
        dst = start(vms, "dst-file",
                    guest_args(guest) + ["--incoming", f"file:{path}"])
        rr = ram_census(open(path, "rb").read())
        print(f"# file: stream's RAM records: {rr}")
        tap.ok(r.get("status") == "completed" and rr.get(PAGE, 0) > 0 and
               ZPAGES not in rr,
               "a default-settings stream to file: has PAGE records and no "
               "ZPAGES (QEMU's tools read it)", f"{r} {rr}")
    else:
        port = free_port()
        uri = f"tcp:127.0.0.1:{port}"
        incoming = "defer" if how == "defer" else uri
        dst = start(vms, f"dst-{how}",
                    guest_args(guest) + ["--incoming", incoming])
        qd = vms.qmp(dst)
        if how == "defer":
            qd.cmd("migrate-incoming", uri=uri)
        tee = Tee(port) if how == "tcp" else None
        qs.cmd("migrate", uri=f"tcp:127.0.0.1:{tee.port}" if tee else uri)
        r = wait_migration(qs)
        if tee:
            tee.done.wait(10)
            rr = ram_census(bytes(tee.data))
            c = r.get("compression", {})
            print(f"# loopback stream's RAM records: {rr}, source: {c}")
            # A host loaded enough to make loopback slower than zstd may
            # have auto choose compression (the source says so); even
            # then the first pages went raw.
            chose = c.get("x-switches", 0) > 0
            tap.ok(r.get("status") == "completed" and
                   rr.get("first") == PAGE and
                   (chose or (ZPAGES not in rr and c.get("pages") == 0)),
                   "a default-settings loopback stream has no ZPAGES "
                   "record", f"{r} {rr}")
    tap.ok(r.get("status") == "completed" and resumed(dst),
           f"--incoming {how} with the source's command line (--kernel, "
           "--append): the source's guest runs on, the destination never "
           "booted its own", f"{r}\n{dst.describe()}")
    dst.send_console(b"q")
    dst.wait(15)
    if how != "file":
        qs.cmd("quit")
        src.wait(10)


def mismatch(tap, vms, guest, src_opts, dst_opts, needles, what):
    src = start(vms, f"src-{what}", guest_args(guest, **src_opts))
    if not workload_started(src):
        tap.ok(False, f"{what}: source guest started", src.describe())
        tap.ok(False, f"{what}: source keeps running")
        return
    port = free_port()
    dst = start(vms, f"dst-{what}", guest_args(guest, **dst_opts) +
                ["--incoming", f"tcp:127.0.0.1:{port}"])
    vms.qmp(dst)
    qs = vms.qmp(src)
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_migration(qs)
    rc = dst.wait(20)
    print(f"# {what}: destination says: "
          f"{[ln for ln in dst.stderr.splitlines() if 'stream' in ln]}")
    tap.ok(rc == 1 and all(n in dst.stderr for n in needles) and
           dst.wait_console(BOOTED, 0) is None,
           f"{what}: the destination refuses, naming the option and both "
           "values", dst.describe())
    st = qs.cmd("query-status")["status"]
    tap.ok(r.get("status") == "failed" and st == "running" and
           src.wait_heartbeats(100, 10, since=time.monotonic()),
           f"{what}: the source resumes its guest", f"{r} {st}")
    qs.cmd("quit")
    src.wait(10)


def run(argv, timeout=60):
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace"), \
            p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return None, "", "timed out"


def ld_kernels(tap, kvmig, ok_elf, collide_elf):
    rc, out, err = run([kvmig, "run", "--memory", "16M", "--cpus", "1",
                        "--kernel", ok_elf])
    tap.ok(rc == 0 and "ld-default kernel: hello" in out,
           "a kernel linked with ld's default settings (headers at 0xff000) "
           "boots, prints and powers off", f"rc={rc}\n{out}\n{err}")
    rc, out, err = run([kvmig, "run", "--memory", "16M", "--cpus", "1",
                        "--kernel", collide_elf])
    print(f"# {err.strip()}")
    tap.ok(rc == 1 and "segment 0 [0xf0000, 0xf00" in err and
           "overlaps the MP table [0xf0000, 0xf1000)" in err,
           "a kernel whose headers land on the MP table is refused, naming "
           "both ranges", err)
    port = free_port()
    rc, out, err = run([kvmig, "run", "--kernel", collide_elf,
                        "--incoming", f"tcp:127.0.0.1:{port}"], timeout=20)
    tap.ok(rc == 1 and "overlaps the MP table" in err and
           "waiting for an incoming" not in err,
           "--incoming with a kernel this VM could not boot is refused "
           "before it listens", err)
    port = free_port()
    rc, out, err = run([kvmig, "run", "--kernel", "/nonexistent.elf",
                        "--incoming", f"tcp:127.0.0.1:{port}"], timeout=20)
    tap.ok(rc == 1 and "kernel '/nonexistent.elf'" in err,
           "--incoming with a missing kernel is refused, naming it", err)


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest, ok_elf, collide_elf = sys.argv[1:5]
    ld_kernels(tap, kvmig, ok_elf, collide_elf)
    with tempfile.TemporaryDirectory(prefix="kvmig-cli-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        for how in ("tcp", "defer", "file"):
            same_command_line(tap, vms, guest, how, tmp)
        mismatch(tap, vms, guest, {"cpus": 2}, {"cpus": 1},
                 ["the stream's guest has at least 2 vCPUs",
                  "this VM was started with --cpus 1",
                  "start the destination with the source's options"],
                 "more vCPUs in the stream")
        mismatch(tap, vms, guest, {"cpus": 1}, {"cpus": 2},
                 ["the stream's guest has 1 vCPU,",
                  "this VM was started with --cpus 2"],
                 "fewer vCPUs in the stream")
        mismatch(tap, vms, guest, {"memory": "1G"}, {"memory": "512M"},
                 ["the stream's guest has 1024 MiB of RAM (block 'pc.ram')",
                  "this VM was started with --memory 512M"],
                 "other memory size")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
