#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Issue 13, items 1 and 2: suspend to a mapped-ram file and resume.

(a) a guest writing memory is saved with mapped-ram (no multifd) to
    file:PATH and resumed with `kvmig run --incoming file:PATH` (the file
    says it is mapped-ram); --verify-ram on both sides, heartbeats on
    after the resume, no CORRUPT line. The file's blocks on disk are at
    most the pages its bitmap marks plus a MiB of metadata;
(b) the same with multifd (2 channels: writer and reader threads) and
    direct-io, resumed with --incoming defer + migrate-incoming;
(c) a guest paused by QMP stop is saved, resumes paused, runs on `cont`;
(d) file:PATH,offset=1M: what was in the file before the offset stays,
    and the guest resumes from the same URI;
(f) instant resume: postcopy-ram on the destination: the guest runs as
    soon as the device state is loaded, its pages come from the file on
    first touch and from a filler thread; heartbeats, no corruption; with
    --verify-ram it is refused (nothing could be checked first);
(e) refused, nothing runs (exit 1, no heartbeat, the message names what
    and where): each header field damaged (version, page_size,
    bitmap_offset, pages_offset), a byte flipped in a page (--verify-ram),
    another --memory, a destination with mapped-ram on and a file
    without, the file cut in its last bytes and in its pages.
Usage: test_vm_mapped_ram.py KVMIG GUEST_ELF"""
import os
import struct
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, have_kvm, wait_migration,  # noqa: E402
                   workload_started)

PLAN = 31
VERIFY = ("--verify-ram",)
MEMORY = "512M"
WORKLOAD = "mem=96 rate=64 pattern=hot-cold"
MAPPED = [{"capability": "mapped-ram", "state": True}]
MULTIFD = MAPPED + [{"capability": "multifd", "state": True}]


def first_block(path, offset=0):
    """Where block 1's mapped-ram header is, and its fields (FORMAT.md 13):
    walks the header, the configuration and its subsection, the RAM
    START section and the MEM_SIZE record up to the first block."""
    with open(path, "rb") as f:
        f.seek(offset)
        d = f.read(4096)
    p = 8
    assert d[p] == 0x07
    p += 5 + struct.unpack(">I", d[p + 1:p + 5])[0]
    while d[p] == 0x05:
        p += 2 + d[p + 1] + 4
        n = struct.unpack(">I", d[p:p + 4])[0]
        p += 4
        for _ in range(n):
            p += 1 + d[p]
    assert d[p] == 0x01, f"START expected at {p}"
    p += 5
    p += 1 + d[p] + 8
    assert struct.unpack(">Q", d[p:p + 8])[0] & 0xfff == 0x4
    p += 8
    name = d[p + 1:p + 1 + d[p]].decode()
    p += 1 + d[p]
    length = struct.unpack(">Q", d[p:p + 8])[0]
    p += 8
    ver, psize, boff, poff = struct.unpack(">IQQQ", d[p:p + 28])
    return {"at": offset + p, "name": name, "length": length,
            "version": ver, "page_size": psize, "bitmap_offset": boff,
            "pages_offset": poff}


def bitmap_pages(path, blk):
    """The page numbers the block's bitmap marks (host unsigned longs,
    little-endian here)."""
    size = (blk["length"] // 4096 + 63) // 64 * 8
    with open(path, "rb") as f:
        f.seek(blk["bitmap_offset"])
        raw = f.read(size)
    marked = []
    for i in range(0, size, 8):
        w = struct.unpack("<Q", raw[i:i + 8])[0]
        while w:
            b = (w & -w).bit_length() - 1
            marked.append(i * 8 + b)
            w &= w - 1
    return marked


def flip(path, at, mask=0x40):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ mask]))


def save(vms, tap, caps, params, uri, stop=False, what="saved",
         verify=True):
    src = vms.boot("src", WORKLOAD, memory=MEMORY,
                   extra=VERIFY if verify else ())
    if not workload_started(src):
        return None, src
    time.sleep(0.7)
    q = vms.qmp(src)
    q.cmd("migrate-set-capabilities", capabilities=caps)
    if params:
        q.cmd("migrate-set-parameters", **params)
    if stop:
        q.cmd("stop")
    q.cmd("migrate", uri=uri)
    r = wait_migration(q)
    tap.ok(r.get("status") == "completed" and
           q.cmd("query-status")["status"] == "postmigrate",
           f"{what}: completed, the source stays stopped",
           f"{r}\n{src.describe()}")
    q.cmd("quit")
    src.wait(10)
    return r, src


def resumed(tap, src, dst, what):
    ok = dst.wait_heartbeats(200, 20, since=0)
    tap.ok(ok and "RAM differs" not in dst.stderr,
           f"{what}: resumed, heartbeats go on", dst.describe())
    tap.ok(dst.wait_console(rb"guest: vcpu=\d+ t=\d+ .*corrupt=0", 5)
           is not None and not corrupt_lines(src, dst),
           f"{what}: no corruption", dst.describe())
    dst.send_console(b"q")
    dst.wait(15)


def refused(vms, tap, uri, needles, what, memory=MEMORY, setup=None):
    if setup:
        dst = vms.incoming("bad", "defer", memory=memory, extra=VERIFY)
        q = vms.qmp(dst)
        setup(q)
        q.cmd("migrate-incoming", uri=uri)
    else:
        dst = vms.incoming("bad", uri, memory=memory, extra=VERIFY)
    rc = dst.wait(20)
    # The process has exited, but the thread reading its stderr may not
    # have read the last lines yet (seen under load): give it a moment.
    deadline = time.monotonic() + 5
    while (time.monotonic() < deadline
           and any(n not in dst.stderr for n in needles)):
        time.sleep(0.05)
    err = dst.stderr
    missing = [n for n in needles if n not in err]
    tap.ok(rc == 1 and not missing and not dst.heartbeat_times(),
           f"refused: {what}",
           f"rc={rc} missing={missing}\n{dst.describe()}")


def main():
    tap = Tap(PLAN)
    reason = have_kvm()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="kvmig-mr-",
                                     dir="/var/tmp") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        # (a) mapped-ram alone, resumed with --incoming file:PATH
        path = os.path.join(tmp, "a.mr")
        r, src = save(vms, tap, MAPPED, None, f"file:{path}",
                      what="(a) running guest")
        if r is None:
            tap.skip_rest("guest did not start: " + src.describe())
            return tap.finish()
        blk = first_block(path)
        pages = bitmap_pages(path, blk)
        st = os.stat(path)
        print(f"# (a) {st.st_size} bytes, {st.st_blocks * 512} on disk, "
              f"{len(pages)} pages marked, block {blk}")
        tap.ok(blk["name"] == "pc.ram" and blk["version"] == 1 and
               blk["page_size"] == 4096 and
               blk["pages_offset"] % (1 << 20) == 0 and
               blk["bitmap_offset"] == blk["at"] + 28,
               "(a) the header is QEMU's layout", str(blk))
        tap.ok(0 < st.st_blocks * 512 <= len(pages) * 4096 + (1 << 20),
               "(a) on disk: at most the pages present plus 1 MiB",
               f"{st.st_blocks * 512} > {len(pages) * 4096} + 1 MiB")
        dst = vms.incoming("dst", f"file:{path}", memory=MEMORY,
                           extra=VERIFY)
        resumed(tap, src, dst, "(a)")

        # (b) multifd + direct-io, defer + migrate-incoming
        pathb = os.path.join(tmp, "b.mr")
        params = {"multifd-channels": 2, "direct-io": True}
        r, src = save(vms, tap, MULTIFD, params, f"file:{pathb}",
                      what="(b) multifd + direct-io")
        dst = vms.incoming("dst", "defer", memory=MEMORY, extra=VERIFY)
        q = vms.qmp(dst)
        q.cmd("migrate-set-capabilities", capabilities=MULTIFD)
        q.cmd("migrate-set-parameters", **params)
        q.cmd("migrate-incoming", uri=f"file:{pathb}")
        resumed(tap, src, dst, "(b)")

        # (c) a stopped guest resumes stopped
        pathc = os.path.join(tmp, "c.mr")
        r, src = save(vms, tap, MAPPED, None, f"file:{pathc}", stop=True,
                      what="(c) stopped guest")
        dst = vms.incoming("dst", f"file:{pathc}", memory=MEMORY,
                           extra=VERIFY)
        q = vms.qmp(dst)
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            status = q.cmd("query-status")["status"]
            if status != "inmigrate":
                break
            time.sleep(0.05)
        time.sleep(0.5)
        tap.ok(status == "paused" and not dst.heartbeat_times(),
               "(c) resumed paused, as it was saved", f"{status}")
        q.cmd("cont")
        resumed(tap, src, dst, "(c) after cont")

        # (d) offset=1M keeps the bytes before it
        pathd = os.path.join(tmp, "d.mr")
        prefix = b"libvirt's own header " * 1000
        with open(pathd, "wb") as f:
            f.write(prefix)
        uri = f"file:{pathd},offset=1M"
        r, src = save(vms, tap, MAPPED, None, uri, what="(d) offset=1M")
        with open(pathd, "rb") as f:
            head = f.read(len(prefix))
        blk_d = first_block(pathd, 1 << 20)
        tap.ok(head == prefix and blk_d["pages_offset"] % (1 << 20) == 0 and
               blk_d["at"] > (1 << 20),
               "(d) the bytes before the offset stay; offsets are the file's",
               str(blk_d))
        dst = vms.incoming("dst", uri, memory=MEMORY, extra=VERIFY)
        resumed(tap, src, dst, "(d)")

        # (f) instant resume
        pathf = os.path.join(tmp, "f.mr")
        r, src = save(vms, tap, MAPPED, None, f"file:{pathf}",
                      what="(f) saved for instant resume", verify=False)
        instant = MAPPED + [{"capability": "postcopy-ram", "state": True}]
        dst = vms.incoming("dst", "defer", memory=MEMORY)
        q = vms.qmp(dst)
        q.cmd("migrate-set-capabilities", capabilities=instant)
        t0 = time.monotonic()
        q.cmd("migrate-incoming", uri=f"file:{pathf}")
        dst.wait_heartbeats(1, 20, since=t0)
        first = [t for t in dst.heartbeat_times() if t >= t0]
        ms = (first[0] - t0) * 1000 if first else None
        print(f"# (f) first heartbeat {ms} ms after migrate-incoming")
        tap.ok(ms is not None and ms < 1000,
               "(f) instant resume: the guest runs at once",
               f"{ms}\n{dst.describe()}")
        resumed(tap, src, dst, "(f)")
        refused(vms, tap, f"file:{pathf}", ["--verify-ram", "postcopy-ram"],
                "instant resume with --verify-ram",
                setup=lambda q: q.cmd("migrate-set-capabilities",
                                      capabilities=instant))

        # (e) refused
        fname = f"file:{path}"
        at = blk["at"]
        for off, field, needle in (
                (at + 3, "version", "version 65"),
                (at + 10, "page_size", "page_size 20480"),
                (at + 19, "bitmap_offset", "bitmap_offset"),
                (at + 25, "pages_offset", "pages_offset")):
            flip(path, off)
            refused(vms, tap, fname, [field, needle, path, "'pc.ram'"],
                    f"header field {field} damaged")
            flip(path, off)
        page = pages[len(pages) // 2]
        data_at = blk["pages_offset"] + page * 4096 + 123
        flip(path, data_at, 0x01)
        refused(vms, tap, fname, ["RAM differs"],
                f"a byte flipped in page {page} (--verify-ram)")
        flip(path, data_at, 0x01)
        refused(vms, tap, fname, ["--memory 256M", "512 MiB"],
                "another --memory", memory="256M")
        pathn = os.path.join(tmp, "plain.kvmig")
        r, src = save(vms, tap, [], None, f"file:{pathn}",
                      what="(e) a file without mapped-ram")
        refused(vms, tap, f"file:{pathn}",
                ["mapped-ram off, this destination has it on"],
                "mapped-ram on here, the file without",
                setup=lambda q: q.cmd("migrate-set-capabilities",
                                      capabilities=MAPPED))
        size = os.path.getsize(path)
        os.truncate(path, size - 100)
        refused(vms, tap, fname, ["unexpected end of stream"],
                "the file cut 100 bytes short")
        os.truncate(path, blk["pages_offset"] + blk["length"] // 2)
        refused(vms, tap, fname, ["truncated?", path],
                "the file cut in its pages")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
