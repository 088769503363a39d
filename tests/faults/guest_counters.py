# SPDX-License-Identifier: MIT
"""Did two copies of the guest run? Judged by the guest's own counters.

The project's guest (guest/workload.c) prints one byte per heartbeat
('*', every 1 ms per workload vCPU; no other output contains it) and,
per vCPU per second, a status line whose hb= is that vCPU's heartbeat
count since the workload started. A migrated guest carries its counts
on: the destination's guest goes on from the source's at the handover
(the fork point). In one history a vCPU's hb only grows and every line
the source printed precedes every line the destination printed. Two
copies ran when the consoles prove otherwise, in either of two ways:

1. overlap: for some vCPU the source printed an hb at least as large as
   the smallest one the destination printed (both counted on from the
   same point);
2. excess: the source's console has more heartbeat bytes than the guest
   had made when the destination took over. At the start p of a
   destination status line, every vCPU v has made hb_v(p) <= next_v(p)
   heartbeats (next_v(p): the hb of v's first destination line at or
   after p), and the destination printed stars(p) of them since the
   fork; so at the fork the guest had made at most
   sum_v next_v(p) - stars(p) (the least over the lines p), and every
   heartbeat byte of the source is one of them. More on the source =
   its guest ran on after the fork. Slack: one byte per vCPU for the
   heartbeat in flight at the stop (printed on the source, its OUT run
   again on the destination), and one for the UART's pending byte sent
   again by the destination.

Neither can come from one history (no clock, no arrival time, no load
involved), so the verdict never says two copies when there was one.
The other way: a source that ran on is caught once it printed a status
line past the destination's first (overlap, about a second), and
sooner by excess once its extra heartbeats exceed the bound's looseness,
which is how far apart the vCPUs' status lines fall (the workload's
vCPUs print within milliseconds of each other: a few ms of running on;
at worst a second). A destination that printed no status line (it ran
less than a second) cannot tell: the judge says "inconclusive", never
guesses."""
import re

STATUS = re.compile(rb"guest: vcpu=(\d+) t=(\d+) passes=\d+ rate=[\d.]+MiB/s "
                    rb"writes=(\d+) verified=\d+ sweeps=\d+ ticks=(\d+) "
                    rb"hb=(\d+) maxgap_us=\d+ corrupt=\d+\r?\n")
HEARTBEAT = b"*"
# how many vCPUs make heartbeats (the banner, then the workload's start)
WORKERS = re.compile(rb"workload vcpus (\d+)|workload started \((\d+) vcpus")


def status_lines(console):
    """[(position, vcpu, hb)] of every whole status line, in order."""
    return [(m.start(), int(m.group(1)), int(m.group(5)))
            for m in STATUS.finditer(console)]


def workers(*consoles):
    """The number of heartbeat-making vCPUs the guest announced, or
    None."""
    for c in consoles:
        m = WORKERS.search(c)
        if m:
            return int(m.group(1) or m.group(2))
    return None


def fork_bound(dst_console, dst, vcpus):
    """The most heartbeats the guest can have made at the fork: at the
    start p of each destination status line (before which every vCPU
    still prints one), sum_v next_v(p) - stars(p); the least of them."""
    best = None
    for i, (p, _, _) in enumerate(dst):
        nxt = {}
        for _, v, hb in dst[i:]:
            nxt.setdefault(v, hb)
        if set(nxt) != vcpus:
            break
        bound = sum(nxt.values()) - dst_console[:p].count(HEARTBEAT)
        best = bound if best is None else min(best, bound)
    return best


def two_copies(src_console, dst_console):
    """{"proven": bool, "why": text, "excess": heartbeats the source made
    past the fork (None: not measurable), "slack": the allowance}."""
    src = status_lines(src_console)
    dst = status_lines(dst_console)
    out = {"proven": False, "why": None, "excess": None, "slack": None}
    if not dst:
        out["why"] = ("inconclusive: the destination's guest printed no "
                      "status line" if dst_console.count(HEARTBEAT) else
                      "the destination's guest made no heartbeat (it "
                      "never ran)")
        return out
    first = {}
    for _, v, hb in dst:
        first.setdefault(v, hb)
    last = {}
    for _, v, hb in src:
        last[v] = max(last.get(v, 0), hb)
    for v in sorted(first):
        if v in last and last[v] >= first[v]:
            out.update(proven=True, why=(
                f"overlap: vCPU {v} counted hb={last[v]} on the source and "
                f"hb={first[v]} on the destination; one guest's count only "
                "grows, so both ran on from the handover"))
            return out
    # every vCPU that makes heartbeats must have a line on the
    # destination: the stars are anonymous, a vCPU left out of the sum
    # would make the bound too low
    n = workers(src_console, dst_console)
    vcpus = set(range(n)) if n else set(first) | set(last)
    if not n or not vcpus <= set(first):
        missing = sorted(vcpus - set(first))
        out["why"] = ("inconclusive: " + (
            f"vCPU(s) {missing} printed no status line on the destination"
            if n else "the guest's vCPU count is not on either console"))
        return out
    at_fork = fork_bound(dst_console, dst, vcpus)
    src_beats = src_console.count(HEARTBEAT)
    slack = len(vcpus) + 1
    out["excess"] = src_beats - at_fork
    out["slack"] = slack
    if src_beats - at_fork > slack:
        out.update(proven=True, why=(
            f"excess: the source's console has {src_beats} heartbeats but "
            f"the guest had made at most {at_fork} when the destination "
            f"took over: the source's guest made {src_beats - at_fork} "
            "more after the handover"))
    return out
