#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Issue 10, defect 4, from outside the process: one flipped byte in a
vCPU section (RIP, CR3, RSP) or in another device section is refused by a
destination with --verify-ram, which runs nothing; a live source resumes.

(a) a guest saved to a file (--verify-ram); copies with one byte flipped
    in vCPU 0's RIP, vCPU 0's CR3 and the UART's section are each loaded
    with --incoming file:COPY: the destination exits failed naming the
    section and instance, and starts no guest. The offsets come from the
    stream itself: the FULL section header and the JSON VM description
    after EOF (docs/FORMAT.md sections 2.3, 3 and 9). One more copy has a
    byte flipped in the last page record of the RAM section (section 5):
    the incremental RAM digest refuses it;
(b) a live migration through a proxy that flips a byte of vCPU 1's RSP as
    the section goes by: the destination refuses it naming 'cpu' instance
    1 and runs nothing, the source fails and its guest runs on;
(c) the same source then migrates straight to a new destination and the
    guest runs there (the check refuses only what differs).
Usage: test_vm_verify.py KVMIG GUEST_ELF"""
import json
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

PLAN = 12
VERIFY = ("--verify-ram",)
MEMORY = "256M"


# ---- the stream, from outside ----

def vmdesc(data):
    """The JSON VM description at the end of a saved stream, and where
    its text begins."""
    p = data.rfind(b'{"page_size"')
    if p < 5 or data[p - 5] != 0x06 or \
            struct.unpack(">I", data[p - 4:p])[0] != len(data) - p:
        raise ValueError("no VM description at the end of the stream")
    return json.loads(data[p:]), p


def wire_size(f):
    return f["size"] * f.get("array_len", 1)


def field_offset(fields, path):
    """Bytes from the start of a description's encoding to the field at
    path (names of nested struct fields)."""
    off = 0
    for f in fields:
        if f["name"] == path[0]:
            if len(path) == 1:
                return off
            return off + field_offset(f["struct"]["fields"], path[1:])
        off += wire_size(f)
    raise KeyError(path[0])


def full_header(idstr, instance, version=1):
    """The tail of a FULL section header after its section id."""
    name = idstr.encode()
    return bytes([len(name)]) + name + struct.pack(">II", instance, version)


def payload_start(data, idstr, instance, end):
    """Offset of the FULL section payload of idstr/instance (the last
    such header before end)."""
    tail = full_header(idstr, instance)
    p = data.rfind(tail, 0, end)
    if p < 5 or data[p - 5] != 0x04:
        raise ValueError(f"no FULL section '{idstr}' instance {instance}")
    return p + len(tail)


RAM_ZERO, RAM_MEM_SIZE, RAM_PAGE, RAM_EOS = 0x02, 0x04, 0x08, 0x10
RAM_CONTINUE, RAM_XBZRLE, RAM_FLUSH = 0x20, 0x40, 0x200


def last_page_record(data):
    """Offset of the data of the last PAGE record of the RAM section,
    walking the stream from its header (FORMAT.md 2 and 5)."""
    def be(n):
        nonlocal pos
        v = int.from_bytes(data[pos:pos + n], "big")
        pos += n
        return v

    def str8():
        nonlocal pos
        n = data[pos]
        pos += 1 + n

    pos, last = 8, None
    while True:
        t = be(1)
        if t == 0x07:
            n = be(4)
            pos += n
            continue
        if t == 0x08:
            be(2)
            n = be(2)
            pos += n
            continue
        if t == 0x01:
            be(4)
            str8()
            be(8)
        elif t in (0x02, 0x03):
            be(4)
        else:
            return last
        while True:
            v = be(8)
            flags, addr = v & 0xfff, v & ~0xfff
            kind = flags & ~RAM_CONTINUE
            if kind in (RAM_ZERO, RAM_PAGE, RAM_XBZRLE) and \
                    not flags & RAM_CONTINUE:
                str8()
            if kind == RAM_EOS:
                break
            if kind == RAM_MEM_SIZE:
                while addr:
                    str8()
                    addr -= be(8)
            elif kind == RAM_ZERO:
                pos += 1
            elif kind == RAM_PAGE:
                last = pos
                pos += 4096
            elif kind == RAM_XBZRLE:
                be(1)
                n = be(2)
                pos += n
            elif kind != RAM_FLUSH:
                raise ValueError(f"RAM record flags {flags:#x} at {pos - 8}")
        if be(1) != 0x7e:
            raise ValueError(f"no section footer at {pos - 1}")
        be(4)


def device_field(desc, idstr, instance, path):
    for d in desc["devices"]:
        if d["name"] == idstr and d["instance_id"] == instance:
            return field_offset(d["fields"], path)
    raise KeyError(idstr)


# The byte flipped in a be64 register: the low byte, so the value stays
# plausible (a RIP a few bytes off, a CR3 in another page).
def low_byte(path_off, width=8):
    return path_off + width - 1


class FlipProxy:
    """Forwards one connection to port; in the source's direction, flips
    bit 0x10 of the byte at `rel` bytes into the FULL payload of
    idstr/instance, when its header goes by."""

    def __init__(self, port, idstr, instance, rel):
        self.target = port
        self.tail = full_header(idstr, instance)
        self.rel = rel
        self.flipped = threading.Event()
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
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

    def _pipe(self, a, b, forward):
        keep = b""      # the last bytes seen, for a header split in two
        pos = 0         # stream offset of the next byte received
        target = None   # stream offset of the byte to flip
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                if forward and not self.flipped.is_set():
                    d = bytearray(d)
                    if target is None:
                        win = keep + bytes(d)
                        p = win.find(self.tail)
                        if p >= 5 and win[p - 5] == 0x04:
                            target = pos - len(keep) + p + len(self.tail) \
                                + self.rel
                        keep = win[-64:]
                    if target is not None and pos <= target < pos + len(d):
                        d[target - pos] ^= 0x10
                        self.flipped.set()
                    d = bytes(d)
                pos += len(d)
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.lsock.close()
        for s in self.socks:
            s.close()


def refused(dst, idstr, instance):
    """The destination failed naming the section and started nothing."""
    rc = dst.wait(20)
    named = f"section '{idstr}' instance {instance}" in dst.stderr and \
        "differs from what the source sent" in dst.stderr
    return rc not in (0, None) and named and \
        "no guest was started" in dst.stderr and b"*" not in dst.console


def flipped_copy(tmp, data, off, name):
    path = os.path.join(tmp, f"{name}.kvmig")
    copy = bytearray(data)
    copy[off] ^= 0x10
    with open(path, "wb") as f:
        f.write(copy)
    return path


def file_cases(tap, vms, tmp):
    src = vms.boot("save", "mem=64 rate=16", memory=MEMORY, extra=VERIFY)
    if not workload_started(src):
        tap.skip_rest("guest did not start: " + src.describe())
        return None
    path = os.path.join(tmp, "saved.kvmig")
    q = vms.qmp(src)
    q.cmd("migrate", uri=f"file:{path}")
    r = wait_migration(q)
    tap.ok(r.get("status") == "completed", "(a) saved to a file", f"{r}")
    q.cmd("quit")
    src.wait(10)
    with open(path, "rb") as f:
        data = f.read()
    desc, end = vmdesc(data)
    cpu0 = payload_start(data, "cpu", 0, end)
    rip = device_field(desc, "cpu", 0, ["regs", "rip"])
    cr3 = device_field(desc, "cpu", 0, ["sregs", "cr3"])
    lcr = device_field(desc, "serial", 0, ["lcr"])
    cases = [
        ("rip", "cpu", 0, cpu0 + low_byte(rip)),
        ("cr3", "cpu", 0, cpu0 + low_byte(cr3) - 1),
        ("uart", "serial", 0,
         payload_start(data, "serial", 0, end) + lcr),
    ]
    for name, idstr, inst, off in cases:
        copy = flipped_copy(tmp, data, off, name)
        dst = vms.incoming(f"file-{name}", f"file:{copy}", memory=MEMORY,
                           extra=VERIFY)
        tap.ok(refused(dst, idstr, inst),
               f"(a) a byte flipped in {name} ({idstr} {inst}, stream "
               f"offset {off}) is refused and nothing runs",
               dst.describe())
        os.unlink(copy)
    page = last_page_record(data)
    copy = flipped_copy(tmp, data, page + 2000, "page")
    dst = vms.incoming("file-page", f"file:{copy}", memory=MEMORY,
                       extra=VERIFY)
    rc = dst.wait(20)
    tap.ok(rc not in (0, None) and "ram-verify: RAM differs" in dst.stderr
           and "no guest was started" in dst.stderr and
           b"*" not in dst.console,
           f"(a) a byte flipped in the last RAM page record (stream "
           f"offset {page + 2000}) is refused by the RAM digest",
           dst.describe())
    # Where the offsets of the live case come from (vCPU 1's layout is
    # vCPU 0's).
    return device_field(desc, "cpu", 1, ["regs", "rsp"])


def live_cases(tap, vms, rsp):
    src = vms.boot("live", "mem=64 rate=16", memory=MEMORY, extra=VERIFY)
    if not workload_started(src):
        tap.skip_rest("guest did not start: " + src.describe())
        return
    time.sleep(0.5)
    port = free_port()
    dst = vms.incoming("live-dst", f"tcp:127.0.0.1:{port}", memory=MEMORY,
                       extra=VERIFY)
    qd = vms.qmp(dst)
    qs = vms.qmp(src)
    qd.cmd("query-status")
    proxy = FlipProxy(port, "cpu", 1, low_byte(rsp))
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    r = wait_migration(qs, timeout=30)
    print(f"# source: {r.get('error-desc', '')}")
    tap.ok(proxy.flipped.is_set() and r.get("status") == "failed",
           "(b) the migration with RSP flipped fails at the source", f"{r}")
    tap.ok(refused(dst, "cpu", 1),
           "(b) the destination names 'cpu' instance 1 and runs nothing",
           dst.describe())
    t0 = time.monotonic()
    st = qs.cmd("query-status")["status"]
    tap.ok(st == "running" and src.wait_heartbeats(200, 10, since=t0),
           "(b) the source guest runs on", f"{st}\n{src.describe()}")
    proxy.close()

    port = free_port()
    dst = vms.incoming("good-dst", f"tcp:127.0.0.1:{port}", memory=MEMORY,
                       extra=VERIFY)
    vms.qmp(dst).cmd("query-status")
    qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    r = wait_migration(qs, timeout=30)
    tap.ok(r.get("status") == "completed", "(c) a clean migration completes",
           f"{r}")
    t0 = time.monotonic()
    tap.ok(dst.wait_heartbeats(200, 15, since=t0) and
           "differs from" not in dst.stderr,
           "(c) the destination verified every section and runs the guest",
           dst.describe())
    tap.ok(not corrupt_lines(src, dst), "(c) no corruption reported",
           dst.describe())
    dst.send_console(b"q")
    tap.ok(dst.wait(15) == 0, "(c) the guest powers off cleanly",
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
        rsp = file_cases(tap, vms, tmp)
        if rsp is not None:
            live_cases(tap, vms, rsp)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
