#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The fault suite's judge of "two copies ran" (guest_counters.py) on
synthetic consoles: a simulated guest with the workload's output (a '*'
per heartbeat per vCPU every 1 ms, a status line per vCPU per second with
its hb count) forked at a handover. One history split at any byte (in a
status line too, with the heartbeat in flight printed twice) is never
called two copies; a source that ran on after the fork, for 20 ms, 300 ms
or 2.5 s, is (20 ms when the vCPUs' status lines fall close together,
as the workload's do). The status line's format is read from
guest/workload.c, so a change there that the judge no longer parses
fails here. Usage: test_guest_counters.py"""
import copy
import os
import re
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from kvmig_testlib import Tap  # noqa: E402
import guest_counters  # noqa: E402

WORKLOAD_C = os.path.join(HERE, "..", "..", "guest", "workload.c")


def status_format():
    """The status line's printf format, from guest/workload.c."""
    text = open(WORKLOAD_C).read()
    body = text[text.index("static void status("):]
    body = body[:body.index(";", body.index("gprintf("))]
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))


class Guest:
    """The workload's console output, 1 ms steps; vCPU v's status lines
    fall `offset` ms after vCPU v-1's (the real guest's within a few)."""

    def __init__(self, fmt, vcpus=2, offset=3):
        self.fmt = fmt
        self.ms = 0
        self.hb = [0] * vcpus
        self.writes = [0] * vcpus
        self.next_status = [1000 + offset * v for v in range(vcpus)]

    def line(self, v):
        vals = iter([v, self.ms // 1000, 3, 16, 0, self.writes[v], 9, 1,
                     self.ms, self.hb[v], 12, 0])
        return re.sub(r"%l?u", lambda m: str(next(vals)),
                      self.fmt).encode() + b"\n"

    def run(self, ms):
        out = bytearray()
        if not self.ms:
            out += (f"guest: workload started ({len(self.hb)} vcpus, 9 ms "
                    "after entry)\n").encode()
        for _ in range(ms):
            self.ms += 1
            for v in range(len(self.hb)):
                out += b"*"
                self.hb[v] += 1
                self.writes[v] += 4
                if self.ms >= self.next_status[v]:
                    out += self.line(v)
                    self.next_status[v] += 1000
        return bytes(out)


def forked(fmt, before_ms, src_on_ms, dst_ms, offset=3):
    """The source runs before_ms, then on for src_on_ms (0: it stopped at
    the fork); the destination runs dst_ms from the fork."""
    g = Guest(fmt, offset=offset)
    src = g.run(before_ms)
    twin = copy.deepcopy(g)
    src += g.run(src_on_ms)
    return src, twin.run(dst_ms)


def judge(src, dst):
    return guest_counters.two_copies(src, dst)


def main():
    tap = Tap(15)
    fmt = status_format()
    sample = Guest(fmt).run(1000)
    lines = guest_counters.status_lines(sample)
    tap.ok(lines == [(sample.index(b"guest: vcpu"), 0, 1000)],
           "the judge parses the status line guest/workload.c prints",
           f"{fmt!r} -> {lines}")

    for offset in (3, 400):
        one = Guest(fmt, offset=offset).run(9000)
        starts = [m.start() for m in re.finditer(rb"guest:", one)][8:14]
        splits = sorted({k for s in starts for k in range(s - 3, s + 200)} |
                        set(range(starts[0] - 3000, starts[0], 7)))
        wrong = [(k, r) for k in splits
                 for r in [judge(one[:k], one[k:])]
                 if r["proven"] or r["excess"] is None or r["excess"] > 0]
        tap.ok(not wrong, f"one history (status lines {offset} ms apart) "
               f"split at {len(splits)} points, in lines and between "
               "heartbeats: never two copies, never a heartbeat too many",
               f"at {wrong[:3]}")

    src, dst = forked(fmt, 5300, 0, 4000)
    r = judge(src + b"**", b"*" + dst)
    tap.ok(not r["proven"] and r["slack"] == 3,
           "the heartbeats in flight at the stop and the UART's pending "
           "byte, printed on both sides, are within the slack", f"{r}")

    src, dst = forked(fmt, 5300, 2500, 4000, offset=400)
    r = judge(src, dst)
    tap.ok(r["proven"] and r["why"].startswith("overlap"),
           "the source ran on 2.5 s: two copies (overlapping hb)", f"{r}")

    src, dst = forked(fmt, 5500, 300, 4000, offset=400)
    r = judge(src, dst)
    tap.ok(r["proven"] and r["why"].startswith("excess"),
           "the source ran on 300 ms, status lines 400 ms apart: two "
           "copies, by heartbeats too many", f"{r}")

    src, dst = forked(fmt, 5300, 20, 4000)
    r = judge(src, dst)
    tap.ok(r["proven"] and r["why"].startswith("excess"),
           "the source ran on 20 ms, status lines 3 ms apart: two copies",
           f"{r}")

    src, dst = forked(fmt, 5999, 20, 4000)
    r = judge(src, dst)
    tap.ok(r["proven"],
           "the same, forked between the two vCPUs' status lines", f"{r}")

    src, dst = forked(fmt, 5300, 2500, 4000)
    r = judge(src, b"")
    tap.ok(not r["proven"] and "never ran" in r["why"],
           "the destination never ran: one copy, whatever the source did",
           f"{r}")

    src, dst = forked(fmt, 5300, 0, 300)
    r = judge(src + b"*" * 400, dst)
    tap.ok(not r["proven"] and r["why"].startswith("inconclusive"),
           "the destination ran too briefly for a status line: "
           "inconclusive, never a guess", f"{r}")

    # found by the whole suite: a destination where one vCPU has not
    # printed its first line yet (the stars are anonymous)
    src, dst = forked(fmt, 300, 0, 1000, offset=400)
    r = judge(src, dst)
    tap.ok(not r["proven"] and "vCPU(s) [1]" in r["why"],
           "a vCPU with no status line on the destination: inconclusive, "
           "not a bound too low", f"{r}")
    r = judge(src.replace(b"workload started", b"workload begun"), dst)
    tap.ok(not r["proven"] and "vCPU count" in r["why"],
           "the guest's vCPU count unknown: inconclusive", f"{r}")

    src, dst = forked(fmt, 5300, 2500, 4000)
    noisy = src.replace(b"guest: vcpu=1", b"guest: vcpu=1 garbled", 1)
    r = judge(noisy, dst)
    tap.ok(r["proven"], "a damaged line does not hide two copies", f"{r}")

    # the judge reads bytes, not arrival times: the handover that the
    # old measure called two copies at load ~20 (d8-port-scan) is one
    # history whatever the harness's reader threads did
    src, dst = forked(fmt, 5300, 0, 3000)
    r = judge(src, dst)
    tap.ok(not r["proven"] and r["excess"] <= 0,
           "a plain handover: one copy", f"{r}")

    # a CORRUPT line or other text between the heartbeats changes nothing
    src, dst = forked(fmt, 5300, 0, 3000)
    r = judge(src + b"guest: stopping: 'q' on the console\n",
              b"kvmig: note\n" + dst)
    tap.ok(not r["proven"], "other console text changes nothing", f"{r}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
