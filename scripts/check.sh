#!/usr/bin/env bash
# Run every test: all suites in the normal build, the unit suite again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Ends with one plain line:
# "N passed, N failed, N skipped". Counts TAP test cases, not binaries.
set -uo pipefail
build=${1:-build}
asan=${2:-build-asan}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

meson test -C "$build" --print-errorlogs --num-processes 1 "${@:3}"
rc1=$?
meson test -C "$asan" --suite unit --print-errorlogs "${@:3}"
rc2=$?

python3 - "$build" "$asan" <<'PY'
import json, re, sys
passed = failed = skipped = 0
for d in sys.argv[1:]:
    try:
        lines = open(f"{d}/meson-logs/testlog.json").read().splitlines()
    except OSError:
        failed += 1
        print(f"no test log in {d}")
        continue
    for line in lines:
        t = json.loads(line)
        cases = 0
        for out in (t.get("stdout") or "").splitlines():
            m = re.match(r"^(not ok|ok)\b.*?(#\s*(SKIP|skip).*)?$", out)
            if not m:
                continue
            cases += 1
            if m.group(1) == "not ok":
                failed += 1
            elif m.group(2):
                skipped += 1
            else:
                passed += 1
        # A binary that crashed before printing, or failed on its own.
        if t["result"] in ("FAIL", "TIMEOUT", "ERROR") and cases == 0:
            failed += 1
        elif t["result"] in ("FAIL", "TIMEOUT", "ERROR"):
            if not any(re.match(r"^not ok", o) for o in (t.get("stdout") or "").splitlines()):
                failed += 1
        elif t["result"] == "SKIP" and cases == 0:
            skipped += 1
        elif cases == 0 and t["result"] == "OK":
            passed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY
rc3=$?
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ $rc3 -eq 0 ]
