# SPDX-License-Identifier: MIT
"""One fault case, run from outside: a `kvmig run` source with the
project's guest writing memory, a `kvmig run --incoming defer`
destination, both with --verify-ram, the fault proxy between them (or
none), signals. Afterwards: which side runs (heartbeats still arriving on
its console, QMP query-status), whether two copies ever ran (the guest's
own counters, guest_counters.py), CORRUPT lines, what each side
reported, how long each took to notice. Postcopy cases switch to
postcopy at once or after the first pass, and may recover a broken link
(migrate-recover, migrate with resume) once both sides paused.

A case is a dict (see cases.py); run_case(env, case) returns its result
dict (the results file's rows)."""
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from vmlib import (VmSet, corrupt_lines, free_port,  # noqa: E402
                   workload_started)
from faultproxy import Proxy  # noqa: E402
import guest_counters  # noqa: E402
import netns  # noqa: E402

GUEST_ARGS = "mem=32 rate=16"
MEMORY = "256M"
VERIFY = ("--verify-ram",)
RP_TIMEOUT_MS = 2000     # x-return-path-timeout in the suite
LINK_TIMEOUT_MS = 3000   # x-link-timeout (where the build has it)
DETECT_S = 10.0          # how long the harness waits for a side to notice
SILENCE_S = LINK_TIMEOUT_MS / 1000 + 3.0   # the bound for a silent link
FREEZE_S = 4.0           # SIGSTOP ... SIGCONT
RESOLVE_S = 12.0         # after the link is back: time to settle
WINDOW_S = 1.5           # "runs" = heartbeats in this window
RECOVER_S = 30.0         # a postcopy recovery: until both completed
FINAL = ("completed", "failed", "cancelled")
UNDECIDED = "x-undecided"
PAUSED = "postcopy-paused"   # noticed a break after POSTCOPY_RUN


class Side:
    """A kvmig process of the case and what it reported."""

    def __init__(self, vms, vm, name):
        self.vms = vms
        self.vm = vm
        self.name = name
        self.q = None
        self.frozen = False
        self.killed = False
        self.status = None        # last query-migrate status
        self.error = None
        self.t_settled = None     # first time the status was final/undecided
        self.run_state = None

    def connect(self):
        self.q = self.vms.qmp(self.vm)
        self.q.sock.settimeout(3)

    def alive(self):
        return self.vm.p.poll() is None

    def query(self):
        """query-migrate now, or None (dead, frozen, monitor gone)."""
        if not self.alive() or self.frozen or self.q is None:
            return None
        try:
            r = self.q.cmd("query-migrate")
        except Exception:  # noqa: BLE001 - the monitor died with it
            return None
        self.status = r.get("status", self.status)
        if r.get("error-desc"):
            self.error = r["error-desc"]
        return r

    def query_status(self):
        if not self.alive() or self.frozen or self.q is None:
            return None
        try:
            return self.q.cmd("query-status")["status"]
        except Exception:  # noqa: BLE001
            return None

    def settled(self):
        """Final, undecided, or paused in postcopy: it noticed."""
        if not self.alive():
            return True
        return self.status in FINAL or self.status in (UNDECIDED, PAUSED)

    def signal(self, sig):
        if not self.alive():
            return
        os.kill(self.vm.p.pid, sig)
        if sig == signal.SIGKILL:
            self.killed = True
            self.vm.wait(5)
        elif sig == signal.SIGSTOP:
            self.frozen = True
        elif sig == signal.SIGCONT:
            self.frozen = False

    def report(self):
        rc = self.vm.p.poll()
        # what it said, less the banner and the statistics
        noise = ("waiting for an incoming migration", "migration failed: "
                 "total", "migration completed: total", "listening on",
                 " info [")
        errs = [line for line in self.vm.stderr.splitlines()
                if line.strip() and not any(n in line for n in noise)]
        return {"status": self.status, "error-desc": self.error,
                "exit": rc if rc is None or rc >= 0 else f"signal {-rc}",
                "run-state": self.run_state,
                "stderr": errs[-3:]}


class Env:
    def __init__(self, kvmig, guest, tmp):
        self.kvmig = kvmig
        self.guest = guest
        self.tmp = tmp
        exe = open(kvmig, "rb").read()
        # which fixes this build has, by a string each one brings
        self.commit_protocol = b"KVMIGOFR" in exe
        self.has_settle = b"x-migrate-settle" in exe
        self.link_timeout = b"x-link-timeout" in exe
        self.verify_sections = b"kvmig-verify" in exe

    def until(self, fix, reason):
        """reason while this build lacks fix ("commit", "detect",
        "verify"), else None: an xfail mark that goes when the fix is in."""
        have = {"commit": self.commit_protocol,
                "detect": self.link_timeout,
                "verify": self.verify_sections,
                "open": False}[fix]   # open: no fix yet
        return None if have else reason


def set_multifd(q, channels=2):
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": "multifd", "state": True}])
    q.cmd("migrate-set-parameters", **{"multifd-channels": channels})


def start_pair(vms, case, link=None):
    """link: a VethLink; the destination then runs in its namespace."""
    src_vm = vms.boot("src", case.get("guest", GUEST_ARGS), memory=MEMORY,
                      extra=VERIFY)
    if link:
        vms.kvmig = link.wrapper
    log = os.environ.get("KVMIG_LOG")
    if case.get("verified"):   # its "ram-verify: RAM identical" line
        os.environ["KVMIG_LOG"] = "info"
    try:
        dst_vm = vms.incoming("dst", "defer", memory=MEMORY, extra=VERIFY)
    finally:
        vms.kvmig = vms.env.kvmig
        if log is None:
            os.environ.pop("KVMIG_LOG", None)
        else:
            os.environ["KVMIG_LOG"] = log
    if not workload_started(src_vm):
        raise RuntimeError("the guest did not start: " + src_vm.describe())
    src, dst = Side(vms, src_vm, "source"), Side(vms, dst_vm, "destination")
    src.connect()
    dst.connect()
    for s in (src, dst):
        s.q.cmd("migrate-set-parameters",
                **{"x-return-path-timeout": RP_TIMEOUT_MS})
        if vms.env.link_timeout:
            s.q.cmd("migrate-set-parameters",
                    **{"x-link-timeout": LINK_TIMEOUT_MS})
        if case.get("multifd"):
            set_multifd(s.q)
        if case.get("postcopy"):
            s.q.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": True}])
    if case.get("bgsnap"):   # the source runs on after the snapshot
        src.q.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "background-snapshot", "state": True}])
    if case.get("max_bandwidth"):
        src.q.cmd("migrate-set-parameters",
                  **{"max-bandwidth": case["max_bandwidth"]})
    return src, dst


def start_postcopy(ctx, when):
    """migrate-start-postcopy: "at-once" right after migrate, or
    "after-pass" once the first pass ended (dirty-sync-count 2)."""
    src = ctx["src"]
    if when == "after-pass":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = src.query() or {}
            if r.get("ram", {}).get("dirty-sync-count", 0) >= 2 or \
                    r.get("status") not in ("none", "setup", "active"):
                break
            time.sleep(0.01)
    try:
        src.q.cmd("migrate-start-postcopy")
        ctx["notes"].append(f"migrate-start-postcopy ({when})")
    except Exception as e:  # noqa: BLE001 - the case's verdict says it
        ctx["notes"].append(f"migrate-start-postcopy ({when}): {e}")


def recover_postcopy(ctx):
    """Both sides paused in postcopy: migrate-recover on the destination
    at a new address, migrate with resume on the source (a direct link),
    then wait until both end."""
    src, dst = ctx["src"], ctx["dst"]
    if not all(s.alive() and s.status == PAUSED for s in (src, dst)):
        ctx["notes"].append(f"no recovery: source {src.status}, "
                            f"destination {dst.status}")
        return
    uri = f"tcp:127.0.0.1:{free_port()}"
    try:
        dst.q.cmd("migrate-recover", uri=uri)
        src.q.cmd("migrate", uri=uri, resume=True)
    except Exception as e:  # noqa: BLE001
        ctx["notes"].append(f"recovery refused: {e}")
        return
    ctx["notes"].append(f"migrate-recover + migrate resume over {uri}")
    observe(src, dst, time.monotonic(), RECOVER_S,
            want=lambda s: not s.alive() or s.status in FINAL)


def heartbeats_in(side, t0, t1):
    return sum(1 for t in side.vm.heartbeat_times() if t0 <= t < t1)


def observe(src, dst, t_fault, deadline_s, final_only=False, want=None):
    """Poll both sides until both settled (final_only: final, not
    x-undecided; want: that predicate) or deadline_s passed since
    t_fault; note when each settled."""
    def done(s):
        if want:
            return want(s)
        return s.settled() and not (final_only and s.status == UNDECIDED
                                    and s.alive())
    end = t_fault + deadline_s
    while time.monotonic() < end:
        for s in (src, dst):
            s.query()
            if s.t_settled is None and s.settled() and not s.frozen:
                s.t_settled = time.monotonic()
        if done(src) and done(dst):
            return True
        time.sleep(0.05)
    return done(src) and done(dst)


def try_settle(env, side, outcome):
    if not env.has_settle or not side.alive() or side.frozen:
        return None
    try:
        return side.q.execute("x-migrate-settle", outcome=outcome)
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def run_case(env, case):
    """Run one case; its result row."""
    t_start = time.monotonic()
    res = {"case": case["name"], "group": case["group"],
           "fault": case["fault"], "phase": case["phase"],
           "expect": case["expect"], "xfail": case.get("xfail")}
    link = None
    if case.get("netns"):
        why = netns.unavailable()
        if why:
            res.update(verdict="skip", note=why)
            return res
        try:
            link = netns.VethLink(env.tmp, env.kvmig)
        except OSError as e:
            res.update(verdict="skip", note=f"no network namespace: {e}")
            return res
    with VmSet(env.kvmig, env.guest, env.tmp) as vms:
        vms.env = env
        try:
            src, dst = start_pair(vms, case, link)
        except Exception as e:  # noqa: BLE001
            res.update(verdict="error", note=f"setup: {e}"[:2000])
            if link:
                link.close()
            return res
        ctx = {"env": env, "vms": vms, "src": src, "dst": dst,
               "t_fault": None, "notes": [], "undo": [], "link": link}
        host = link.theirs if link else "127.0.0.1"
        port = free_port()
        dst.q.cmd("migrate-incoming", uri=f"tcp:{host}:{port}")
        ctx["port"] = port
        proxy = None
        rules = case.get("rules", lambda c: [])(ctx)
        if case.get("direct") or link:
            uri = f"tcp:{host}:{port}"
        else:
            proxy = Proxy(port, rules)
            ctx["proxy"] = proxy
            uri = proxy.uri
        try:
            if case.get("before"):
                case["before"](ctx)
            t_mig = time.monotonic()
            src.q.cmd("migrate", uri=uri)
            if case.get("postcopy"):
                start_postcopy(ctx, case["postcopy"])
            # the fault: a proxy rule, or the case's own action
            if case.get("during"):
                case["during"](ctx)
            t_fault = ctx["t_fault"]
            if t_fault is None:
                fired = [r.t_fired for r in rules if r.t_fired]
                deadline = time.monotonic() + 30
                while rules and not fired and time.monotonic() < deadline:
                    if src.query() and src.settled():
                        break
                    time.sleep(0.02)
                    fired = [r.t_fired for r in rules if r.t_fired]
                t_fault = min(fired) if fired else t_mig
            for hook in case.get("after_fault", []):
                hook(ctx)
            observe(src, dst, t_fault, DETECT_S)
            # what each side said once it noticed (before any recovery)
            ctx["noticed"] = {s.name: {"status": s.status,
                                       "error-desc": s.error}
                              for s in (src, dst)}
            res["fired"] = proxy.fired_at() if proxy else \
                "; ".join(ctx["notes"])
            ctx["never_fired"] = bool(rules) and \
                not any(r.fired.is_set() for r in rules)
            if ctx["never_fired"]:
                res["fired"] = "(the fault's trigger never passed) " + \
                    res["fired"]
            # bring the link (or a frozen process) back, wait for the end
            t_back = time.monotonic()
            restored = False
            for s in (src, dst):
                if s.frozen:
                    s.signal(signal.SIGCONT)
                    restored = True
            if proxy and case.get("restore", True) and any(
                    r.action in ("blackhole", "stall") for r in rules):
                proxy.restore()
                restored = True
            for undo in ctx["undo"]:
                undo()
                restored = True
            # an undecided side resolves itself once the link is back
            undecided = any(x.status == UNDECIDED for x in (src, dst))
            if restored or undecided or \
                    not (src.settled() and dst.settled()):
                observe(src, dst, time.monotonic(), RESOLVE_S,
                        final_only=True)
            res["undecided"] = undecided
            if case.get("settle"):
                for s in (src, dst):
                    if s.status != UNDECIDED or not s.alive():
                        continue
                    how = case["settle"](s)
                    ctx["notes"].append(f"settle {s.name} {how}: "
                                        f"{try_settle(env, s, how)}")
                observe(src, dst, time.monotonic(), 5, final_only=True)
            if case.get("recover"):
                res["paused"] = ctx["noticed"]
                recover_postcopy(ctx)
            judge(res, case, src, dst, t_fault, t_mig,
                  t_back if restored else None, ctx)
            res["notes"] = ctx["notes"]
        finally:
            if proxy:
                proxy.close()
            if link:
                link.close()
            for s in (src, dst):
                if s.frozen:
                    s.signal(signal.SIGCONT)
    res["seconds"] = round(time.monotonic() - t_start, 1)
    return res


def judge(res, case, src, dst, t_fault, t_mig, t_back, ctx):
    # which side runs now: heartbeats in a window, and its QMP status
    t0 = time.monotonic()
    time.sleep(WINDOW_S)
    t1 = time.monotonic()
    for s in (src, dst):
        s.run_state = s.query_status()
        s.query()
    runs = {s.name: (s.alive() and not s.frozen and
                     heartbeats_in(s, t0, t1) > 0 and
                     s.run_state == "running") for s in (src, dst)}
    # two copies ran: proven by the guest's own counters (the verdict);
    # the old measure, by arrival times at the harness (a source
    # heartbeat read after the destination's first), is kept beside it:
    # under load a late read made it cry wolf
    counted = guest_counters.two_copies(src.vm.console, dst.vm.console)
    both = counted["proven"]
    d_times = [t for t in dst.vm.heartbeat_times()]
    s_times = [t for t in src.vm.heartbeat_times() if t >= t_mig]
    by_time = bool(d_times) and bool(s_times) and \
        max(s_times) > min(d_times)
    corrupt = corrupt_lines(src.vm, dst.vm)
    running = [n for n, r in runs.items() if r]
    side = {(): "none", ("source",): "src",
            ("destination",): "dst"}.get(tuple(running), "both")
    # noticed = settled before the link or the process came back; a
    # side that settled only afterwards did not detect the fault
    det, after = {}, {}
    for s in (src, dst):
        if s.t_settled is None:
            continue
        took = round(max(0.0, s.t_settled - t_fault), 2)
        if t_back is not None and s.t_settled > t_back:
            after[s.name] = took
        else:
            det[s.name] = took
    res.update({
        "runs": side,
        "two_copies": both or side == "both",
        "two_copies_proof": counted["why"],
        "heartbeats_past_fork": counted["excess"],
        "two_copies_by_arrival": by_time,
        "corrupt": [c.decode("utf-8", "replace") for c in corrupt[:3]],
        "lost_writes": bool(corrupt) or both or side == "both",
        "source": src.report(), "destination": dst.report(),
        "detect_s": det, "settled_after_restore_s": after,
    })
    problems = []
    exp = case["expect"]
    if ctx.get("never_fired"):
        problems.append("the fault never fired")
    if exp == "two-copies":   # the judge's self-test: made on purpose
        if not both:
            problems.append(f"the guest's counters missed two copies "
                            f"({counted['why']})")
    elif both:
        problems.append(f"two copies ran ({counted['why']})")
    elif side == "both":
        problems.append("two copies ran")
    if corrupt:
        problems.append("CORRUPT")
    if exp == "two-copies":
        if side != "both":
            problems.append(f"{side} runs (expected both, on purpose)")
    elif exp == "at-most-one":
        if side == "both":
            problems.append("both run")
    elif exp == "either":
        if side not in ("src", "dst"):
            problems.append(f"{side} runs (expected exactly one)")
    elif side != exp:
        problems.append(f"{side} runs (expected {exp})")
    for s in (src, dst):
        want = case.get("states", {}).get(s.name)
        if want and s.run_state != want:
            problems.append(f"{s.name} is {s.run_state} (expected {want})")
        if s.alive() and not s.settled() and \
                s.name not in case.get("may_wait", ()):
            problems.append(f"{s.name} still {s.status}")
    problems += postcopy_problems(case, src, dst, ctx)
    for name, limit in case.get("detect", {}).items():
        took = det.get(name)
        if took is None or took > limit:
            problems.append(f"{name} did not notice within {limit} s" +
                            (f" (settled {after[name]} s after the fault, "
                             "once it was undone)" if name in after else
                             "" if took is None else f" (took {took} s)"))
    res["problems"] = problems
    if exp == "two-copies" and "background-snapshot is not supported" in \
            (src.error or ""):
        res.update(verdict="skip", note=src.error)
        return
    if problems:
        res["verdict"] = "xfail" if case.get("xfail") else "fail"
    else:
        res["verdict"] = "xpass" if case.get("xfail") else "pass"


def postcopy_problems(case, src, dst, ctx):
    """A postcopy case's own checks: paused = the sides that must be
    postcopy-paused once they noticed; says = {side: text its error-desc
    must hold then}; final = {side: query-migrate status at the end};
    verified = the destination logged its RAM digest equal."""
    out = []
    seen = ctx.get("noticed", {})
    for name in case.get("paused", ()):
        st = seen.get(name, {}).get("status")
        if st != PAUSED:
            out.append(f"{name} was {st} after the fault (expected {PAUSED})")
    for name, text in case.get("says", {}).items():
        desc = seen.get(name, {}).get("error-desc") or ""
        if text not in desc:
            out.append(f"{name}'s error-desc does not say '{text}': "
                       f"{desc or '(none)'}")
    for s in (src, dst):
        want = case.get("final", {}).get(s.name)
        if want and s.status != want:
            out.append(f"{s.name} ended {s.status} (expected {want})")
    if case.get("verified"):
        deadline = time.monotonic() + 5   # stderr is read by a thread
        while time.monotonic() < deadline and \
                "RAM identical" not in dst.vm.stderr:
            time.sleep(0.05)
        if "RAM identical" not in dst.vm.stderr:
            out.append("the destination did not log its RAM digest equal "
                       "to the source's (--verify-ram)")
    return out
