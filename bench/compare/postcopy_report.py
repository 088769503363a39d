# SPDX-License-Identifier: MIT
"""The postcopy report (issue 11, bench/results/postcopy-latest.md): for
each benchmark of bench/postcopy.sh (runs tagged pc-link, pc-cap,
pc-fault) one table, kvmig / QEMU = ratio where both completed, medians
over the runs; the fault-service percentiles; every run."""
import report
from postcopy import dist_percentile
from report import MIB, fmt, median

BENCHES = {  # name: (title, what)
    "pc-link": (
        "Postcopy where precopy does not converge: the 1 Gbit/s link",
        "1G and 4G guests at 256 and 1024 MiB/s over the 1 Gbit/s link "
        "(veth + tc tbf), no bandwidth cap."),
    "pc-cap": (
        "Postcopy where precopy does not converge: a 32 MiB/s cap",
        "max-bandwidth 32 MiB/s on loopback, guests dirtying 64 MiB/s "
        "(twice the cap). The cap is precopy's; each VMM's postcopy runs "
        "at its default (QEMU 7.2: max-postcopy-bandwidth 0, no cap)."),
    "pc-fault": (
        "Page-fault service on loopback while background pages stream",
        "A 1G guest rewriting all of its RAM (rate 1024) switched after "
        "the first pass: nearly every page is missing on the destination "
        "and the background stream runs the whole time. Per fault, the "
        "time from the destination reading the fault to the page placed "
        "(QEMU 7.2: its trace events, paired by page; kvmig: its own "
        "figures)."),
}
ORDER = ["pc-link", "pc-cap", "pc-fault"]
AUTO_TITLE = "x-postcopy-auto over the comparison matrix (`pc-auto`)"
AUTO_WHAT = (
    "kvmig alone, at its defaults (`defaults`: x-compress auto, precopy "
    "only) and with postcopy-ram on both sides and x-postcopy-auto on "
    "the source (`postcopy-auto`), runs alternating; no "
    "migrate-start-postcopy: the source switches by itself or not at "
    "all; and with postcopy-ram alone (`postcopy-ram`, never switched: "
    "what enabling postcopy costs precopy). A migration not completed "
    "within the time limit counts as not converged.")


def key_of(r):
    return (r.get("bench") or "", r["link"], r["size"], r["rate"],
            r.get("max_bandwidth"), r.get("profile") or "")


def summarize(runs):
    cells = {}
    for r in runs:
        cells.setdefault(key_of(r), {}).setdefault(r["vmm"], []).append(r)
    out = {}
    for key, by_vmm in cells.items():
        out[key] = {}
        for vmm, rs in by_vmm.items():
            ok = [r for r in rs if r.get("converged")]
            s = {"n": len(rs), "ok": len(ok),
                 "postcopy": sum(1 for r in ok if r.get("postcopy")),
                 "corrupt": sum(r.get("corrupt", 0) or 0 for r in rs),
                 "error": next((r["error"] for r in rs if r.get("error")),
                               None)}
            for k in ("total_ms", "transferred", "switch_ms",
                      "switchover_gap_ms", "postcopy_gap_ms", "postcopy_ms",
                      "postcopy_requests", "downtime_ms", "load",
                      "trace_p50_us", "trace_p99_us", "trace_max_us",
                      "trace_mean_us", "trace_faults", "switch_remaining"):
                s[k] = median(r.get(k) for r in ok)
            for k in ("postcopy-blocktime", "postcopy-latency",
                      "x-postcopy-latency-p50", "x-postcopy-latency-p99"):
                s[k] = median((r.get("dst_figures") or {}).get(k)
                              for r in ok)
            s["vcpu_blocktime"] = median(
                sum((r.get("dst_figures") or {}).get(
                    "postcopy-vcpu-blocktime") or [0]) for r in ok)
            dists = [(r.get("dst_figures") or {}).get(
                "postcopy-latency-dist") for r in ok]
            s["dist"] = merge_dists(d for d in dists if d)
            s["trace_dist"] = merge_dists(r.get("trace_dist") for r in ok
                                          if r.get("trace_dist"))
            out[key][vmm] = s
    return out


def merge_dists(dists):
    out = []
    for d in dists:
        for i, c in enumerate(d):
            while len(out) <= i:
                out.append(0)
            out[i] += c
    return out


def ratio(k, q, field):
    if not (k and q) or k.get(field) is None or not q.get(field):
        return None
    return k[field] / q[field]


def pair(k, q, field, scale=1.0, digits=0):
    def one(s):
        if s is None:
            return "not run"
        if not s["ok"]:
            return "failed"
        v = s.get(field)
        return fmt(None if v is None else v / scale, digits)
    text = f"{one(k)} / {one(q)}"
    r = ratio(k, q, field)
    if r is not None:
        text += f" = **{r:.2f}**"
    return text


def done(s):
    if s is None:
        return "–"
    t = f"{s['postcopy']}/{s['n']}"
    if s["error"]:
        t += f" ({s['error'].splitlines()[0][:60]})"
    return t


def cap_text(v):
    if not v or v >= 100 << 30:
        return "none"
    return f"{v // MIB} MiB/s"


def bucket_text(dist, p):
    b = dist_percentile(dist, p)
    if b is None:
        return "–"
    return f"[{b[0]}, {b[1]}) µs"


def fault_text(vmm, s):
    """What the destination itself reported about its faults."""
    if s is None or not s["ok"]:
        return "–"
    parts = []
    if s.get("postcopy-latency") is not None:
        parts.append(f"mean {s['postcopy-latency'] / 1000:.0f} µs")
    if s.get("x-postcopy-latency-p50") is not None:
        parts.append(f"p50 {s['x-postcopy-latency-p50'] / 1000:.0f} µs, "
                     f"p99 {s['x-postcopy-latency-p99'] / 1000:.0f} µs")
    elif s["dist"]:
        parts.append(f"p50 in {bucket_text(s['dist'], 50)}, p99 in "
                     f"{bucket_text(s['dist'], 99)}")
    if s.get("postcopy-blocktime") is not None:
        parts.append(f"blocktime {s['postcopy-blocktime']:.0f} ms "
                     f"(vCPUs {s['vcpu_blocktime']:.0f} ms)")
    return "; ".join(parts) or "–"


def cell_table(cells, bench):
    rows = ["| guest | rate (MiB/s) | cap | profile | total time (ms) | "
            "bytes (MiB) | switch at (ms) | pause at the switch (ms) | "
            "longest gap in postcopy (ms) | switch → completed (ms) | "
            "page requests | kvmig's destination | QEMU's destination | "
            "completed in postcopy | load |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
            "---|---:|"]
    for key in sorted((k for k in cells if k[0] == bench),
                      key=lambda k: (k[1], report.size_key(k[2]), k[3],
                                     k[5])):
        c = cells[key]
        k, q = c.get("kvmig"), c.get("qemu")
        loads = [s["load"] for s in (k, q) if s and s.get("load")]
        rows.append(
            f"| {key[2]} | {key[3]} | {cap_text(key[4])} | {key[5]} | "
            f"{pair(k, q, 'total_ms')} | "
            f"{pair(k, q, 'transferred', MIB, 1)} | "
            f"{pair(k, q, 'switch_ms')} | "
            f"{pair(k, q, 'switchover_gap_ms', digits=1)} | "
            f"{pair(k, q, 'postcopy_gap_ms', digits=1)} | "
            f"{pair(k, q, 'postcopy_ms')} | "
            f"{pair(k, q, 'postcopy_requests')} | "
            f"{fault_text('kvmig', k)} | {fault_text('qemu', q)} | "
            f"{done(k)} / {done(q)} | "
            f"{fmt(max(loads) if loads else None, 1)} |")
    return "\n".join(rows)


def fault_table(cells):
    rows = ["| profile | VMM | faults timed (median per run) | p50 (µs) | "
            "p99 (µs) | max (µs) | mean (µs) | p50 / p99 bucket | "
            "longest gap in postcopy (ms) | completed in postcopy |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for key in sorted(k for k in cells if k[0] == "pc-fault"):
        for vmm in ("kvmig", "qemu"):
            s = cells[key].get(vmm)
            if s is None:
                continue
            if s.get("trace_p50_us") is not None:
                p50, p99 = s["trace_p50_us"], s["trace_p99_us"]
                mx, mean, n = (s["trace_max_us"], s["trace_mean_us"],
                               s["trace_faults"])
                dist = s["trace_dist"]
            else:
                p50 = None if s.get("x-postcopy-latency-p50") is None \
                    else s["x-postcopy-latency-p50"] / 1000
                p99 = None if s.get("x-postcopy-latency-p99") is None \
                    else s["x-postcopy-latency-p99"] / 1000
                mean = None if s.get("postcopy-latency") is None \
                    else s["postcopy-latency"] / 1000
                mx, n, dist = None, sum(s["dist"]) or None, s["dist"]
            rows.append(
                f"| {key[5]} | {vmm} | {fmt(n)} | {fmt(p50)} | {fmt(p99)} | "
                f"{fmt(mx)} | {fmt(mean)} | {bucket_text(dist, 50)} / "
                f"{bucket_text(dist, 99)} | "
                f"{fmt(s.get('postcopy_gap_ms'), 1)} | {done(s)} |")
    return "\n".join(rows)


def runs_table(runs):
    rows = ["| bench | profile | guest | rate | run | VMM | status | "
            "total (ms) | MiB | switch at (ms) | pause (ms) | "
            "postcopy gap (ms) | requests | destination figures | "
            "trace p50/p99 (µs) | load |",
            "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
            "---|---|---:|"]
    for r in runs:
        figs = r.get("dst_figures") or {}
        fig = ", ".join(f"{k.replace('postcopy-', '')}={v}"
                        for k, v in figs.items()
                        if not isinstance(v, list) or len(v) <= 4)
        tr = "–" if r.get("trace_p50_us") is None else \
            f"{r['trace_p50_us']:.0f} / {r['trace_p99_us']:.0f}"
        st = r.get("status") or "?"
        if r.get("error"):
            st = "error: " + r["error"].splitlines()[0][:60]
        rows.append(
            f"| {r.get('bench')} | {r.get('profile')} | {r['size']} | "
            f"{r['rate']} | {r['run']} | {r['vmm']} | {st} | "
            f"{fmt(r.get('total_ms'))} | "
            f"{fmt((r.get('transferred') or 0) / MIB, 1)} | "
            f"{fmt(r.get('switch_ms'))} | "
            f"{fmt(r.get('switchover_gap_ms'), 1)} | "
            f"{fmt(r.get('postcopy_gap_ms'), 1)} | "
            f"{fmt(r.get('postcopy_requests'))} | {fig or '–'} | {tr} | "
            f"{fmt(r.get('load'), 1)} |")
    return "\n".join(rows)


def auto_table(runs):
    """pc-auto: {(link, size, rate): {profile: [runs]}} -> the table and
    the verdicts (every cell converges with it; a cell that converged
    without it keeps its total time within 1.05x)."""
    cells = {}
    for r in runs:
        if r.get("bench") != "pc-auto":
            continue
        cells.setdefault((r["link"], r["size"], r["rate"]), {}) \
            .setdefault(r.get("profile"), []).append(r)
    if not cells:
        return None
    rows = ["| link | guest | rate (MiB/s) | total time without (ms) | "
            "postcopy-ram only (ms) | total time with (ms) | with / "
            "without | switched to postcopy | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for key in sorted(cells, key=lambda k: (k[0], report.size_key(k[1]),
                                           k[2])):
        only = [r for r in cells[key].get("postcopy-ram", [])
                if r.get("converged")]
        ot = median(r.get("total_ms") for r in only)
        base = cells[key].get("defaults", [])
        auto = cells[key].get("postcopy-auto", [])
        b_ok = [r for r in base if r.get("converged")]
        a_ok = [r for r in auto if r.get("converged")]
        bt = median(r.get("total_ms") for r in b_ok)
        at = median(r.get("total_ms") for r in a_ok)
        switched = [r for r in auto if r.get("postcopy_auto_reason")]
        ratio_ = at / bt if at and bt else None
        base_conv = 2 * len(b_ok) > len(base)
        verdict = []
        verdict.append(("converges: met" if 2 * len(a_ok) > len(auto)
                        else "converges: **missed**"))
        if base_conv and ratio_ is not None:
            verdict.append("≤ 1.05× without: " +
                           ("met" if ratio_ <= 1.05 else "**missed**"))
        rows.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {fmt(bt)} "
            f"({len(b_ok)}/{len(base)}) | {fmt(ot)} | {fmt(at)} ({len(a_ok)}/"
            f"{len(auto)}) | {fmt(ratio_, 2)} | {len(switched)}/"
            f"{len(auto)} | {'; '.join(verdict)} |")
    reasons = [r["postcopy_auto_reason"] for r in runs
               if r.get("bench") == "pc-auto" and
               r.get("postcopy_auto_reason")]
    text = "\n".join(rows)
    if reasons:
        text += "\n\nA reason, as query-migrate showed it: \"" + \
            reasons[0] + "\""
    return text


def write(runs, meta, args):
    cells = summarize(runs)
    out = ["# Postcopy, kvmig against QEMU 7.2 (issue 11)", "",
           "Generated by `bench/postcopy.sh` (bench/compare/, "
           "`--caps postcopy,postcopy-preempt`); commands: "
           + "; ".join(f"`{c}`" for c in meta.get("commands", [])) + ".",
           f"Started: {', '.join(meta.get('dates', []))}. "
           f"QEMU: {meta.get('qemu', '?')}. kvmig: "
           f"{meta.get('kvmig_binary') or '?'}.", "",
           "Each cell: median over the runs that completed; `kvmig / "
           "QEMU = ratio`. Switch: `migrate-start-postcopy` as soon as "
           "query-migrate (polled every 10 ms) shows dirty-sync-count 2 "
           "(the first pass over RAM ended). Pause at the switch: last "
           "heartbeat on the source to the first on the destination. "
           "Longest gap in postcopy: between the destination's heartbeats "
           "until the source reported completed.", ""]
    for bench in ORDER + sorted({k[0] for k in cells} - set(ORDER)):
        if bench == "pc-auto":
            continue
        if not any(k[0] == bench for k in cells):
            continue
        title, what = BENCHES.get(bench, (bench, ""))
        out += [f"## {title} (`{bench}`)", "", what, "",
                cell_table(cells, bench), ""]
        if bench == "pc-fault":
            out += ["Per-fault service time:", "", fault_table(cells), ""]
    auto = auto_table(runs)
    if auto:
        out += [f"## {AUTO_TITLE}", "", AUTO_WHAT, "", auto, ""]
    out += ["## Every run", "", runs_table(runs), ""]
    text = "\n".join(out)
    with open(args.out, "w") as f:
        f.write(text)
    return text
