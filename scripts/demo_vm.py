#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The `make demo` driver: live-migrate a running guest between two kvmig
processes over loopback TCP, driven through QMP the way QEMU is driven.

    scripts/demo_vm.py --build BUILD_DIR [--memory 1G] [--cpus 2]
                       [--mem 64] [--rate 64]

Boots the guest (BUILD_DIR/guest/guest.elf) on a source `kvmig run`, waits
for its workload, starts a destination `kvmig run --incoming tcp:...`,
migrates with a live progress line, prints a summary (VMM downtime from
query-migrate, guest-observed downtime from the heartbeats on both
consoles), shows the guest running on the destination, then powers it off
with a 'q' on the destination's console and quits the source.

The VmPair class is also used by bench/vm_bench.py. It reuses the QMP
client and the timestamped console reader of tests/integration/vmlib.py.
Exits 0 on success, 1 with the reason on any failure.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import vmlib  # noqa: E402

MIB = 1 << 20
FINAL = ("completed", "failed", "cancelled")
STATUS_RX = re.compile(rb"guest: vcpu=(\d+) [^\n]*?rate=([0-9.]+)MiB/s[^\n]*")


class DemoError(Exception):
    pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def parse_size(text):
    m = re.fullmatch(r"(\d+)([KMGkmg]?)", text)
    if not m:
        raise ValueError(f"bad size {text!r}")
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    return int(m.group(1)) << shift


class VmPair:
    """A source `kvmig run` booting the guest and a destination waiting
    for it, both with a QMP socket in a private temporary directory."""

    def __init__(self, build, memory="1G", cpus=2, append="mem=64 rate=64",
                 extra_args=()):
        self.kvmig = os.path.join(build, "src", "cli", "kvmig")
        self.guest = os.path.join(build, "guest", "guest.elf")
        for f in (self.kvmig, self.guest):
            if not os.path.exists(f):
                raise DemoError(f"{f} is missing: build first (make)")
        self.memory = memory
        self.cpus = str(cpus)
        self.append = append
        self.extra = list(extra_args)
        self.tmp = tempfile.mkdtemp(prefix="kvmig-vm.")
        self.src = self.dst = None
        self.qsrc = self.qdst = None
        self.uri = None
        self.t_start = None
        self.boot_s = None

    # ---- processes ----

    def boot_source(self, timeout=30):
        """Start the source; returns the boot-to-workload time in s
        (process start to 'workload started' on the console)."""
        path = os.path.join(self.tmp, "src.qmp")
        self.t_start = time.monotonic()
        self.src = vmlib.Vm([self.kvmig, "run", "--memory", self.memory,
                             "--cpus", self.cpus, "--kernel", self.guest,
                             "--append", self.append, "--qmp", "unix:" + path]
                            + self.extra, "source")
        if not self.src.wait_console(r"workload started", timeout):
            raise DemoError("the source guest did not start its workload "
                            f"within {timeout} s\n" + self.src.describe())
        self.boot_s = self._console_time(self.src, b"workload started") \
            - self.t_start
        self.qsrc = vmlib.Qmp(path)
        return self.boot_s

    def start_destination(self, tries=5):
        """Start the destination on a free loopback port (picked here:
        kvmig does not report the port it bound for tcp:...:0)."""
        path = os.path.join(self.tmp, "dst.qmp")
        for _ in range(tries):
            if os.path.exists(path):
                os.unlink(path)
            uri = f"tcp:127.0.0.1:{free_port()}"
            dst = vmlib.Vm([self.kvmig, "run", "--memory", self.memory,
                            "--cpus", self.cpus, "--incoming", uri,
                            "--qmp", "unix:" + path] + self.extra,
                           "destination")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and dst.p.poll() is None:
                if "waiting for an incoming migration" in dst.stderr:
                    break
                time.sleep(0.02)
            if dst.p.poll() is None and \
                    "waiting for an incoming migration" in dst.stderr:
                self.dst, self.uri = dst, uri
                self.qdst = vmlib.Qmp(path)
                return uri
            err = dst.describe()
            dst.kill()
        raise DemoError("the destination did not start listening\n" + err)

    def close(self):
        for q in (self.qsrc, self.qdst):
            if q is not None:
                try:
                    q.close()
                except OSError:
                    pass
        for vm in (self.src, self.dst):
            if vm is not None:
                vm.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- console ----

    @staticmethod
    def _console_time(vm, needle):
        """Arrival time of the chunk that completed NEEDLE."""
        with vm.cond:
            seen = b""
            for t, c in vm.chunks:
                seen += c
                if needle in seen:
                    return t
        return time.monotonic()

    def guest_rate(self, vm=None):
        """MiB/s dirtied, summed over the last status line of each vCPU."""
        last = {}
        for m in STATUS_RX.finditer((vm or self.src).console):
            last[m.group(1)] = float(m.group(2))
        return sum(last.values()) if last else None

    # ---- migration ----

    def set_parameters(self, **params):
        if params:
            self.qsrc.cmd("migrate-set-parameters", **params)

    def migrate(self, timeout=60.0, poll=0.05, on_progress=None,
                settle_heartbeats=200):
        """Migrate the source to the destination. Returns a dict of the
        measurements; 'converged' is False if it did not complete within
        TIMEOUT s (then it is cancelled and the source keeps running)."""
        t0 = time.monotonic()
        self.qsrc.cmd("migrate", uri=self.uri)
        info = {}
        while True:
            info = self.qsrc.cmd("query-migrate")
            if on_progress:
                on_progress(info, time.monotonic() - t0)
            if info.get("status") in FINAL:
                break
            if time.monotonic() - t0 > timeout:
                self.qsrc.execute("migrate_cancel")
                end = time.monotonic() + 10
                while info.get("status") not in FINAL and \
                        time.monotonic() < end:
                    time.sleep(0.05)
                    info = self.qsrc.cmd("query-migrate")
                return self._result(info, t0, converged=False)
            time.sleep(poll)
        t_done = time.monotonic()
        if info["status"] != "completed":
            raise DemoError("migration " + info["status"] + ": " +
                            info.get("error-desc", "(no error-desc)") +
                            "\n" + self.src.describe() + "\n" +
                            self.dst.describe())
        # The gap closes with the destination's heartbeats.
        if not self.dst.wait_heartbeats(settle_heartbeats, 10, since=t_done):
            raise DemoError("no heartbeats from the guest on the "
                            "destination after the migration\n" +
                            self.dst.describe())
        return self._result(info, t0, converged=True, t_done=t_done)

    def _result(self, info, t0, converged, t_done=None):
        ram = info.get("ram", {})
        r = {
            "converged": converged,
            "status": info.get("status"),
            "wall_ms": ((t_done or time.monotonic()) - t0) * 1000.0,
            "total_ms": info.get("total-time"),
            "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"),
            "transferred": ram.get("transferred"),
            "zero_pages": ram.get("duplicate"),
            "normal_pages": ram.get("normal"),
            "passes": ram.get("dirty-sync-count"),
            "mbps": ram.get("mbps"),
        }
        if converged:
            src_hb = [t for t in self.src.heartbeat_times() if t >= t0]
            dst_hb = self.dst.heartbeat_times()
            r["guest_downtime_ms"] = vmlib.guest_downtime_ms(
                self.src, self.dst, since=t0)
            # Where the pause is: at the switch-over (last heartbeat on
            # the source to the first on the destination), or during
            # precopy (the source's own largest gap, dirty tracking).
            r["switchover_gap_ms"] = (dst_hb[0] - src_hb[-1]) * 1000.0 \
                if src_hb and dst_hb else None
            r["precopy_gap_ms"] = max(
                (b - a for a, b in zip(src_hb, src_hb[1:])),
                default=0.0) * 1000.0
            # ... or after it, on the destination (in the first
            # settle_heartbeats heartbeats).
            r["dest_gap_ms"] = max(
                (b - a for a, b in zip(dst_hb, dst_hb[1:])),
                default=0.0) * 1000.0
            r.update(self._switchover_split(src_hb, dst_hb))
        return r

    def _switchover_split(self, src_hb, dst_hb):
        """Split the switch-over gap with the QMP events' timestamps (the
        host's realtime clock, mapped onto the monotonic clock of the
        heartbeats): the source's last heartbeat -> its STOP event, STOP ->
        the destination's RESUME, RESUME -> the first heartbeat there."""
        stop = self.qsrc.wait_event("STOP", timeout=2)
        resume = self.qdst.wait_event("RESUME", timeout=2)
        if not (stop and resume and src_hb and dst_hb):
            return {}
        shift = time.time() - time.monotonic()

        def mono(ev):
            ts = ev["timestamp"]
            return ts["seconds"] + ts["microseconds"] / 1e6 - shift
        t_stop, t_resume = mono(stop), mono(resume)
        return {"hb_to_stop_ms": (t_stop - src_hb[-1]) * 1000.0,
                "stop_to_resume_ms": (t_resume - t_stop) * 1000.0,
                "resume_to_hb_ms": (dst_hb[0] - t_resume) * 1000.0}

    def power_off_destination(self, timeout=15):
        self.dst.send_console(b"q")
        rc = self.dst.wait(timeout)
        if rc != 0:
            raise DemoError(f"the destination did not power off cleanly "
                            f"(exit {rc})\n" + self.dst.describe())

    def quit_source(self, timeout=10):
        try:
            self.qsrc.execute("quit")
        except (OSError, vmlib.QmpError):
            pass
        rc = self.src.wait(timeout)
        if rc is None:
            raise DemoError("the source did not quit\n" + self.src.describe())
        return rc


# ---- the demo ----

def mib(n):
    return (n or 0) / MIB


class Progress:
    """One line, redrawn in place on a terminal; plain lines otherwise
    (at most one every PLAIN_EVERY s, and one per new pass)."""
    PLAIN_EVERY = 0.25

    def __init__(self, out):
        self.out = out
        self.tty = out.isatty()
        self.last_sent = 0
        self.last_t = 0.0
        self.last_print = -1.0
        self.last_pass = None
        self.rate = 0.0
        self.drawn = False

    def __call__(self, info, t):
        ram = info.get("ram", {})
        page = ram.get("page-size", 4096)
        # ram.transferred is updated at the end of each pass; the page
        # counters move within it, so show whichever is further along.
        sent = max(ram.get("transferred", 0),
                   ram.get("normal-bytes", ram.get("normal", 0) * page))
        if t > self.last_t:
            inst = (sent - self.last_sent) / (t - self.last_t)
            self.rate = inst if self.last_t == 0 else \
                0.5 * self.rate + 0.5 * inst
        self.last_sent, self.last_t = sent, t
        npass = ram.get("dirty-sync-count", 0)
        if info.get("status") in ("none", "setup"):
            return
        line = (f"[migrate] {t:5.2f} s  {info.get('status', '?'):9s} "
                f"pass {npass:2d}  sent {mib(sent):7.1f} MiB  "
                f"remaining {mib(ram.get('remaining')):7.1f} MiB  "
                f"rate {mib(self.rate):6.1f} MiB/s  "
                f"expected downtime {info.get('expected-downtime', 0)} ms")
        final = info.get("status") in FINAL
        if self.tty:
            self.out.write("\r\033[K" + line + ("\n" if final else ""))
            self.drawn = not final
        elif final or npass != self.last_pass or \
                t - self.last_print >= self.PLAIN_EVERY:
            self.out.write(line + "\n")
            self.last_print = t
        self.last_pass = npass
        self.out.flush()

    def end(self):
        if self.drawn:
            self.out.write("\n")
            self.drawn = False


def say(*args):
    print(*args, flush=True)


def show_console(vm, label, start, seconds):
    """Print VM's status lines as they arrive and its heartbeats as a
    count per second, for SECONDS whole seconds after START."""
    t0 = time.monotonic()
    for sec in range(1, seconds + 1):
        time.sleep(max(0.0, t0 + sec - time.monotonic()))
        text = vm.console
        chunk, start = text[start:], len(text)
        hb = chunk.count(vmlib.HEARTBEAT)
        for line in chunk.replace(vmlib.HEARTBEAT, b"").splitlines():
            line = line.decode("utf-8", "replace").strip()
            if line:
                say(f"{label} {line}")
        say(f"{label} second {sec}: {hb} heartbeats")
    return start


def summary(r, pair):
    def row(label, text):
        say(f"   {label:<25s} {text}")
    say("== summary")
    row("total time", f"{r['total_ms']} ms (setup {r['setup_ms']} ms)")
    row("VMM downtime", f"{r['downtime_ms']} ms (vCPUs stopped on the "
        "source -> running on the destination)")
    row("guest-observed downtime", f"{r['guest_downtime_ms']:.1f} ms "
        "(largest heartbeat gap across both consoles)")
    row("  at the switch-over", f"{r['switchover_gap_ms']:.1f} ms "
        "(last heartbeat on the source -> first on the destination)")
    if "stop_to_resume_ms" in r:
        row("    = last hb->STOP", f"{r['hb_to_stop_ms']:.1f} ms "
            "+ STOP->RESUME (QMP events) "
            f"{r['stop_to_resume_ms']:.1f} ms + RESUME->first heartbeat "
            f"{r['resume_to_hb_ms']:.1f} ms")
    row("  during precopy", f"{r['precopy_gap_ms']:.1f} ms (largest "
        "stall of the guest on the source)")
    row("  on the destination", f"{r['dest_gap_ms']:.1f} ms (largest "
        "stall of the guest there, first heartbeats after the resume)")
    row("bytes sent", f"{r['transferred']} "
        f"({mib(r['transferred']):.1f} MiB)")
    row("zero pages", f"{r['zero_pages']} (normal pages "
        f"{r['normal_pages']})")
    row("passes", f"{r['passes']}")


def check_corrupt(pair):
    bad = vmlib.corrupt_lines(pair.src, pair.dst)
    if bad:
        raise DemoError("the guest reported corruption:\n" +
                        "\n".join(b.decode("utf-8", "replace")
                                  for b in bad[:10]))


def demo(args):
    append = f"mem={args.mem} rate={args.rate}"
    say(f"== kvmig demo: a {args.memory} guest with {args.cpus} vCPUs, "
        f"workload '{append}', live-migrated over loopback TCP")
    pair = VmPair(args.build, args.memory, args.cpus, append)
    try:
        boot = pair.boot_source()
        say(f"[source] guest workload started {boot * 1000:.0f} ms "
            "after kvmig run started")
        say("[source] the guest as it runs on the source:")
        mark = len(pair.src.console)
        show_console(pair.src, "[source]", mark, 1)
        if args.downtime_limit is not None:
            pair.set_parameters(**{"downtime-limit": args.downtime_limit})
        uri = pair.start_destination()
        say(f"[destination] kvmig run --incoming {uri}: waiting")
        say(f"[migrate] migrate uri={uri}")
        progress = Progress(sys.stdout)
        try:
            r = pair.migrate(timeout=args.timeout, on_progress=progress)
        finally:
            progress.end()
        if not r["converged"]:
            raise DemoError(f"the migration did not converge within "
                            f"{args.timeout} s; cancelled")
        summary(r, pair)
        state = pair.qdst.cmd("query-status")
        say(f"[destination] query-status: {state.get('status')}")
        if not state.get("running"):
            raise DemoError("the destination is not running the guest")
        say("[destination] the guest as it runs on the destination:")
        show_console(pair.dst, "[destination]", len(pair.dst.console), 2)
        check_corrupt(pair)
        say("[destination] power off: 'q' on the console")
        pair.power_off_destination()
        for line in pair.dst.console.replace(vmlib.HEARTBEAT, b"") \
                .decode("utf-8", "replace").splitlines()[-3:]:
            say(f"[destination] {line}")
        say("[destination] kvmig run exited 0")
        rc = pair.quit_source()
        say(f"[source] quit: kvmig run exited {rc}")
        if rc != 0:
            raise DemoError(f"the source exited {rc} after quit\n" +
                            pair.src.describe())
        check_corrupt(pair)
    finally:
        pair.close()
    say("== demo OK: the guest moved live from the source to the "
        "destination and powered off there")


def exit_on_sigterm():
    """Turn SIGTERM into SystemExit so `finally` blocks stop the kvmig
    processes instead of leaving them behind."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--mem", type=int, default=64, help="working set, MiB")
    ap.add_argument("--rate", type=int, default=64, help="MiB/s dirtied")
    ap.add_argument("--downtime-limit", type=int, default=None,
                    help="migrate-set-parameters downtime-limit (ms)")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    why = vmlib.have_kvm()
    if why:
        print(f"demo: cannot run: {why}", file=sys.stderr)
        return 1
    exit_on_sigterm()
    try:
        demo(args)
    except (DemoError, vmlib.QmpError, OSError) as e:
        print(f"\n== demo FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n== demo interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
