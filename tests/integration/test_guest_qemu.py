#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The project's guest ELF boots under QEMU (issue 3): 2 vCPUs, heartbeats
from both, status lines, no CORRUPT, and a clean power-off after runtime=.

Usage: test_guest_qemu.py GUEST_ELF
QEMU's firmware runs emulated on this platform: the guest starts ~12 s
after launch.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402

QEMU = "qemu-system-x86_64"
RUNTIME = 5
PLAN = 6
STATUS = re.compile(rb"guest: vcpu=(\d+) t=(\d+) passes=\d+ "
                    rb"rate=[\d.]+MiB/s .* hb=(\d+) .*corrupt=(\d+)")


def skip_reason():
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible"
    if not shutil.which(QEMU):
        return f"{QEMU} not installed (apt-get install qemu-system-x86)"
    return None


def boot(elf, log, cpu):
    # -no-reboot: a triple fault ends QEMU instead of looping the firmware.
    argv = [QEMU, "-enable-kvm", "-cpu", cpu, "-nodefaults",
            "-display", "none", "-no-reboot", "-smp", "2", "-m", "512M",
            "-serial", f"file:{log}", "-kernel", elf,
            "-append", f"mem=32 rate=32 pattern=random runtime={RUNTIME}"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stderr, argv
    except subprocess.TimeoutExpired as e:
        return None, (e.stderr or b"").decode("utf-8", "replace"), argv


def main():
    tap = Tap(PLAN)
    reason = skip_reason()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    elf = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="kvmig-guest-qemu-") as d:
        log = os.path.join(d, "console.log")
        rc, err, argv = boot(elf, log, "host")
        if rc != 0 and "failed to set MSR 0x10a" in err:
            # QEMU 7.2 + PVM: KVM refuses QEMU's ARCH_CAPABILITIES value.
            rc, err, argv = boot(elf, log, "host,-arch-capabilities")
        out = open(log, "rb").read() if os.path.exists(log) else b""
    text = out.replace(b"*", b"").decode("utf-8", "replace")
    diag = f"{' '.join(argv)}\nrc={rc}\n--- stderr ---\n{err}\n" \
           f"--- console (no heartbeats) ---\n{text[-3000:]}"

    tap.ok(rc == 0, "QEMU exits 0 (guest powered off)", diag)
    tap.ok(b"guest: workload started (2 vcpus" in out,
           "the workload starts on both vCPUs", diag)

    last = {}
    for m in STATUS.finditer(out):
        last[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    tap.ok(set(last) == {0, 1} and all(t >= RUNTIME - 1
                                       for t, _ in last.values()),
           "status lines every second from vCPU 0 and 1",
           f"last status per vCPU (t, hb): {last}\n{diag}")

    beats = out.count(b"*")
    # Each vCPU counts its own heartbeats; the console must carry them.
    # Generous bounds: a busy 2-core host delays vCPUs.
    per_cpu_ok = all(hb >= 200 * (RUNTIME - 1) for _, hb in last.values())
    tap.ok(len(last) == 2 and per_cpu_ok and
           beats >= sum(hb for _, hb in last.values()),
           "heartbeats from both vCPUs arrive on the console",
           f"{beats} heartbeat bytes, per-vCPU counts {last}\n{diag}")

    corrupt = re.findall(rb"CORRUPT[^\n]*", out)
    tap.ok(not corrupt and
           re.search(rb"final check: \d+ pages verified by 2 of 2 vcpus, "
                     rb"0 corrupt", out) is not None,
           "no CORRUPT; final check of every page passes",
           b"\n".join(corrupt).decode() + "\n" + diag)
    tap.ok(out.rstrip(b"*\n").endswith(b"guest: power off"),
           "the last line is 'guest: power off'", diag)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
