# SPDX-License-Identifier: MIT
"""Postcopy runs (issue 11): when to switch, what to measure, the report.

A postcopy profile (caps.py: `postcopy`, `postcopy-preempt`) migrates as
every other run (driver.one_run, VmPair.migrate) with one difference:
query-migrate is polled every POLL_S (10 ms) and `migrate-start-postcopy`
goes to the source as soon as a poll shows ram.dirty-sync-count >=
SWITCH_AT_SYNC (2: the first full pass over RAM has ended; both VMMs
count the sync that starts dirty tracking as 1). Both VMMs get the
command at the same point of their migration, within one poll.

Measured per run, besides the precopy runs' figures:

- switch_ms: when the command went (ms after `migrate`), and what the
  source had sent by then;
- the guest's pause at the switch: the largest heartbeat gap across the
  switch (last heartbeat on the source -> first on the destination),
  VmPair's switchover_gap_ms, the same code as the precopy downtime;
- postcopy_gap_ms: the guest's longest heartbeat gap on the destination
  from its first heartbeat there until the source reported `completed`
  (host-timestamped heartbeats, as every other gap);
- postcopy_ms: from the command to `completed`;
- the destination's own fault figures, from its query-migrate polled
  every DST_POLL_S during postcopy and once at the end: QEMU 7.2 has
  postcopy-blocktime (ms during which every vCPU waited at once) and
  postcopy-vcpu-blocktime (ms per vCPU); kvmig has those and
  postcopy-latency (mean ns from the fault to the page placed) and
  postcopy-latency-dist (faults per bucket N: [2^N, 2^(N+1)) us);
- with --fault-trace (the fault-service cell): per fault, the time from
  the fault to its page placed. QEMU 7.2 reports no per-fault figure, so
  its destination logs its trace events postcopy_ram_fault_thread_request
  (the fault thread read the fault) and postcopy_place_page(_zero) with
  gettimeofday microseconds, and FaultTrace pairs them by page. kvmig's
  come from its postcopy-latency-dist (and exact percentiles when its
  query-migrate has them).
"""
import os
import re
import statistics
import tempfile
import time

POLL_S = 0.01        # query-migrate period on the source, postcopy runs
SWITCH_AT_SYNC = 2   # dirty-sync-count at which to switch: first pass done
DST_POLL_S = 0.1     # the destination's query-migrate during postcopy
PAGE_MASK = ~0xfff

# The destination's postcopy figures (QEMU's names), kept as reported.
DST_FIELDS = ("postcopy-blocktime", "postcopy-vcpu-blocktime",
              "postcopy-latency", "postcopy-latency-dist",
              "postcopy-vcpu-latency", "x-postcopy-latency-p50",
              "x-postcopy-latency-p99", "x-postcopy-latency-max")


class Watch:
    """VmPair.migrate's on_progress for a postcopy run: the pass
    timeline, the switch, the destination's figures."""

    def __init__(self, pair, passes):
        self.pair = pair
        self.passes = passes
        self.t_switch = None
        self.t_postcopy = None
        self.t_done = None
        self.t_dst = 0.0
        self.switch = {}
        self.src_ram = {}
        self.src_compression = None
        self.dst = {}
        self.dst_status = None
        self.errors = []

    def __call__(self, info, t):
        self.passes(info, t)
        st = info.get("status") or ""
        ram = info.get("ram") or {}
        if ram:
            self.src_ram = ram
            self.src_compression = info.get("compression")
        now = time.monotonic()
        if self.t_switch is None and st == "active" and \
                (ram.get("dirty-sync-count") or 0) >= SWITCH_AT_SYNC:
            self.pair.qsrc.cmd("migrate-start-postcopy")
            self.t_switch = time.monotonic()
            self.switch = {
                "switch_ms": round(t * 1000.0, 1),
                "switch_passes": ram.get("dirty-sync-count"),
                "switch_transferred": ram.get("transferred"),
                "switch_remaining": ram.get("remaining"),
                "switch_ram": dict(ram),
                "switch_compression": info.get("compression")}
        if st.startswith("postcopy") and self.t_postcopy is None:
            self.t_postcopy = now
        if st == "completed":
            self.t_done = now
            self.poll_destination()
        elif self.t_switch is not None and now - self.t_dst >= DST_POLL_S:
            self.poll_destination()

    def poll_destination(self):
        self.t_dst = time.monotonic()
        try:
            info = self.pair.qdst.cmd("query-migrate")
        except Exception as e:  # noqa: BLE001  (kept: the run goes on)
            self.errors.append(f"destination query-migrate: {e}")
            return
        self.dst_status = info.get("status", self.dst_status)
        for k in DST_FIELDS:
            if k in info:
                self.dst[k] = info[k]

    def result(self, r):
        out = dict(self.switch)
        out["postcopy"] = self.t_postcopy is not None
        out["postcopy_requests"] = self.src_ram.get("postcopy-requests")
        out["src_ram"] = self.src_ram
        out["src_compression"] = self.src_compression
        if self.t_switch is not None and self.t_done is not None:
            out["postcopy_ms"] = (self.t_done - self.t_switch) * 1000.0
        if self.t_done is not None:
            dst_hb = [t for t in self.pair.dst.heartbeat_times()
                      if t <= self.t_done]
            out["postcopy_gap_ms"] = max(
                (b - a for a, b in zip(dst_hb, dst_hb[1:])),
                default=None)
            if out["postcopy_gap_ms"] is not None:
                out["postcopy_gap_ms"] *= 1000.0
            out["postcopy_heartbeats"] = len(dst_hb)
        out["dst_figures"] = self.dst
        out["dst_status"] = self.dst_status
        if self.errors:
            out["watch_errors"] = self.errors[:3]
        return out


class FaultTrace:
    """Per-fault service times on the destination. For a VMM that only
    has trace events (QEMU 7.2), a log file they go to; for one that
    reports its own (kvmig), nothing here."""

    def __init__(self, vmm):
        self.vmm = vmm
        fd, self.path = tempfile.mkstemp(prefix="kvcmp-trace.")
        os.close(fd)
        self.args = vmm.fault_trace_argv(self.path)

    def argv(self):
        return self.args or []

    def result(self):
        if not self.args:
            return {}
        try:
            with open(self.path, errors="replace") as f:
                lines = f.readlines()
        except OSError as e:
            return {"trace_error": str(e)}
        lat = fault_latencies_us(lines)
        blocktime = sum(1 for x in lines if ":mark_postcopy_blocktime_begin"
                        in x)
        # The faulting threads (0: the kernel did not say; QEMU's
        # blocktime needs them to be its vCPU threads).
        pids = sorted({int(m.group(1)) for m in map(PID_RX.search, lines)
                       if m})
        return {"trace_faults": len(lat), "trace_blocktime_faults": blocktime,
                "trace_fault_threads": pids[:8],
                **percentiles(lat, "trace_")}

    def close(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


TRACE_RX = re.compile(r"^\d+@(\d+)\.(\d+):(postcopy_\w+) (.*)$")
HVA_RX = re.compile(r"HVA=0x([0-9a-f]+)")
HOST_RX = re.compile(r"host=(?:0x)?([0-9a-f]+)")
PID_RX = re.compile(r"HVA=0x[0-9a-f]+ .* pid=(\d+)")


def fault_latencies_us(lines):
    """QEMU trace lines -> [us from a fault read to its page placed], one
    per fault event (several vCPUs on one page: one each)."""
    waiting = {}
    out = []
    for line in lines:
        m = TRACE_RX.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 1e6 + int(m.group(2))
        ev, rest = m.group(3), m.group(4)
        if ev == "postcopy_ram_fault_thread_request":
            a = HVA_RX.search(rest)
            if a:
                waiting.setdefault(int(a.group(1), 16) & PAGE_MASK,
                                   []).append(t)
        elif ev.startswith("postcopy_place_page"):
            a = HOST_RX.search(rest)
            if a:
                for t0 in waiting.pop(int(a.group(1), 16) & PAGE_MASK, ()):
                    out.append(t - t0)
    return out


def percentiles(values, prefix=""):
    if not values:
        return {}
    v = sorted(values)

    def pct(p):
        return v[min(len(v) - 1, int(p / 100.0 * len(v)))]
    return {f"{prefix}p50_us": pct(50), f"{prefix}p99_us": pct(99),
            f"{prefix}max_us": v[-1],
            f"{prefix}mean_us": statistics.fmean(v),
            f"{prefix}dist": pow2_dist(v)}


def pow2_dist(values_us):
    """QEMU 10.1's postcopy-latency-dist buckets: N counts [2^N, 2^(N+1))
    us (N = 0 also takes anything below 1 us)."""
    dist = []
    for x in values_us:
        n = max(0, int(x).bit_length() - 1)
        while len(dist) <= n:
            dist.append(0)
        dist[n] += 1
    return dist


def dist_percentile(dist, p):
    """The bucket [2^N, 2^(N+1)) us holding percentile P of a
    postcopy-latency-dist, as (lo, hi), or None."""
    total = sum(dist or ())
    if not total:
        return None
    need = p / 100.0 * total
    seen = 0
    for n, c in enumerate(dist):
        seen += c
        if seen >= need and c:
            return (0 if n == 0 else 1 << n, 1 << (n + 1))
    return None


PASS_RX = re.compile(
    r"pass (\d+) ended: ([0-9.]+) ms, (\d+) pages, ([0-9.]+) MiB/s; "
    r"sync [0-9.]+ ms, (\d+) pages dirty")


def pass_log(vm):
    """kvmig's pass lines (KVMIG_LOG=debug on the source): [pass, ms,
    pages sent, MiB/s, pages left dirty], the samples postcopy_auto's
    tests are made of. Empty for other VMMs or without the log."""
    rows = [[int(m.group(1)), float(m.group(2)), int(m.group(3)),
             float(m.group(4)), int(m.group(5))]
            for m in PASS_RX.finditer(vm.stderr)]
    return {"pass_log": rows} if rows else {}
