#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A migration that cannot converge (dirtying faster than the bandwidth cap)
fails cleanly after --timeout: both sides exit 1 with an error."""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Procs, Tap, kvmig_path  # noqa: E402


def main():
    kvmig = kvmig_path()
    tap = Tap(3)
    with Procs(kvmig) as procs:
        dest, uri = procs.destination("tcp:127.0.0.1:0")
        if not tap.ok(uri is not None, "destination listens",
                      dest.describe()):
            return tap.finish()
        t0 = time.monotonic()
        src = procs.source(uri, "--size", "16M", "--max-bandwidth", "8M",
                           "--dirty-rate", "64", "--timeout", "3")
        src_rc = src.wait(60)
        took = time.monotonic() - t0
        dest_rc = dest.wait(10)
        diag = src.describe() + "\n" + dest.describe()
        tap.ok(src_rc == 1 and "memtest: migration failed:" in src.output
               and 3 <= took < 40,
               f"the source gives up after the timeout ({took:.1f} s)", diag)
        tap.ok(dest_rc == 1 and "incoming migration failed" in dest.output,
               "the destination reports the failure", diag)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
