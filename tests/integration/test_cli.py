#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The kvmig command line: help, version, and clear usage errors (exit 2)."""
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap, kvmig_path  # noqa: E402


def run(kvmig, *args):
    p = subprocess.run([kvmig, *args], capture_output=True, text=True,
                       timeout=30)
    return p.returncode, p.stdout + p.stderr


def main():
    kvmig = kvmig_path()
    cases = [
        # (args, expected rc, text that must appear, name)
        ([], 2, "Usage: kvmig", "no command: usage, exit 2"),
        (["--help"], 0, "memtest", "--help lists the commands"),
        (["version"], 0, "kvmig ", "version prints the version"),
        (["--version"], 0, "kvmig ", "--version prints the version"),
        (["version", "--help"], 0, "Usage: kvmig version",
         "version --help"),
        (["memtest", "--help"], 0, "--dirty-rate", "memtest --help"),
        (["help", "memtest"], 0, "--incoming", "help memtest"),
        (["frobnicate"], 2, "unknown command 'frobnicate'",
         "unknown command is named"),
        (["--frob"], 2, "unknown option '--frob'",
         "unknown top-level option is named"),
        (["memtest", "--to", "tcp:127.0.0.1:1", "--size", "1M", "--frob"],
         2, "unknown option '--frob'", "unknown memtest option is named"),
        (["memtest", "--size", "12Q", "--to", "file:/dev/null"], 2,
         "invalid --size '12Q'", "bad size is named"),
        (["memtest", "--size"], 2, "'--size' needs a value",
         "missing value is named"),
        (["memtest", "--size", "1M"], 2, "exactly one of",
         "neither --to nor --incoming"),
        (["memtest", "--incoming", "tcp:127.0.0.1:0", "--dirty-rate", "1"],
         2, "--incoming takes only", "source option on the destination"),
        (["memtest", "--incoming", "tcp:127.0.0.1:0", "--blocks", "2"], 2,
         "needs --size", "destination --blocks without --size"),
        (["memtest", "--incoming", "tcp:127.0.0.1:0", "--size", "1M",
          "--max-size", "2M"], 2, "takes exactly SIZE",
         "destination --size with --max-size"),
        (["memtest", "--size", "1M", "--to", "file:/x", "--pattern", "odd"],
         2, "invalid --pattern 'odd'", "bad pattern is named"),
        (["memtest", "--size", "1M", "--to", "bogus:thing"], 1, "bogus",
         "bad URI fails with exit 1 naming it"),
    ]
    tap = Tap(len(cases) * 2)
    for args, want_rc, text, name in cases:
        rc, out = run(kvmig, *args)
        diag = f"kvmig {' '.join(args)} -> rc {rc}\n{out}"
        tap.ok(rc == want_rc, f"{name} (exit {want_rc})", diag)
        hint_ok = want_rc != 2 or not args or "--help" in out
        tap.ok(text in out and hint_ok, f"{name} (message)", diag)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
