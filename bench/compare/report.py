# SPDX-License-Identifier: MIT
"""The comparison's report: one markdown table per link with both VMMs and
the ratio kvmig/QEMU in every cell, the targets marked met/missed, the
switch-over breakdown, every run; PNG plots (gnuplot) of downtime and
total time against the dirty rate."""
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import vm_bench  # noqa: E402  (bench/vm_bench.py: machine description)

TARGETS = (  # key, label, bound on kvmig/QEMU
    ("total_ms", "total time", 0.7),
    ("downtime_ms", "downtime (VMM)", 0.5),
    ("guest_downtime_ms", "downtime (guest-observed)", 0.5),
    ("transferred", "bytes", 1.0),
)
MIB = 1 << 20


def machine():
    return vm_bench.machine()


def git_head():
    try:
        return subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(
            HERE)), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "–" if v is None else f"{v:.{digits}f}"


def first_pass_ms(r):
    """When ram.dirty-sync-count reached 2 (see driver.PassTimeline)."""
    marks = r.get("pass_marks")
    if not marks:
        return None
    return next((t for t, n, _ in marks if n >= 2), None)


def summarize(runs):
    """{(link, size, rate): {vmm: summary}}"""
    cells = {}
    for r in runs:
        r["first_pass_ms"] = first_pass_ms(r)
        cells.setdefault((r["link"], r["size"], r["rate"]), {}) \
            .setdefault(r["vmm"], []).append(r)
    out = {}
    for key, by_vmm in cells.items():
        out[key] = {}
        for vmm, rs in by_vmm.items():
            ok = [r for r in rs if r.get("converged")]
            s = {"n": len(rs), "ok": len(ok),
                 "errors": sum(1 for r in rs if r.get("error")),
                 "corrupt": sum(r.get("corrupt", 0) or 0 for r in rs)}
            # A VMM converges in a cell when most of its runs did.
            s["converges"] = 2 * len(ok) > len(rs)
            for k in ("total_ms", "downtime_ms", "guest_downtime_ms",
                      "transferred", "passes", "switchover_gap_ms",
                      "hb_to_stop_ms", "stop_to_resume_ms",
                      "resume_to_hb_ms", "precopy_gap_ms", "dest_gap_ms",
                      "setup_ms", "mbps", "boot_ms", "guest_rate",
                      "normal_pages", "zero_pages", "first_pass_ms",
                      "baseline_gap_ms"):
                s[k] = median(r.get(k) for r in ok)
            s["passes_nc"] = median(r.get("passes") for r in rs
                                    if not r.get("converged"))
            out[key][vmm] = s
    return out


def ratio(k, q, key):
    if not (k and q and k["ok"] and q["ok"]):
        return None
    a, b = k.get(key), q.get(key)
    if a is None or b is None:
        return None
    if b == 0:
        return None if a else 1.0
    return a / b


def conv_text(s, timeout):
    if s is None:
        return "not run"
    t = f"{s['ok']}/{s['n']}"
    if s["ok"] < s["n"]:
        t = f"**{t}**"
    if s["errors"]:
        t += f" ({s['errors']} failed)"
    if s["corrupt"]:
        t += f" **{s['corrupt']} CORRUPT**"
    return t


def cell_verdicts(k, q):
    """[(label, ratio, bound, met)], convergence verdict"""
    out = []
    if k and q and k["converges"] and q["converges"]:
        for key, label, bound in TARGETS:
            r = ratio(k, q, key)
            if r is not None:
                out.append((label, r, bound, r <= bound))
    conv = None
    if k and q:
        conv = k["converges"] or not q["converges"]
    return out, conv


def triple(k, q, key, scale=1.0, digits=0):
    def one(s):
        if s is None:
            return "–"
        if not s["ok"]:
            return "no conv."
        v = s.get(key)
        return fmt(None if v is None else v / scale, digits)
    r = ratio(k, q, key)
    text = f"{one(k)} / {one(q)}"
    if r is not None:
        text += f" = **{r:.2f}**"
    return text


def passes_text(s):
    if s is None:
        return "–"
    if s["ok"]:
        return fmt(s["passes"])
    # Not converged: how far it got before the cancel.
    return f"({fmt(s['passes_nc'])} at cancel)"


def main_table(cells, link, sizes, rates, timeout):
    L = ["| guest | dirty rate (MiB/s) | total time (ms) | downtime, VMM "
         "(ms) | downtime, guest-observed (ms) | bytes (MiB) | passes | "
         "converged | targets |",
         "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for size in sizes:
        for rate in rates:
            c = cells.get((link, size, rate))
            if not c:
                continue
            k, q = c.get("kvmig"), c.get("qemu")
            verdicts, conv = cell_verdicts(k, q)
            marks = []
            for label, r, bound, met in verdicts:
                marks.append(f"{label} ≤ {bound}: "
                             + ("met" if met else "**missed**"))
            if conv is not None:
                marks.append("converges where QEMU does: "
                             + ("met" if conv else "**missed**"))
            passes = f"{passes_text(k)} / {passes_text(q)}"
            L.append(f"| {size} | {rate} | {triple(k, q, 'total_ms')} | "
                     f"{triple(k, q, 'downtime_ms')} | "
                     f"{triple(k, q, 'guest_downtime_ms', digits=1)} | "
                     f"{triple(k, q, 'transferred', MIB, 1)} | {passes} | "
                     f"{conv_text(k, timeout)} / {conv_text(q, timeout)} | "
                     f"{'; '.join(marks) or '–'} |")
    return L


def breakdown_table(cells, link, sizes, rates):
    L = ["| guest | rate | VMM | setup (ms) | first pass ends (ms) | "
         "mbps | normal pages | "
         "zero pages | switch-over gap (ms) = last hb->STOP + STOP->RESUME "
         "+ RESUME->first hb | precopy stall (ms) | destination stall (ms) "
         "| stall without migration (ms) | boot to workload (ms) | guest rate "
         "(MiB/s) |",
         "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:"
         "|---:|"]
    for size in sizes:
        for rate in rates:
            c = cells.get((link, size, rate)) or {}
            for vmm in ("kvmig", "qemu"):
                s = c.get(vmm)
                if not s:
                    continue
                split = "–"
                if s["switchover_gap_ms"] is not None:
                    split = fmt(s["switchover_gap_ms"], 1)
                    if s["stop_to_resume_ms"] is not None:
                        split += (f" = {fmt(s['hb_to_stop_ms'], 1)} + "
                                  f"{fmt(s['stop_to_resume_ms'], 1)} + "
                                  f"{fmt(s['resume_to_hb_ms'], 1)}")
                L.append(f"| {size} | {rate} | {vmm} | {fmt(s['setup_ms'])} "
                         f"| {fmt(s['first_pass_ms'])} | {fmt(s['mbps'])} "
                         f"| {fmt(s['normal_pages'])} | "
                         f"{fmt(s['zero_pages'])} | {split} | "
                         f"{fmt(s['precopy_gap_ms'], 1)} | "
                         f"{fmt(s['dest_gap_ms'], 1)} | "
                         f"{fmt(s['baseline_gap_ms'], 1)} | "
                         f"{fmt(s['boot_ms'])} | {fmt(s['guest_rate'], 1)} |")
    return L


def runs_table(runs):
    L = ["| link | guest | rate | run | VMM | status | total (ms) | "
         "downtime (ms) | guest downtime (ms) | bytes | passes | load |",
         "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        status = r.get("status") or "?"
        if r.get("error"):
            status = "error: " + r["error"].splitlines()[0][:80] \
                .replace("|", "/")
        elif not r.get("converged"):
            status = f"no convergence ({status})"
        L.append(f"| {r['link']} | {r['size']} | {r['rate']} | {r['run']} "
                 f"| {r['vmm']} | {status} | {fmt(r.get('total_ms'))} | "
                 f"{fmt(r.get('downtime_ms'))} | "
                 f"{fmt(r.get('guest_downtime_ms'), 1)} | "
                 f"{r.get('transferred', '–')} | {r.get('passes', '–')} | "
                 f"{fmt(r.get('load'), 2)} |")
    return L


def target_summary(cells):
    counts = {}
    misses = []
    for (link, size, rate), c in sorted(cells.items()):
        verdicts, conv = cell_verdicts(c.get("kvmig"), c.get("qemu"))
        for label, r, bound, met in verdicts:
            m = counts.setdefault(label, [0, 0])
            m[0 if met else 1] += 1
            if not met:
                misses.append(f"{label} {link} {size} {rate} MiB/s: "
                              f"{r:.2f} (> {bound})")
        if conv is not None:
            m = counts.setdefault("converges where QEMU does", [0, 0])
            m[0 if conv else 1] += 1
            if not conv:
                misses.append(f"convergence {link} {size} {rate} MiB/s: "
                              f"QEMU converges, kvmig does not")
    L = [f"- {label}: met in {m[0]} cell(s), missed in {m[1]}"
         for label, m in counts.items()]
    if misses:
        L.append("- missed: " + "; ".join(misses))
    return L


def ordered(values, key=None):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return sorted(seen, key=key)


def size_key(s):
    return (len(s), s)


def plots(cells, links, sizes, rates, img_dir):
    """PNG files written (relative names), or a reason for none."""
    gp = shutil.which("gnuplot")
    if not gp:
        return [], ("gnuplot is not installed (Debian gnuplot-nox; "
                    "bench/compare.sh installs it as root)")
    os.makedirs(img_dir, exist_ok=True)
    made = []
    for link in links:
        for size in sizes:
            rs = [r for r in rates if (link, size, r) in cells]
            if len(rs) < 2:
                continue
            stem = f"compare-{link}-{size}"
            dat = os.path.join(img_dir, stem + ".dat")
            with open(dat, "w") as f:
                f.write("# idx rate k_total q_total k_dt q_dt k_gdt q_gdt\n")
                for i, rate in enumerate(rs):
                    c = cells[(link, size, rate)]
                    row = [str(i), str(rate)]
                    for key in ("total_ms", "downtime_ms",
                                "guest_downtime_ms"):
                        for vmm in ("kvmig", "qemu"):
                            s = c.get(vmm)
                            v = s.get(key) if s and s["ok"] else None
                            if v is not None and key != "total_ms":
                                v = max(v, 0.5)  # log scale
                            row.append("?" if v is None else f"{v:.3f}")
                    f.write(" ".join(row) + "\n")
            for kind, cols, ylabel, log in (
                    ("downtime", [(5, "kvmig, VMM-reported", 1, 1),
                                  (7, "kvmig, guest-observed", 1, 2),
                                  (6, "QEMU, VMM-reported", 2, 1),
                                  (8, "QEMU, guest-observed", 2, 2)],
                     "downtime (ms, log scale)", True),
                    ("total", [(3, "kvmig", 1, 1), (4, "QEMU", 2, 1)],
                     "total migration time (ms)", False)):
                png = f"{stem}-{kind}.png"
                script = [
                    "set terminal pngcairo size 800,500 noenhanced",
                    f"set output '{os.path.join(img_dir, png)}'",
                    "set datafile missing '?'",
                    f'set title "{kind} against dirty rate: {size} guest, '
                    f'{link}\\n(median; a missing point = no convergence '
                    f'in the time limit)"',
                    "set xlabel 'guest dirty rate (MiB/s)'",
                    f"set ylabel '{ylabel}'",
                    "set key top left", "set grid",
                    f"set xrange [-0.3:{len(rs) - 0.7}]",
                    "set yrange [*:*]" if log else "set yrange [0:*]",
                ]
                if log:
                    script.append("set logscale y")
                series = []
                for col, title, color, dash in cols:
                    series.append(
                        f"'{dat}' using 1:{col}:xticlabels(2) with "
                        f"linespoints lw 2 pt 7 lc {color} dt {dash} "
                        f"title '{title}'")
                script.append("plot " + ", ".join(series))
                p = subprocess.run([gp], input="\n".join(script) + "\n",
                                   capture_output=True, text=True)
                if p.returncode == 0:
                    made.append(png)
                else:
                    return made, f"gnuplot failed: {p.stderr.strip()}"
            os.unlink(dat)
    return made, None


def write(runs, meta, args):
    cells = summarize(runs)
    links = ordered((r["link"] for r in runs),
                    key=lambda x: (x != "loopback", x))
    sizes = ordered((r["size"] for r in runs), key=size_key)
    rates = ordered(r["rate"] for r in runs)
    nruns = max(r["run"] for r in runs)
    L = ["# kvmig against QEMU: live migration side by side (issue 4)", ""]
    cmds = meta.get("commands") or [args.command]
    L.append("- command: " + ", then ".join(f"`{c}`" for c in cmds))
    dates = sorted(meta.get("dates") or [meta.get("started", "?")])
    L.append(f"- date: {dates[0]}" + (f" to {dates[-1]} (runs files "
                                       f"started)" if len(dates) > 1
                                       else ""))
    for m in meta.get("machine") or machine():
        if m.startswith("kvmig:") and meta.get("kvmig_binary"):
            m = f"kvmig: {meta['kvmig_binary']}"
        L.append(f"- {m}")
    L.append(f"- QEMU: {meta.get('qemu', '?')}, `-enable-kvm -cpu "
             f"host,-arch-capabilities -nodefaults -display none -no-reboot "
             f"-serial stdio -m SIZE -smp 2 -kernel guest.elf -append ...`; "
             f"destination the same without `-append`, with `-incoming "
             f"tcp:HOST:PORT` (`-kernel` kept: the multiboot option ROM "
             f"is a RAM block both sides must have)")
    L.append("- kvmig: `kvmig run --memory SIZE --cpus 2 --kernel guest.elf "
             "--append ... --console stdio`; destination `kvmig run "
             "--memory SIZE --cpus 2 --incoming tcp:HOST:PORT`")
    L.append("- guest: the project's guest.elf, 2 vCPUs both running the "
             "workload, `mem=max(64,rate) rate=RATE pattern=random`, "
             f"{2.2} s of workload before `migrate`")
    bw = meta.get("max_bandwidth")
    L.append(f"- migration: `migrate-set-parameters` downtime-limit "
             f"{meta.get('downtime_limit', '?')} ms and max-bandwidth "
             f"{bw} bytes/s (= {bw / 2**30 if bw else 0:.0f} GiB/s: no cap) "
             f"on both, read back with query-migrate-parameters; "
             f"`migrate uri=tcp:...`; up to {nruns} runs per cell, median "
             f"of the converged runs; a migration still running after "
             f"{meta.get('timeout', 60):.0f} s is cancelled and counted "
             f"as no convergence. The two VMMs' runs alternate.")
    for name, text in (meta.get("links") or {}).items():
        L.append(f"- link `{name}`: {text}")
    L.append("")
    L.append("Each cell is `kvmig / QEMU = ratio kvmig/QEMU`. Total time "
             "and VMM downtime are query-migrate's `total-time` and "
             "`downtime`; bytes is `ram.transferred`; passes is "
             "`ram.dirty-sync-count`. Guest-observed downtime is the "
             "largest gap between host-timestamped heartbeats (one per ms "
             "per vCPU) across the source's and the destination's consoles "
             "from `migrate` on, the same code for both VMMs. Targets "
             "(ratios, where both converge): total time ≤ 0.7, downtime ≤ "
             "0.5 (checked on both downtimes), bytes ≤ 1.0; kvmig "
             "converges wherever QEMU does (a VMM converges in a cell when "
             "most of its runs do).")
    L.append("")
    for link in links:
        L.append(f"## {link}")
        L.append("")
        L += main_table(cells, link, sizes, rates, meta.get("timeout", 60))
        L.append("")
    L.append("## Targets")
    L.append("")
    L += target_summary(cells) or ["- no cell with both VMMs measured"]
    L.append("")
    made, why = plots(cells, links, sizes, rates, args.img)
    L.append("## Plots")
    L.append("")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    for png in made:
        rel = os.path.relpath(os.path.join(args.img, png), out_dir)
        L.append(f"![{png}]({rel})")
    if why:
        L.append(f"(plots skipped: {why})")
    L.append("")
    L.append("## Where the time goes")
    L.append("")
    L.append("Medians over converged runs. setup = query-migrate "
             "`setup-time`; first pass ends = time from `migrate` until "
             "`ram.dirty-sync-count` reaches 2 (both count the sync that "
             "starts dirty tracking as 1; polled every 50 ms, the same for "
             "both VMMs); mbps = "
             "`ram.mbps` (QEMU: average over the migration; kvmig: its "
             "last pass). The switch-over gap "
             "(last heartbeat on the source -> first on the destination) "
             "is split with the QMP events' timestamps (STOP on the "
             "source, RESUME on the destination). Precopy stall = the "
             "guest's largest heartbeat gap on the source before the "
             "switch-over (dirty tracking's cost); destination stall = "
             "its largest gap in the first 200 heartbeats on the "
             "destination; stall without migration = the guest's largest "
             "heartbeat gap in the 2 s before `migrate` (the host's "
             "scheduling alone).")
    for link in links:
        L.append("")
        L.append(f"### {link}")
        L.append("")
        L += breakdown_table(cells, link, sizes, rates)
    L.append("")
    L.append("## Runs")
    L.append("")
    L += runs_table(runs)
    text = "\n".join(L) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return text
