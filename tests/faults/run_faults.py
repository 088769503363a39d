#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The fault suite (issue 10, item 5): every case of cases.py against real
`kvmig run` pairs on loopback, TAP on stdout, one JSON row per case in the
results file.

Usage: run_faults.py KVMIG GUEST_ELF [--quick] [--only REGEX]
                     [--results FILE [--update]] [--label TEXT] [--list]

--quick runs the cases marked quick (`make check`); the default runs all
(`make faults`). --update keeps the results file's rows of the cases not
run now (`make faults FAULTS_ONLY=regex`). A case expected to fail until its fix lands prints
"ok N - name # SKIP expected to fail until fixed: ..." when it does fail,
and "ok" (XPASS noted) when it passes; any other failure is "not ok"."""
import json
import os
import re
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from vmlib import have_kvm  # noqa: E402
import harness  # noqa: E402
import cases as case_table  # noqa: E402


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        print("1..0 # SKIP usage: run_faults.py KVMIG GUEST_ELF [options]")
        return 0
    kvmig, guest = os.path.abspath(args[0]), os.path.abspath(args[1])
    quick = "--quick" in args
    only = args[args.index("--only") + 1] if "--only" in args else None
    results = args[args.index("--results") + 1] if "--results" in args \
        else None
    label = args[args.index("--label") + 1] if "--label" in args else ""
    update = "--update" in args
    reason = have_kvm()
    with tempfile.TemporaryDirectory(prefix="kvmig-faults-") as tmp:
        env = harness.Env(kvmig, guest, tmp)
        todo = case_table.all_cases(env)
        order = [c["name"] for c in todo]
        if quick:
            todo = [c for c in todo if c.get("quick")]
        if only:
            todo = [c for c in todo if re.search(only, c["name"])]
        if "--list" in args:
            for c in todo:
                print(f"{c['name']:32} {c['group']:22} {c['fault']}")
            return 0
        print(f"1..{len(todo)}", flush=True)
        if reason:
            for i, c in enumerate(todo, 1):
                print(f"ok {i} - {c['name']} # SKIP {reason}")
            return 0
        print(f"# commit protocol in this build: {env.commit_protocol}; "
              f"x-migrate-settle: {env.has_settle}", flush=True)
        rows, failed = [], 0
        t0 = time.monotonic()
        for i, c in enumerate(todo, 1):
            r = harness.run_case(env, c)
            if c.get("note"):
                r["case_note"] = c["note"]
            rows.append(r)
            v = r.get("verdict")
            line = f"{c['name']}: runs {r.get('runs')}, expected " \
                   f"{c['expect']}"
            if v == "skip":
                print(f"ok {i} - {c['name']} # SKIP {r['note']}", flush=True)
                continue
            if v in ("pass", "xpass"):
                print(f"ok {i} - {line}" +
                      (" (XPASS: remove its xfail mark)" if v == "xpass"
                       else ""), flush=True)
            elif v == "xfail":
                print(f"ok {i} - {line} # SKIP expected to fail until "
                      f"fixed ({c['xfail']}): {'; '.join(r['problems'])}",
                      flush=True)
            else:
                failed += 1
                print(f"not ok {i} - {line}", flush=True)
                for p in r.get("problems", []) + [r.get("note", "")]:
                    if p:
                        print(f"# {p}")
            print(f"#   fired: {r.get('fired', '')}", flush=True)
            for s in ("source", "destination"):
                rep = r.get(s) or {}
                print(f"#   {s}: {rep.get('status')} exit {rep.get('exit')}"
                      f" {rep.get('error-desc') or ''}", flush=True)
            print(f"#   detect {r.get('detect_s')} ({r.get('seconds')} s)",
                  flush=True)
            if results:
                rows_out = merged(results, rows, order) if update else rows
                # --update: the time of every case, not of this run's
                took = sum(r.get("seconds", 0) for r in rows_out) \
                    if update else time.monotonic() - t0
                write(results, rows_out, env, took, label)
        return 1 if failed else 0


def merged(path, rows, order):
    """--update: the rows of this run replace those of the same cases in
    the results file; the others stay (in the case table's order)."""
    try:
        old = json.load(open(path))["cases"]
    except (OSError, ValueError, KeyError):
        return rows
    by = {r["case"]: r for r in old}
    by.update({r["case"]: r for r in rows})
    return [by[n] for n in order if n in by]


def write(path, rows, env, seconds, label):
    doc = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                      time.gmtime()),
           "build": label,
           "link_timeout": env.link_timeout,
           "verify_sections": env.verify_sections,
           "commit_protocol": env.commit_protocol,
           "settle_command": env.has_settle,
           "bounds": {"detect_s": harness.DETECT_S,
                      "x-return-path-timeout_ms": harness.RP_TIMEOUT_MS,
                      "freeze_s": harness.FREEZE_S,
                      "resolve_s": harness.RESOLVE_S,
                      "recover_s": harness.RECOVER_S},
           "seconds": round(seconds), "cases": rows}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
