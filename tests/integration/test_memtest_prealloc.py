#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A pre-allocated destination (memtest --incoming --size): the round trip
works and reports the pre-allocation and the digest time; a source whose
region does not match is refused, with a clear message on both sides; the
--json summaries are single JSON objects with every number."""
import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Procs, Tap, kvmig_path  # noqa: E402

TIMEOUT = 120
SOURCE_KEYS = {"total_ms", "downtime_ms", "setup_ms", "digest_ms",
               "transferred", "zero_pages", "normal_pages", "passes",
               "pages_per_pass", "bandwidth"}
DEST_KEYS = {"load_ms", "digest_ms", "digest_ok", "transferred",
             "zero_pages", "normal_pages", "prealloc_ms"}


def json_line(proc):
    """The one line of the output that is a JSON object, parsed."""
    objs = [json.loads(line) for line in proc.output.splitlines()
            if line.startswith("{")]
    return objs[0] if len(objs) == 1 else None


def round_trip(tap, procs):
    dest, uri = procs.destination("tcp:127.0.0.1:0", "--size", "96M",
                                  "--blocks", "3", "--json")
    if not tap.ok(uri is not None, "prealloc: destination listens",
                  dest.describe()):
        return
    tap.ok("memtest: destination: pre-allocated 96 MiB in 3 block(s) in"
           in dest.output, "prealloc: destination says it pre-allocated",
           dest.describe())
    src = procs.source(uri, "--size", "96M", "--blocks", "3",
                       "--dirty-rate", "8", "--timeout", "60", "--json")
    src_rc = src.wait(TIMEOUT)
    dest_rc = dest.wait(15)
    diag = src.describe() + "\n" + dest.describe()
    tap.ok(src_rc == 0 and dest_rc == 0, "prealloc: both sides exit 0", diag)
    s, d = json_line(src), json_line(dest)
    tap.ok(s is not None and SOURCE_KEYS <= s.keys()
           and s["status"] == "completed" and s["size"] == 96 << 20
           and s["digest_ms"] >= 0 and s["digest_ms"] <= s["downtime_ms"]
           and s["normal_pages"] > 0,
           "prealloc: source --json has every summary number", diag)
    tap.ok(d is not None and DEST_KEYS <= d.keys() and d["digest_ok"]
           and d["preallocated"] and d["size"] == 96 << 20
           and d["prealloc_ms"] > 0 and s is not None
           and d["digest"] == s["digest"]
           and d["normal_pages"] == s["normal_pages"]
           and d["transferred"] == s["transferred"],
           "prealloc: destination --json agrees with the source", diag)


def mismatch(tap, procs, what, source_args, expect):
    dest, uri = procs.destination("tcp:127.0.0.1:0", "--size", "64M")
    if uri is None:
        tap.ok(False, f"{what}: destination listens", dest.describe())
        tap.skip(f"{what}: source", "no destination")
        return
    src = procs.source(uri, *source_args)
    src_rc = src.wait(TIMEOUT)
    dest_rc = dest.wait(15)
    diag = src.describe() + "\n" + dest.describe()
    tap.ok(dest_rc == 1 and expect in dest.output
           and "pre-allocated with --size 67108864 (64 MiB) --blocks 1"
           in dest.output
           and "the source must migrate the same --size and --blocks"
           in dest.output
           and "memtest: received memory released" in dest.output,
           f"{what}: the destination names both sizes and exits 1", diag)
    tap.ok(src_rc == 1 and "memtest: migration failed:" in src.output
           and "destination failed to load" in src.output,
           f"{what}: the source reports the destination's refusal", diag)


def main():
    kvmig = kvmig_path()
    tap = Tap(9)
    with Procs(kvmig) as procs:
        round_trip(tap, procs)
        mismatch(tap, procs, "smaller source", ["--size", "32M"],
                 "block 'memtest.0' has length 0x2000000 in the stream "
                 "but 0x4000000 here")
        mismatch(tap, procs, "more blocks", ["--size", "64M", "--blocks",
                                             "2"],
                 "block 'memtest.0' has length 0x2000000 in the stream "
                 "but 0x4000000 here")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
