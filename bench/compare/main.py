#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kvmig against QEMU, side by side (issue 4): the same guest, the same
workload, the same migration parameters, one QMP driver for both VMMs.

    bench/compare/main.py --build BUILD [--sizes 1G,4G] [--rates 0,64,256,1024]
        [--runs 3] [--links loopback,1g=1gbit,10g=10gbit] [--vmms kvmig,qemu]
        [--timeout 60] [--downtime-limit 300] [--max-bandwidth BYTES/S]
        [--shaped-cells 4G:256,...] [--json FILE] [--out FILE] [--img DIR]
    bench/compare/main.py --report-only --json FILE [--json FILE ...]

Capability profiles (issue 5; bench/caps.sh runs the issue's benchmarks):

    bench/compare/main.py --build BUILD --caps plain,xbzrle,multifd,...
        [--bench NAME] [--workload 'pattern=small-writes mem=256']
        [--params KEY=VALUE,...] [the options above]
    bench/compare/main.py --caps-report --json FILE [--json FILE ...]
        [--tcp-limit FILE] [--memtest FILE]

Each profile (bench/compare/caps.py) is a set of capabilities and
parameters applied identically to both VMMs (and to the destination,
started with `incoming defer`, when the capability needs it); a profile
QEMU lacks runs for kvmig only. Runs are tagged with --bench and the
profile; the report (bench/results/caps-latest.md) has one table per
benchmark.

Every run boots the guest (BUILD/guest/guest.elf, 2 vCPUs, `mem=max(64,
rate) rate=RATE pattern=random`) on a source VMM while its destination
starts (in the link's network namespace for a shaped link), waits for the
workload and 2.2 s more, sets downtime-limit and max-bandwidth on the
source, migrates, and records query-migrate's total-time, downtime,
ram.transferred and ram.dirty-sync-count, plus the guest-observed downtime
(largest heartbeat gap across both consoles). A migration still running
after --timeout s is cancelled and recorded as not converged. Runs of the
two VMMs alternate inside each cell, so slow drifts of this shared machine
hit both alike. Each run is appended to --json as it ends; the report
(markdown table with ratios kvmig/QEMU and targets, gnuplot PNGs) is
written at the end, or from saved runs with --report-only.
"""
import argparse
import atexit
import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import caps  # noqa: E402
import caps_report  # noqa: E402
import driver  # noqa: E402
import netlink  # noqa: E402
import postcopy_report  # noqa: E402
import report  # noqa: E402
import vmms  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
# "No bandwidth cap": a cap far above anything this machine can move
# (QEMU 7.2's default is 128 MiB/s; 0 is not unlimited in every QEMU).
NO_CAP = 100 << 30


def log(*args):
    print("compare:", *args, file=sys.stderr, flush=True)


def env_default(name, default):
    return os.environ.get(name) or default


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--sizes", default=env_default("COMPARE_SIZES", "1G,4G"))
    ap.add_argument("--rates",
                    default=env_default("COMPARE_RATES", "0,64,256,1024"))
    ap.add_argument("--runs", type=int,
                    default=int(env_default("COMPARE_RUNS", "3")))
    ap.add_argument("--links", default=env_default(
        "COMPARE_LINKS", "loopback,1g=1gbit,10g=10gbit"))
    ap.add_argument("--shaped-cells", default=env_default(
        "COMPARE_SHAPED_CELLS", ""),
        help="SIZE:RATE,... run on shaped links (default: the whole "
             "size x rate matrix)")
    ap.add_argument("--vmms", default=env_default("COMPARE_VMMS",
                                                  "kvmig,qemu"))
    ap.add_argument("--timeout", type=float,
                    default=float(env_default("COMPARE_TIMEOUT", "60")))
    ap.add_argument("--downtime-limit", type=int, default=300)
    ap.add_argument("--max-bandwidth", type=int, default=NO_CAP)
    ap.add_argument("--json", action="append", default=None,
                    help="runs file: appended to while measuring; with "
                         "--report-only, read (may repeat)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", default=os.path.join(
        ROOT, "bench", "results", "compare-latest.md"))
    ap.add_argument("--img", default=os.path.join(ROOT, "docs", "img"))
    ap.add_argument("--command", default=None)
    ap.add_argument("--caps", default=env_default("COMPARE_CAPS", ""),
                    help="capability profiles, e.g. plain,xbzrle,multifd,"
                         "multifd-zlib,multifd-zstd,multifd-lz4,"
                         "auto-converge (bench/compare/caps.py)")
    ap.add_argument("--bench", default=env_default("COMPARE_BENCH", "caps"),
                    help="with --caps: the benchmark the runs belong to "
                         "(a table of the caps report)")
    ap.add_argument("--workload", default=env_default("COMPARE_WORKLOAD",
                                                      ""),
                    help="guest words replacing the defaults (and a "
                         "profile's own), e.g. 'pattern=small-writes "
                         "mem=256'")
    ap.add_argument("--params", default=env_default("COMPARE_PARAMS", ""),
                    help="with --caps: KEY=VALUE,... migration parameters "
                         "over the profiles' own")
    ap.add_argument("--fault-trace", action="store_true",
                    help="with --caps: the destination logs each postcopy "
                         "fault (QEMU: trace events) for per-fault "
                         "service times (bench/compare/postcopy.py)")
    ap.add_argument("--postcopy-report", action="store_true",
                    help="write the postcopy report (bench/results/"
                         "postcopy-latest.md) from --json files")
    ap.add_argument("--caps-report", action="store_true",
                    help="write the caps report from --json files")
    ap.add_argument("--tcp-limit", default=None,
                    help="caps report: bench/tcp_limit's JSON output")
    ap.add_argument("--memtest", default=None,
                    help="caps report: kvmig memtest --json summaries "
                         "(one per line) of the multifd throughput runs")
    args = ap.parse_args()
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.rates = [int(r) for r in args.rates.split(",") if r]
    args.links = [x for x in args.links.split(",") if x]
    args.vmms = [x for x in args.vmms.split(",") if x]
    args.shaped_cells = [(c.split(":")[0], int(c.split(":")[1]))
                         for c in args.shaped_cells.split(",") if c]
    args.profiles = caps.parse([x for x in args.caps.split(",") if x])
    args.workload_words = dict(w.split("=", 1) for w in
                               args.workload.split() if "=" in w)
    args.extra_params = caps.parse_params(args.params)
    if args.postcopy_report:
        args.report_only = True
        if "--out" not in sys.argv:
            args.out = os.path.join(ROOT, "bench", "results",
                                    "postcopy-latest.md")
    if args.caps_report and not args.profiles:
        args.report_only = True
    if args.caps_report or args.profiles:
        args.caps_report = True
        if "--out" not in sys.argv:
            args.out = os.path.join(ROOT, "bench", "results",
                                    "caps-latest.md")
    if args.command is None:
        args.command = " ".join(["bench/compare/main.py"] + sys.argv[1:])
    if not args.json:
        name = "bench-caps-runs.json" if args.caps_report else \
            "bench-compare-runs.json"
        args.json = [os.path.join(args.build, name)]
    return args


def load_runs(paths):
    runs, meta = [], {}
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        runs += data.get("runs", [])
        cmd = data.get("meta", {}).get("command")
        if cmd:
            meta.setdefault("commands", []).append(cmd)
        if data.get("meta", {}).get("started"):
            meta.setdefault("dates", []).append(data["meta"]["started"])
    # Runs of one cell from several files: number them 1..n.
    seen = {}
    for r in runs:
        key = (r["link"], r["size"], r["rate"], r["vmm"], r.get("bench"),
               r.get("profile"), r.get("workload"))
        seen[key] = seen.get(key, 0) + 1
        r["run"] = seen[key]
        for k, v in data.get("meta", {}).items():
            meta.setdefault(k, v)
        for k, v in data.get("links", {}).items():
            meta.setdefault("links", {})[k] = v
    return runs, meta


class RunLog:
    """The runs file, rewritten after every run (the session can end at
    any moment; what was measured stays)."""

    def __init__(self, path, meta):
        self.path = path
        self.data = {"meta": meta, "links": {}, "runs": []}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def add(self, run):
        self.data["runs"].append(run)
        self.flush()

    def link(self, name, text):
        self.data["links"][name] = text
        self.flush()

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def cells_for(args, link):
    if link.name == "loopback" or not args.shaped_cells:
        return [(s, r) for s in args.sizes for r in args.rates]
    return args.shaped_cells


def measure(args, log_file):
    vs = vmms.make(args.vmms, args.build)
    for v in vs:
        why = v.check()
        if why:
            log(f"cannot run {v.name}: {why}")
            return 1
    if any(p.tls for p in args.profiles):
        # The same x509 credentials for both VMMs (issue 12), made for
        # this run and removed with it.
        import tlslib  # noqa: E402  (tests/integration, via driver)
        missing = tlslib.certtool_missing()
        if missing:
            log(f"cannot run the TLS profiles: {missing}")
            return 1
        tmp = tempfile.mkdtemp(prefix="kvcmp-tls-")
        atexit.register(shutil.rmtree, tmp, True)
        pki = tlslib.make_x509(f"{tmp}/pki")
        for v in vs:
            v.tls_dir = pki
    params = {"downtime-limit": args.downtime_limit,
              "max-bandwidth": args.max_bandwidth}
    if args.profiles:
        return measure_profiles(args, log_file, vs, params)
    for spec in args.links:
        link = netlink.make(spec)
        with link:
            log_file.link(link.name, link.describe())
            log(f"link {link.name}: {link.describe()}")
            for size, rate in cells_for(args, link):
                for i in range(1, args.runs + 1):
                    for v in vs:
                        port = netlink_port(link)
                        t0 = time.time()
                        r = driver.one_run(args.build, v, size, rate, params,
                                           args.timeout, link.dest_host,
                                           port, link.netns)
                        r.update(vmm=v.name, size=size, rate=rate,
                                 link=link.name, run=i,
                                 started=t0, load=os.getloadavg()[0])
                        log_file.add(r)
                        log(describe_run(r))
    return 0


def measure_profiles(args, log_file, vs, params):
    """The capability runs: for each link, cell and run number, every
    profile on every VMM that has it (alternating, as the matrix)."""
    params = dict(params, **args.extra_params)
    for spec in args.links:
        link = netlink.make(spec)
        with link:
            log_file.link(link.name, link.describe())
            log(f"link {link.name}: {link.describe()}")
            for size, rate in cells_for(args, link):
                for i in range(1, args.runs + 1):
                    for prof in args.profiles:
                        for v in vs:
                            if prof.supported_by(v.name):
                                one_profile_run(args, log_file, link, v,
                                                size, rate, i, prof, params)
    return 0


def one_profile_run(args, log_file, link, v, size, rate, i, prof, params):
    workload = dict(prof.workload)
    workload.update(args.workload_words)
    t0 = time.time()
    r = driver.one_run(args.build, v, size, rate, params, args.timeout,
                       link.dest_host, netlink_port(link), link.netns,
                       profile=prof, workload=workload,
                       fault_trace=args.fault_trace)
    r.update(vmm=v.name, size=size, rate=rate, link=link.name, run=i,
             bench=args.bench, profile=prof.name,
             max_bandwidth=params.get("max-bandwidth"),
             workload=driver.guest_append(rate, workload),
             cap_params=dict(prof.params, **args.extra_params),
             started=t0, load=os.getloadavg()[0])
    log_file.add(r)
    log(f"[{args.bench} {prof.name}] " + describe_run(r))


def netlink_port(link):
    if link.netns is None:
        return driver.demo_vm.free_port()
    return random.randint(20000, 59999)  # a fresh namespace: all free


def describe_run(r):
    head = f"{r['vmm']:5s} {r['link']} {r['size']} rate={r['rate']} " \
        f"run {r['run']}:"
    if r.get("error"):
        return f"{head} FAILED: {r['error'].splitlines()[0]}"
    if not r["converged"]:
        return f"{head} no convergence in the time limit " \
            f"({r.get('passes')} passes, {r.get('transferred')} bytes)"
    extra = ""
    if r.get("max_throttle") is not None:
        extra += f", max throttle {r['max_throttle']}%"
    if r.get("xbzrle_cache"):
        x = r["xbzrle_cache"]
        extra += (f", xbzrle {x.get('pages')} pages "
                  f"{(x.get('bytes') or 0) / 2**20:.1f} MiB, "
                  f"miss rate {x.get('cache-miss-rate')}")
    return (f"{head} total {r['total_ms']} ms, downtime {r['downtime_ms']} "
            f"ms, guest {r['guest_downtime_ms']:.1f} ms, "
            f"{(r['transferred'] or 0) / 2**20:.0f} MiB, "
            f"{r['passes']} passes, boot {r['boot_ms']:.0f} ms{extra}")


def binary_stamp(build):
    path = os.path.join(build, "src", "cli", "kvmig")
    try:
        t = os.stat(path).st_mtime
    except OSError:
        return None
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    return (f"{path} built {built}"
            f" (the tree's HEAD when measured: "
            f"{report.git_head()})")


def main():
    args = parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if not args.report_only:
        why = driver.vmlib.have_kvm()
        if why:
            log(f"cannot run: {why}")
            return 1
        if any(x != "loopback" for x in args.links) and os.geteuid() != 0:
            log("shaped links need root (ip netns, tc): skipping "
                + ", ".join(x for x in args.links if x != "loopback"))
            args.links = [x for x in args.links if x == "loopback"]
        driver.exit_on_sigterm()
        meta = {"started": started, "command": args.command,
                "timeout": args.timeout,
                "downtime_limit": args.downtime_limit,
                "max_bandwidth": args.max_bandwidth,
                "qemu": vmms.Qemu(args.build).version(),
                "kvmig_binary": binary_stamp(args.build),
                "machine": report.machine()}
        log_file = RunLog(args.json[0], meta)
        try:
            rc = measure(args, log_file)
        except KeyboardInterrupt:
            log("interrupted: reporting what was measured")
            rc = 130
        finally:
            if any(x != "loopback" for x in args.links):
                netlink.teardown()  # ours only (named after this pid)
        if rc == 1:
            return rc
    runs, meta = load_runs(args.json)
    if not runs:
        log("no runs to report")
        return 1
    if args.postcopy_report or any(p.postcopy for p in args.profiles):
        text = postcopy_report.write(runs, meta, args)
    elif args.caps_report:
        text = caps_report.write(runs, meta, args)
    else:
        text = report.write(runs, meta, args)
    print(text)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
