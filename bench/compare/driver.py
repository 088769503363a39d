# SPDX-License-Identifier: MIT
"""One migration of the guest under one VMM, driven through QMP.

The pair (source booting the guest, destination waiting for it) is
scripts/demo_vm.py's VmPair with only the process start replaced: its
migrate() (migrate, poll query-migrate, cancel after the timeout) and its
measurements (query-migrate fields; guest-observed downtime = largest gap
between host-timestamped heartbeats across both consoles; the split of
that gap) are the very code bench/vm_bench.py uses, so both VMMs are
measured identically.

Source and destination start at the same time (QEMU's emulated firmware
makes its boot the slow part); the destination can run in a network
namespace (`ip netns exec NS ...`, the pid is the VMM's own since `ip`
execs it).
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import caps  # noqa: E402
import demo_vm  # noqa: E402
import postcopy  # noqa: E402
from demo_vm import DemoError, VmPair  # noqa: E402
import vmlib  # noqa: E402  (tests/integration, put on the path by demo_vm)

WARMUP_S = 2.2       # as bench/vm_bench.py: the workload settles at its rate
BOOT_TIMEOUT_S = 90  # QEMU's firmware runs emulated here
BASELINE_S = 2.0     # stall baseline: this much of the warm-up


class ComparePair(VmPair):
    """A VmPair whose processes come from a vmms.Vmm."""

    def __init__(self, build, vmm, memory, cpus, append, dest_host,
                 dest_port, netns=None, configure_dest=None,
                 dest_extra=()):
        super().__init__(build, memory, cpus, append)
        self.dest_extra = list(dest_extra)
        self.vmm = vmm
        self.dest_host = dest_host
        self.dest_port = dest_port
        self.netns = netns
        # configure_dest(qmp): the destination starts with `incoming
        # defer`, is configured, then told migrate-incoming (multifd).
        self.configure_dest = configure_dest

    def start_both(self):
        """Start the source (booting) and the destination (listening)
        together; returns once both are up, with the source's
        boot-to-workload time in s."""
        spath = os.path.join(self.tmp, "src.qmp")
        dpath = os.path.join(self.tmp, "dst.qmp")
        self.uri = f"tcp:{self.dest_host}:{self.dest_port}"
        self.t_start = time.monotonic()
        self.src = vmlib.Vm(self.vmm.source_argv(self.memory, self.cpus,
                                                 self.append, spath),
                            f"{self.vmm.name} source")
        incoming = "defer" if self.configure_dest else self.uri
        dargv = self.vmm.dest_argv(self.memory, self.cpus, incoming, dpath) \
            + self.dest_extra
        if self.netns:
            dargv = ["ip", "netns", "exec", self.netns] + dargv
        self.dst = vmlib.Vm(dargv, f"{self.vmm.name} destination")
        self.qdst = self._connect(self.dst, dpath)
        if self.configure_dest:
            self.configure_dest(self.qdst)
            self.qdst.cmd("migrate-incoming", uri=self.uri)
        self._wait_listening()
        if not self.src.wait_console(r"workload started", BOOT_TIMEOUT_S):
            raise DemoError(f"the {self.vmm.name} source guest did not start "
                            f"its workload within {BOOT_TIMEOUT_S} s\n"
                            + self.src.describe())
        self.boot_s = self._console_time(self.src, b"workload started") \
            - self.t_start
        self.qsrc = self._connect(self.src, spath)
        return self.boot_s

    def _connect(self, vm, path, timeout=30):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if vm.p.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"{vm.label}: no QMP socket at {path}\n"
                                + vm.describe())
            time.sleep(0.02)
        return vmlib.Qmp(path, timeout=timeout)

    def _wait_listening(self, timeout=30):
        """Both VMMs set up the incoming listener before their monitor
        answers; check that the destination says it is waiting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.qdst.cmd("query-status")
            if st.get("status") == "inmigrate":
                return
            if self.dst.p.poll() is not None:
                break
            time.sleep(0.05)
        raise DemoError(f"{self.dst.label} is not waiting for the "
                        f"migration\n" + self.dst.describe())


class PassTimeline:
    """When each pass ended, as seen by polling query-migrate (every
    50 ms, the same for both VMMs): ram.dirty-sync-count and
    ram.transferred at each change of the count."""

    def __init__(self):
        self.marks = []
        self.last = None
        self.last_ram = {}
        self.max_throttle = None
        self.xbzrle = None

    def __call__(self, info, t):
        ram = info.get("ram") or {}
        if ram:
            self.last_ram = ram
        # auto-converge and XBZRLE (issue 5): present only while the
        # capability is on (QEMU drops the throttle once it ends).
        thr = info.get("cpu-throttle-percentage")
        if thr is not None and (self.max_throttle is None or
                                thr > self.max_throttle):
            self.max_throttle = thr
        if info.get("xbzrle-cache"):
            self.xbzrle = info["xbzrle-cache"]
        n = ram.get("dirty-sync-count")
        if n is not None and n != self.last:
            self.marks.append((round(t * 1000.0, 1), n,
                               ram.get("transferred")))
            self.last = n

    def result(self):
        """pass_marks: [(ms since migrate, count, bytes)]; first_pass_ms:
        from migrate to the count reaching 2 (both VMMs count the sync
        that starts tracking as 1, so 2 ends the first full pass)."""
        first = next((t for t, n, _ in self.marks if n >= 2), None)
        out = {"pass_marks": self.marks, "first_pass_ms": first}
        if self.max_throttle is not None:
            out["max_throttle"] = self.max_throttle
        if self.xbzrle is not None:
            out["xbzrle_cache"] = self.xbzrle
        return out


def guest_append(rate, workload=None):
    """The guest's command line: `mem=max(64,rate) rate=RATE
    pattern=random`, with WORKLOAD ({word: value}) replacing or adding
    words."""
    words = {"mem": max(64, rate), "rate": rate, "pattern": "random"}
    words.update(workload or {})
    return " ".join(f"{k}={v}" for k, v in words.items())


def one_run(build, vmm, size, rate, params, timeout, dest_host, dest_port,
            netns=None, profile=None, workload=None, fault_trace=False):
    """Boot, warm up, migrate once; a dict of measurements (see
    VmPair._result), plus boot_ms, guest_rate, corrupt, and error (a
    string) when the run itself failed. PROFILE (caps.Profile): its
    capabilities and parameters (PARAMS win) on the source, and on the
    destination when it needs them; a postcopy profile switches after the
    first pass (postcopy.py). WORKLOAD: guest_append's words.
    FAULT_TRACE: the destination logs every postcopy fault (QEMU: trace
    events) for the fault-service percentiles."""
    append = guest_append(rate, workload)
    configure_dest = None
    cap_params = {}
    if profile is not None:
        cap_params = profile.params_for(vmm.name)
        cap_params.update(params)
        if profile.dest:
            def configure_dest(q):
                caps.set_on(q, profile, cap_params,
                            f"{vmm.name} destination")
    trace = postcopy.FaultTrace(vmm) if fault_trace else None
    pair = ComparePair(build, vmm, size, 2, append, dest_host, dest_port,
                       netns, configure_dest,
                       trace.argv() if trace else ())
    try:
        boot_s = pair.start_both()
        time.sleep(WARMUP_S)
        guest_rate = pair.guest_rate()
        if profile is not None:
            caps.set_on(pair.qsrc, profile, cap_params, f"{vmm.name} source")
        else:
            pair.set_parameters(**params)
        got = pair.qsrc.cmd("query-migrate-parameters")
        for k, v in params.items():
            if got.get(k) != v:
                raise DemoError(f"{vmm.name}: {k} is {got.get(k)} after "
                                f"migrate-set-parameters {k}={v}")
        # The guest's largest stall with no migration running (the last
        # 2 s of the warm-up): what the host's scheduling alone costs.
        now = time.monotonic()
        before = [t for t in pair.src.heartbeat_times()
                  if now - BASELINE_S <= t <= now]
        baseline = max((b - a for a, b in zip(before, before[1:])),
                       default=None)
        passes = PassTimeline()
        watch = None
        if profile is not None and profile.postcopy:
            watch = postcopy.Watch(pair, passes)
            r = pair.migrate(timeout=timeout, on_progress=watch,
                             poll=postcopy.POLL_S)
        else:
            r = pair.migrate(timeout=timeout, on_progress=passes)
        if r["converged"] and not r.get("total_ms"):
            # QEMU 7.2 may show "completed" before it has filled in
            # total-time and downtime (seen with multifd): ask again.
            time.sleep(0.2)
            info = pair.qsrc.cmd("query-migrate")
            r["total_ms"] = info.get("total-time")
            r["downtime_ms"] = info.get("downtime")
        r.update(passes.result())
        if watch is not None:
            r.update(watch.result(r))
        if "x-postcopy-auto" in cap_params:
            info = pair.qsrc.cmd("query-migrate")
            r["postcopy_auto_reason"] = info.get("x-postcopy-auto-reason")
        r.update(postcopy.pass_log(pair.src))
        r["baseline_gap_ms"] = None if baseline is None else baseline * 1e3
        if not r["converged"]:
            # A cancelled migration may no longer report its counters
            # (QEMU drops "ram" once cancelled): keep the last seen.
            for key, field in (("passes", "dirty-sync-count"),
                               ("transferred", "transferred")):
                if r.get(key) is None:
                    r[key] = passes.last_ram.get(field)
        r["boot_ms"] = boot_s * 1000.0
        r["guest_rate"] = guest_rate
        r["corrupt"] = len(vmlib.corrupt_lines(pair.src, pair.dst))
        if r["converged"]:
            state = pair.qdst.cmd("query-status")
            if not state.get("running"):
                raise DemoError(f"{vmm.name}: the destination is not "
                                f"running after the migration")
            pair.qdst.execute("quit")
            pair.dst.wait(10)
            if trace is not None:
                r.update(trace.result())
        try:
            pair.quit_source()
        except DemoError:
            pass  # killed by close(); the measurement is taken
        return r
    except (DemoError, vmlib.QmpError, OSError, ValueError, KeyError,
            TypeError) as e:
        return {"converged": False, "status": "error",
                "error": str(e) or type(e).__name__}
    finally:
        pair.close()
        if trace is not None:
            trace.close()


def exit_on_sigterm():
    demo_vm.exit_on_sigterm()
