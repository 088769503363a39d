# SPDX-License-Identifier: MIT
"""The capability report (issue 5, bench/results/caps-latest.md): one
section per benchmark (runs tagged --bench), each with a table of every
profile side by side (kvmig / QEMU = ratio), the benchmark's own verdict
(XBZRLE's byte cut, compression's time cut, auto-converge's convergence),
the multifd throughput against the machine's 2-stream TCP limit, and every
run."""
import json
import os

import caps
import report
from report import MIB, fmt, median

BENCHES = {  # name: (title, what is measured, target)
    "xbzrle": (
        "XBZRLE: a workload that rewrites a few bytes of each page",
        "The guest's `pattern=small-writes` rewrites qword 0 of each page "
        "it dirties. Bytes are `ram.transferred` with plain precopy and "
        "with the `xbzrle` capability, for each VMM.",
        "kvmig's bytes cut ≥ 3× by XBZRLE (plain / xbzrle); with xbzrle, "
        "total time and downtime kvmig/QEMU ≤ 1.0"),
    "compression": (
        "Compression on multifd channels over a shaped link",
        "A compressible guest (`fill=sparse`: one scrambled qword in 8, a "
        "fixed filler between) over the shaped link; total time with each "
        "`multifd-compression` against multifd without compression, for "
        "each VMM (lz4: kvmig only).",
        "zstd cuts kvmig's total time ≥ 2× against multifd + none; total "
        "time and downtime kvmig/QEMU ≤ 1.0"),
    "auto-converge": (
        "auto-converge: a workload plain precopy cannot finish",
        "The 1024 MiB/s workload over the shaped link, plain precopy and "
        "with `auto-converge`; max throttle = the largest "
        "`cpu-throttle-percentage` seen while polling query-migrate every "
        "50 ms.",
        "with auto-converge, the migration converges (kvmig and QEMU) "
        "where plain precopy does not"),
    "tls": (
        "TLS on (issue 12), kvmig against QEMU with the same certificates",
        "Both VMMs get the same x509 credentials (certtool, made for the "
        "run; `tls-creds-x509,id=tls0,...,verify-peer=on` on both sides) "
        "and `tls-creds=tls0`, `tls-hostname=localhost` on both; the "
        "destination starts with `incoming defer`. `plain` rows (where "
        "run) are the same cell without TLS: what TLS costs each VMM.",
        "total time kvmig/QEMU ≤ 0.5 in every cell with TLS on"),
    "tls-1g": (
        "TLS over the 1 Gbit/s link",
        "The same cell plain and with TLS (x509, as above) over the link "
        "shaped to 1 Gbit/s: the link is the limit, not the cipher.",
        "TLS costs ≤ 5 % of kvmig's total time (TLS / plain ≤ 1.05)"),
    "caps": (
        "Every capability, kvmig against QEMU",
        "Each profile on its own (the profile's workload where it has "
        "one: small-writes for xbzrle, fill=sparse for compression).",
        "total time and downtime kvmig/QEMU ≤ 1.0 for every capability"),
}
ORDER = ["xbzrle", "compression", "auto-converge", "caps", "tls",
         "tls-1g"]
RATIO_TARGETS = (("total_ms", "total time", 1.0),
                 ("downtime_ms", "downtime (VMM)", 1.0))
# A benchmark whose ratio targets differ (issue 12: TLS rows only).
BENCH_TARGETS = {"tls": (("total_ms", "total time", 0.5),), "tls-1g": ()}


def summarize(runs):
    """{(bench, link, size, rate, workload, profile): {vmm: summary}}"""
    groups = {}
    for r in runs:
        key = (r.get("bench") or "caps", r["link"], r["size"], r["rate"],
               r.get("workload") or "", r.get("profile") or "plain")
        groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        cell = report.summarize(rs)[(key[1], key[2], key[3])]
        for vmm, s in cell.items():
            mine = [r for r in rs if r["vmm"] == vmm]
            ok = [r for r in mine if r.get("converged")]
            s["max_throttle"] = median(r.get("max_throttle") for r in ok)
            s["max_throttle_all"] = max(
                (r["max_throttle"] for r in mine
                 if r.get("max_throttle") is not None), default=None)
            for f in ("pages", "bytes", "cache-miss", "cache-miss-rate",
                      "encoding-rate", "overflow", "cache-size"):
                s["xb_" + f] = median((r.get("xbzrle_cache") or {}).get(f)
                                      for r in ok)
            s["error_text"] = next((r["error"] for r in mine
                                    if r.get("error")), None)
        out[key] = cell
    return out


def ordered(values):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def profile_order(name):
    names = list(caps.PROFILES)
    return names.index(name) if name in names else len(names)


def verdicts(k, q, bench=None, prof=None):
    out = []
    targets = RATIO_TARGETS
    if bench in BENCH_TARGETS:
        p = caps.PROFILES.get(prof)
        targets = BENCH_TARGETS[bench] if p and p.tls else ()
    if k and q and k["converges"] and q["converges"]:
        for key, label, bound in targets:
            r = report.ratio(k, q, key)
            if r is not None:
                out.append(f"{label} ≤ {bound}: "
                           + ("met" if r <= bound else "**missed**"))
    return out


def throttle_text(s):
    if s is None:
        return "–"
    if s["max_throttle_all"] is None:
        return "–"
    if s["ok"] and s["max_throttle"] is not None:
        return f"{s['max_throttle']:.0f}"
    return f"({s['max_throttle_all']:.0f} at cancel)"


def conv(s):
    if s is None:
        return "not run"
    t = report.conv_text(s, None)
    if s.get("error_text"):
        t += f" ({short(s['error_text'])})"
    return t


def short(text, n=70):
    line = text.splitlines()[0] if text else ""
    line = line.replace("|", "/")
    return line if len(line) <= n else line[:n - 1] + "…"


def profile_table(cells, bench):
    keys = sorted((k for k in cells if k[0] == bench),
                  key=lambda k: (k[1] != "loopback", k[1],
                                 report.size_key(k[2]), k[3], k[4],
                                 profile_order(k[5])))
    L = ["| link | guest | workload | profile | total time (ms) | "
         "downtime, VMM (ms) | downtime, guest (ms) | bytes (MiB) | "
         "passes | max throttle (%) | converged | targets |",
         "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for key in keys:
        _, link, size, rate, workload, prof = key
        c = cells[key]
        k, q = c.get("kvmig"), c.get("qemu")
        p = caps.PROFILES.get(prof)
        qtext = conv(q) if q or (p and p.qemu) else "QEMU lacks it"
        marks = verdicts(k, q, bench, prof)
        L.append(f"| {link} | {size} | `{workload}` | {prof} | "
                 f"{report.triple(k, q, 'total_ms')} | "
                 f"{report.triple(k, q, 'downtime_ms')} | "
                 f"{report.triple(k, q, 'guest_downtime_ms', digits=1)} | "
                 f"{report.triple(k, q, 'transferred', MIB, 1)} | "
                 f"{report.passes_text(k)} / {report.passes_text(q)} | "
                 f"{throttle_text(k)} / {throttle_text(q)} | "
                 f"{conv(k)} / {qtext} | {'; '.join(marks) or '–'} |")
    return L


def peers(cells, key, prof):
    """The same cell (bench, link, size, rate, workload) with PROF."""
    return cells.get(key[:5] + (prof,))


def value(s, field):
    if not s or not s["ok"]:
        return None
    return s.get(field)


def cut_lines(cells, bench, base, field, label, target_prof, bound,
              unit_scale=1.0, unit=""):
    """One line per (cell, profile != base, VMM): base value / profile
    value, with the target checked for kvmig on TARGET_PROF."""
    L = []
    for key in sorted(k for k in cells if k[0] == bench and k[5] != base):
        b = peers(cells, key, base)
        if not b:
            continue
        p = caps.PROFILES.get(key[5])
        for vmm in ("kvmig", "qemu"):
            if p and not p.supported_by(vmm):
                continue
            x, y = value(b.get(vmm), field), value(cells[key].get(vmm),
                                                   field)
            if x is None or y is None or not y:
                if cells[key].get(vmm) or b.get(vmm):
                    L.append(f"- {vmm}, {key[1]} {key[2]} `{key[4]}`, "
                             f"{key[5]}: no cut (a side did not converge "
                             f"or failed)")
                continue
            cut = x / y
            line = (f"- {vmm}, {key[1]} {key[2]} `{key[4]}`: {label} "
                    f"{base} {x / unit_scale:.1f}{unit} / {key[5]} "
                    f"{y / unit_scale:.1f}{unit} = **{cut:.2f}×**")
            if vmm == "kvmig" and key[5] == target_prof:
                line += (f" (target ≥ {bound}×: "
                         + ("met" if cut >= bound else "**missed**") + ")")
            L.append(line)
    return L


def xbzrle_stats(cells):
    L = ["| link | guest | VMM | cache size (MiB) | pages | bytes (MiB) | "
         "cache misses | miss rate | encoding rate | overflows |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    n = 0
    for key in sorted(k for k in cells if k[5] == "xbzrle"):
        for vmm in ("kvmig", "qemu"):
            s = cells[key].get(vmm)
            if not s or s.get("xb_pages") is None:
                continue
            n += 1
            size = s["xb_cache-size"]
            L.append(f"| {key[1]} | {key[2]} | {vmm} | "
                     f"{fmt(None if size is None else size / MIB)} | "
                     f"{fmt(s['xb_pages'])} | "
                     f"{fmt((s['xb_bytes'] or 0) / MIB, 1)} | "
                     f"{fmt(s['xb_cache-miss'])} | "
                     f"{fmt(s['xb_cache-miss-rate'], 3)} | "
                     f"{fmt(s['xb_encoding-rate'], 1)} | "
                     f"{fmt(s['xb_overflow'])} |")
    return L if n else []


def convergence_lines(cells, bench):
    L = []
    for key in sorted(k for k in cells if k[0] == bench and
                      k[5] == "auto-converge"):
        plain = peers(cells, key, "plain") or {}
        for vmm in ("kvmig", "qemu"):
            a, p = cells[key].get(vmm), plain.get(vmm)
            if not a:
                continue
            line = (f"- {vmm}, {key[1]} {key[2]} `{key[4]}`: "
                    f"auto-converge {a['ok']}/{a['n']} converged")
            if p:
                line += f", plain {p['ok']}/{p['n']}"
            met = a["converges"] and (p is None or not p["converges"])
            if p is not None and p["converges"]:
                line += " (plain converges too: the workload is too easy)"
            else:
                line += (" (target: " + ("met" if met else "**missed**")
                         + ")")
            L.append(line)
    return L


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_memtest(path):
    """kvmig memtest --json summaries, one per line."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        return None
    return out


def memtest_rate(m):
    """Bytes per second of one `kvmig memtest --json` source summary:
    ram transferred over the time pages moved (total_ms less setup_ms and
    downtime_ms, which holds the digest check); None for another line or
    a failed run."""
    if m.get("role") != "source" or m.get("error") or \
            m.get("status") != "completed":
        return None
    total, ms = m.get("transferred"), m.get("total_ms")
    if not total or not ms:
        return None
    moving = ms - (m.get("setup_ms") or 0) - (m.get("downtime_ms") or 0)
    return float(total) * 1000.0 / float(moving if moving > 0 else ms)


def multifd_section(args):
    L = ["## multifd throughput against the machine's TCP limit", ""]
    tcp = load_json(args.tcp_limit) if args.tcp_limit else None
    mt = load_memtest(args.memtest) if args.memtest else None
    if tcp is None and mt is None:
        return L + ["(not measured: bench/caps.sh runs bench/tcp_limit and "
                    "kvmig memtest --multifd)", ""]
    streams = (tcp or {}).get("streams", {})
    one, two = streams.get("1"), streams.get("2")
    if tcp:
        L.append(f"- loopback TCP limit (bench/tcp_limit, "
                 f"{tcp.get('seconds')} s per measurement, "
                 f"{tcp.get('write_size', 0) >> 20} MiB writes from a "
                 f"page-aligned buffer, the reader discards): 1 stream "
                 f"{fmt((one or 0) / MIB)} MiB/s, **2 streams "
                 f"{fmt((two or 0) / MIB)} MiB/s**")
    rates = [x for x in (memtest_rate(m) for m in (mt or [])) if x]
    if mt is None:
        L.append("- kvmig memtest --multifd: not measured (see "
                 "bench/caps.sh: TODO until memtest has --multifd)")
    elif not rates:
        L.append("- kvmig memtest --multifd: no throughput in its output "
                 f"({args.memtest})")
    else:
        r = median(rates)
        line = (f"- kvmig memtest, 1 GiB of random pages, idle, multifd "
                f"2 channels, no compression: **{r / MIB:.0f} MiB/s** "
                f"(median of {len(rates)}; `transferred` over `total_ms` "
                f"less `setup_ms` and `downtime_ms`)")
        if two:
            ratio = r / two
            line += (f" = **{ratio:.2f}** × the 2-stream limit (target ≥ "
                     f"0.8: " + ("met" if ratio >= 0.8 else "**missed**")
                     + ")")
        L.append(line)
    L.append("")
    return L


def runs_table(runs):
    L = ["| bench | profile | link | guest | rate | run | VMM | status | "
         "total (ms) | downtime (ms) | guest downtime (ms) | bytes | passes "
         "| max throttle | xbzrle pages | load |",
         "|---|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:"
         "|---:|---:|"]
    for r in runs:
        status = r.get("status") or "?"
        if r.get("error"):
            status = "error: " + short(r["error"], 90)
        elif not r.get("converged"):
            status = f"no convergence ({status})"
        xb = (r.get("xbzrle_cache") or {}).get("pages")
        L.append(f"| {r.get('bench', '–')} | {r.get('profile', '–')} | "
                 f"{r['link']} | {r['size']} | {r['rate']} | {r['run']} | "
                 f"{r['vmm']} | {status} | {fmt(r.get('total_ms'))} | "
                 f"{fmt(r.get('downtime_ms'))} | "
                 f"{fmt(r.get('guest_downtime_ms'), 1)} | "
                 f"{r.get('transferred', '–')} | {r.get('passes', '–')} | "
                 f"{fmt(r.get('max_throttle'))} | {fmt(xb)} | "
                 f"{fmt(r.get('load'), 2)} |")
    return L


def header(runs, meta, args):
    L = ["# kvmig against QEMU: migration capabilities side by side "
         "(issue 5)", ""]
    cmds = meta.get("commands") or [args.command]
    L.append("- commands: " + ", then ".join(f"`{c}`" for c in cmds))
    dates = sorted(meta.get("dates") or [meta.get("started", "?")])
    L.append(f"- date: {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1
                                       else ""))
    for m in meta.get("machine") or report.machine():
        if m.startswith("kvmig:") and meta.get("kvmig_binary"):
            m = f"kvmig: {meta['kvmig_binary']}"
        L.append(f"- {m}")
    L.append(f"- QEMU: {meta.get('qemu', '?')}; both VMMs as in "
             f"bench/results/compare-latest.md (same guest, 2 vCPUs, "
             f"2.2 s of workload before `migrate`, downtime-limit "
             f"{meta.get('downtime_limit', '?')} ms, no bandwidth cap, "
             f"query-migrate polled every 50 ms, cancelled after "
             f"{meta.get('timeout', 60):.0f} s = no convergence, the VMMs' "
             f"runs alternate, median of the converged runs)")
    for name, text in (meta.get("links") or {}).items():
        L.append(f"- link `{name}`: {text}")
    L.append("")
    L.append("Profiles (bench/compare/caps.py), set with "
             "migrate-set-capabilities / migrate-set-parameters and read "
             "back, the same on both VMMs:")
    L.append("")
    for name in ordered(r.get("profile") or "plain" for r in runs):
        p = caps.PROFILES.get(name)
        if p:
            L.append(f"- `{name}`: {p.what}; {p.describe()}")
    L.append("")
    L.append("Each cell is `kvmig / QEMU = ratio kvmig/QEMU`; guest "
             "downtime is the largest gap of host-timestamped heartbeats "
             "across both consoles.")
    L.append("")
    return L


def write(runs, meta, args):
    cells = summarize(runs)
    L = header(runs, meta, args)
    benches = ordered(r.get("bench") or "caps" for r in runs)
    benches.sort(key=lambda b: ORDER.index(b) if b in ORDER else len(ORDER))
    for bench in benches:
        title, what, target = BENCHES.get(bench, (bench, "", ""))
        L += [f"## {title}", "", what, "", f"Target: {target}.", ""]
        L += profile_table(cells, bench)
        L.append("")
        if bench == "xbzrle":
            L += cut_lines(cells, bench, "plain", "transferred",
                           "bytes (MiB)", "xbzrle", 3, MIB, "")
            stats = xbzrle_stats({k: v for k, v in cells.items()
                                  if k[0] == bench})
            if stats:
                L += ["", "query-migrate `xbzrle-cache` at the end "
                      "(medians):", ""] + stats
            L.append("")
        elif bench == "compression":
            L += cut_lines(cells, bench, "multifd", "total_ms",
                           "total time (ms)", "multifd-zstd", 2)
            L.append("")
        elif bench == "auto-converge":
            L += convergence_lines(cells, bench)
            L.append("")
    L += multifd_section(args)
    L += ["## Runs", ""] + runs_table(runs)
    text = "\n".join(L) + "\n"
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return text
