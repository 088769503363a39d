#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""memtest between two kvmig processes over loopback TCP (with a dirty rate)
and over a unix socket (several blocks): both sides report the digest."""
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Procs, Tap, kvmig_path, tempdir  # noqa: E402

TIMEOUT = 120


def migrate(tap, procs, what, listen_uri, source_args):
    dest, uri = procs.destination(listen_uri)
    if not tap.ok(uri is not None, f"{what}: destination listens",
                  dest.describe()):
        return False
    src = procs.source(uri, *source_args)
    src_rc = src.wait(TIMEOUT)
    dest_rc = dest.wait(15)
    diag = src.describe() + "\n" + dest.describe()
    tap.ok(src_rc == 0, f"{what}: source exits 0", diag)
    tap.ok(dest_rc == 0, f"{what}: destination exits 0", diag)
    ok = dest.wait_line(r"memtest: digest OK \(([0-9a-f]{32})\)", 1)
    done = src.wait_line(
        r"memtest: completed: destination verified digest ([0-9a-f]{32})", 1)
    tap.ok(ok is not None and done is not None
           and ok.group(1) == done.group(1),
           f"{what}: both sides report the same verified digest", diag)
    passes = re.findall(r"memtest: pass \d+:", src.output)
    tap.ok(len(passes) >= 1 and "pages per pass" in src.output
           and "downtime" in src.output,
           f"{what}: source prints progress per pass and a summary", diag)
    return True


def refused(tap, procs):
    """A destination that refuses the stream: the source hears about it."""
    dest, uri = procs.destination("tcp:127.0.0.1:0", "--max-size", "16M")
    if uri is None:
        tap.ok(False, "refused: destination listens", dest.describe())
        tap.skip("refused: source", "no destination")
        return
    src = procs.source(uri, "--size", "32M")
    src_rc = src.wait(TIMEOUT)
    dest_rc = dest.wait(15)
    diag = src.describe() + "\n" + dest.describe()
    tap.ok(dest_rc == 1 and "beyond its limit" in dest.output
           and "memtest: received memory released" in dest.output,
           "refused: the destination names the limit and exits 1", diag)
    tap.ok(src_rc == 1 and "memtest: migration failed:" in src.output
           and "destination failed" in src.output,
           "refused: the source reports the destination's failure", diag)


def main():
    kvmig = kvmig_path()
    tap = Tap(12)
    with tempdir() as tmp, Procs(kvmig) as procs:
        migrate(tap, procs, "tcp", "tcp:127.0.0.1:0",
                ["--size", "128M", "--dirty-rate", "32", "--timeout", "60"])
        migrate(tap, procs, "unix", f"unix:{tmp}/mig.sock",
                ["--size", "64M", "--blocks", "3", "--dirty-rate", "8",
                 "--timeout", "60"])
        refused(tap, procs)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
