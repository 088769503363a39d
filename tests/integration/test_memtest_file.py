#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""memtest through a file: save, load and verify; a copy with one byte of
page data flipped and truncated copies are rejected with a clear error."""
import os
import re
import shutil
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import (Procs, Tap, digest_of, kvmig_path,  # noqa: E402
                           tempdir)

TIMEOUT = 120
PAGE_FLAG = 0x08


def first_page_data_offset(data):
    """File offset of the data of the first PAGE record of block memtest.0.
    The idstr appears first in the MEM_SIZE preamble (followed by the
    block's length), then in the first record, after its be64 addr|flags."""
    tag = b"\x09memtest.0"
    first = data.find(tag)
    second = data.find(tag, first + 1) if first >= 0 else -1
    if second < 8:
        return None
    (addr_flags,) = struct.unpack(">Q", data[second - 8:second])
    if addr_flags & 0xfff != PAGE_FLAG:
        return None
    return second + len(tag)


def load(procs, path):
    dest = procs.start("destination", "memtest", "--incoming", f"file:{path}")
    rc = dest.wait(TIMEOUT)
    return dest, rc


def main():
    kvmig = kvmig_path()
    tap = Tap(10)
    with tempdir() as tmp, Procs(kvmig) as procs:
        path = os.path.join(tmp, "memtest.mig")
        src = procs.source(f"file:{path}", "--size", "64M", "--pattern",
                           "random", "--print-digest", "--dirty-rate", "16",
                           "--compress", "off")  # PAGE records to flip
        rc = src.wait(TIMEOUT)
        tap.ok(rc == 0 and "memtest: saved" in src.output,
               "save to file: source exits 0 and says saved", src.describe())
        size = os.path.getsize(path) if os.path.exists(path) else 0
        tap.ok(size > 64 << 20, f"the file holds the region ({size} bytes)",
               src.describe())
        saved = re.search(r"memtest: saved .* digest ([0-9a-f]{32})",
                          src.output)

        dest, rc = load(procs, path)
        ok = re.search(r"memtest: digest OK \(([0-9a-f]{32})\), 64 MiB",
                       dest.output)
        tap.ok(rc == 0 and ok is not None,
               "load from file: digest OK, exit 0", dest.describe())
        tap.ok(ok is not None and saved is not None
               and ok.group(1) == saved.group(1),
               "the loaded digest is the one the source saved",
               src.describe() + "\n" + dest.describe())
        tap.ok(len(digest_of(src)) == 1,
               "--print-digest prints the region's digest at start",
               src.describe())

        data = open(path, "rb").read() if size else b""
        off = first_page_data_offset(data)
        bad = os.path.join(tmp, "flipped.mig")
        if off is None:
            tap.ok(False, "found a PAGE record to corrupt",
                   data[:256].hex())
        else:
            corrupt = bytearray(data)
            corrupt[off + 100] ^= 0x40
            open(bad, "wb").write(corrupt)
            dest, rc = load(procs, bad)
            tap.ok(rc == 1 and "digest mismatch: source" in dest.output
                   and "digest OK" not in dest.output,
                   "a flipped byte in page data: digest mismatch, exit 1",
                   dest.describe())
        del data

        cuts = [("inside the header", 6), ("inside the RAM setup", 40),
                ("in the middle", size // 2), ("one byte short", size - 1)]
        for what, cut in cuts:
            short = os.path.join(tmp, "short.mig")
            shutil.copyfile(path, short)
            with open(short, "r+b") as f:
                f.truncate(max(cut, 0))
            dest, rc = load(procs, short)
            tap.ok(rc == 1 and "incoming migration failed" in dest.output
                   and "digest OK" not in dest.output,
                   f"truncated {what} (at {cut}): rejected, exit 1",
                   dest.describe())
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
