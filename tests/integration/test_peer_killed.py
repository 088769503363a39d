#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The peer killed mid-stream (SIGKILL) on either side: the other side
reports a clear error within 5 s, exits 1 and does not hang."""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import SIGKILL, Procs, Tap, kvmig_path  # noqa: E402

SLOW = ["--size", "128M", "--max-bandwidth", "8M", "--dirty-rate", "4"]


def kill_destination(tap, procs):
    dest, uri = procs.destination("tcp:127.0.0.1:0")
    if uri is None:
        tap.ok(False, "destination killed: it listened", dest.describe())
        return
    src = procs.source(uri, *SLOW)
    started = dest.wait_line(r"memtest: incoming migration from", 30)
    time.sleep(1.0)
    dest.signal(SIGKILL)
    rc = src.wait(5)
    tap.ok(started is not None and rc == 1
           and "memtest: migration failed:" in src.output,
           "destination killed: the source fails with an error within 5 s",
           src.describe())


def kill_source(tap, procs):
    dest, uri = procs.destination("tcp:127.0.0.1:0")
    if uri is None:
        tap.ok(False, "source killed: the destination listened",
               dest.describe())
        return
    src = procs.source(uri, *SLOW)
    started = dest.wait_line(r"memtest: incoming migration from", 30)
    time.sleep(1.0)
    src.signal(SIGKILL)
    rc = dest.wait(5)
    tap.ok(started is not None and rc == 1
           and "incoming migration failed:" in dest.output
           and "memtest: received memory released" in dest.output,
           "source killed: the destination fails with an error within 5 s",
           dest.describe())


def main():
    kvmig = kvmig_path()
    tap = Tap(2)
    with Procs(kvmig) as procs:
        kill_destination(tap, procs)
        kill_source(tap, procs)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
