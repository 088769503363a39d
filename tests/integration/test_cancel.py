#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Cancel during iterate: SIGINT / SIGTERM on the source. The source says
cancelled and its memory is untouched; the destination reports the failure
and exits non-zero within 5 s."""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import (SIGINT, SIGTERM, Procs, Tap,  # noqa: E402
                           digest_of, kvmig_path, tempdir)


def cancel(tap, procs, what, listen_uri, sig):
    dest, uri = procs.destination(listen_uri)
    if not tap.ok(uri is not None, f"{what}: destination listens",
                  dest.describe()):
        return
    # 128 MiB at 8 MiB/s: the first pass alone takes about 10 s.
    src = procs.source(uri, "--size", "128M", "--max-bandwidth", "8M",
                       "--print-digest")
    active = src.wait_line(r"memtest: status active", 30)
    time.sleep(1.0)
    src.signal(sig)
    t0 = time.monotonic()
    src_rc = src.wait(15)
    dest_rc = dest.wait(max(0.0, 5.0 - (time.monotonic() - t0)))
    diag = src.describe() + "\n" + dest.describe()
    tap.ok(active is not None and src_rc is not None and src_rc != 0
           and "memtest: cancelled" in src.output,
           f"{what}: the source says cancelled and exits non-zero", diag)
    digests = digest_of(src)
    tap.ok(len(digests) == 2 and digests[0] == digests[1],
           f"{what}: the source's memory is unchanged", diag)
    tap.ok(dest_rc is not None and dest_rc != 0
           and "incoming migration failed" in dest.output
           and "memtest: received memory released" in dest.output,
           f"{what}: the destination reports failure within 5 s", diag)


def main():
    kvmig = kvmig_path()
    tap = Tap(9)
    with tempdir() as tmp, Procs(kvmig) as procs:
        cancel(tap, procs, "SIGINT over tcp", "tcp:127.0.0.1:0", SIGINT)
        cancel(tap, procs, "SIGTERM over unix", f"unix:{tmp}/c.sock",
               SIGTERM)
        # A destination interrupted while it waits for a source.
        dest, uri = procs.destination("tcp:127.0.0.1:0")
        dest.signal(SIGINT)
        rc = dest.wait(5)
        tap.ok(uri is not None and rc == 1,
               "SIGINT on a waiting destination: exit 1 within 5 s",
               dest.describe())
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
