# SPDX-License-Identifier: MIT
"""Helpers for kvmig's integration tests: TAP output and kvmig processes.

Standard library only. Every test file does:

    tap = Tap(plan)
    with Procs() as procs:
        ...
    sys.exit(tap.finish())
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time


class Tap:
    """TAP producer: "1..N", "ok N - name", "not ok N - name"."""

    def __init__(self, plan):
        self.plan = plan
        self.n = 0
        self.failed = 0
        print(f"1..{plan}", flush=True)

    def ok(self, cond, name, diag=None):
        self.n += 1
        if cond:
            print(f"ok {self.n} - {name}", flush=True)
        else:
            self.failed += 1
            print(f"not ok {self.n} - {name}", flush=True)
            if diag:
                for line in str(diag).rstrip().splitlines():
                    print(f"# {line}", flush=True)
        return cond

    def skip(self, name, reason):
        self.n += 1
        print(f"ok {self.n} - {name} # SKIP {reason}", flush=True)

    def skip_rest(self, reason):
        while self.n < self.plan:
            self.skip("not run", reason)

    def finish(self):
        if self.n < self.plan:
            self.skip_rest("an earlier step failed")
        return 1 if self.failed else 0


class Proc:
    """A kvmig process whose merged stdout/stderr is read by a thread, so a
    test can wait for a line without blocking on a full pipe."""

    def __init__(self, argv, label):
        self.label = label
        self.argv = argv
        self.lines = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.exit_time = None

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.exit_time = time.monotonic()
            self.cond.notify_all()

    @property
    def output(self):
        with self.cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern, timeout):
        """The first match of regex pattern in a line, or None on timeout
        or when the process ended without printing it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.exit_time is not None:
                    return None
                self.cond.wait(left)

    def wait(self, timeout):
        """Exit code, or None if still running after timeout seconds."""
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(timeout=5)
        return rc

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def describe(self):
        return (f"[{self.label}] {' '.join(self.argv)} -> "
                f"rc {self.p.poll()}\n{self.output}")


class Procs:
    """Context manager that kills every process it started on exit."""

    def __init__(self, kvmig):
        self.kvmig = kvmig
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        return False

    def start(self, label, *args):
        p = Proc([self.kvmig, *args], label)
        self.procs.append(p)
        return p

    def destination(self, uri, *extra):
        """Start `memtest --incoming uri`; returns (proc, bound uri) once it
        listens, or (proc, None) if it did not."""
        p = self.start("destination", "memtest", "--incoming", uri, *extra)
        m = p.wait_line(r"memtest: listening on (\S+)", 15)
        return p, (m.group(1) if m else None)

    def source(self, uri, *args):
        return self.start("source", "memtest", "--to", uri, *args)


def kvmig_path():
    if len(sys.argv) < 2:
        print("1..0 # SKIP usage: test.py PATH-TO-KVMIG")
        sys.exit(0)
    return os.path.abspath(sys.argv[1])


def tempdir():
    return tempfile.TemporaryDirectory(prefix="kvmig-test-")


def digest_of(proc, what="source digest"):
    """Every digest the process printed for `what`, in order."""
    return re.findall(rf"memtest: {what} ([0-9a-f]{{32}})", proc.output)


SIGINT = signal.SIGINT
SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
