#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""make bench-mapped: suspend and resume through a file at the disk's speed
(issue 13, items 1-2), against the disk itself and QEMU 7.2.

Every round, interleaved so that load hits all alike:
  disk   write ROUND_GIB of incompressible data with O_DIRECT (1 MiB
         writes, fsync), then read it back with O_DIRECT: the disk's own
         sequential speeds, in the same run;
  kvmig  a GUEST_GIB guest whose workload fills FILL_MIB with
         incompressible pages (fill=noise, rate=0), stopped with QMP
         `stop`, saved with mapped-ram + multifd (2 channels) + direct-io
         to file:PATH; resumed by a fresh `kvmig run --incoming defer` +
         migrate-incoming with the same settings;
  kvmig-1  the same with one channel: mapped-ram alone (no multifd, the
         migration and loading threads do the I/O), direct-io off
         (kvmig-1d: on);
  qemu   the same guest under QEMU 7.2 (no mapped-ram): `migrate
         exec:cat > PATH`, resumed by `-incoming defer` + `migrate-incoming
         exec:cat PATH`.
Save time: from `migrate` to the source's `completed`, plus a sync(2) of
what the page cache still holds (kvmig's direct-io leaves nothing there;
QEMU's cat leaves everything). Restore time: from `migrate-incoming` to
the destination's `completed`. The page cache is dropped (drop_caches)
before every restore and every disk read, so reads come from the disk.
The file's size: apparent (st_size) and on disk (st_blocks).

Instant resume (postcopy-ram on the destination, beyond QEMU 7.2): for
1 GiB and 16 GiB guests running a workload (`INSTANT_APPEND`), saved with
mapped-ram, the page cache dropped, a fresh `kvmig run --incoming defer`
with mapped-ram + postcopy-ram, then migrate-incoming: the time from that
command to the guest's first heartbeat on the console (host-timestamped,
tests/integration/vmlib.py), and when the filler had every page in.

--vmms picks the rows (default kvmig,kvmig-1,qemu); LABEL=VARIANT:BUILD
runs a variant from another build (A/B: `--vmms
main=kvmig-1:/path/build,kvmig-1`), interleaved like the rest.

Usage: bench/mapped.py BUILD [--rounds N] [--out FILE] [--no-instant]
       [--vmms kvmig,kvmig-1,kvmig-1d,qemu]
"""
import re
import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "compare"))
import vmlib  # noqa: E402
import vmms  # noqa: E402

GUEST_GIB = 4
FILL_MIB = 3072
APPEND = f"mem={FILL_MIB} rate=0 fill=noise vcpus=2"
DISK_GIB = 3
CHUNK = 1 << 20


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def disk_speeds(path):
    """(write B/s, read B/s) of DISK_GIB with O_DIRECT, 1 MiB at a time."""
    buf = mmap.mmap(-1, 64 * CHUNK)
    buf.write(os.urandom(64 * CHUNK))
    total = DISK_GIB << 30
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT,
                 0o600)
    t0 = time.monotonic()
    done = 0
    while done < total:
        at = (done // CHUNK) % 64 * CHUNK
        done += os.pwritev(fd, [memoryview(buf)[at:at + CHUNK]], done)
    os.fsync(fd)
    w = total / (time.monotonic() - t0)
    os.close(fd)
    drop_caches()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    t0 = time.monotonic()
    done = 0
    rbuf = mmap.mmap(-1, CHUNK)
    while done < total:
        done += os.preadv(fd, [rbuf], done)
    r = total / (time.monotonic() - t0)
    os.close(fd)
    os.unlink(path)
    return w, r


def wait_status(q, want, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        st = r.get("status")
        if st in want:
            return r
        if st in ("failed", "cancelled"):
            raise RuntimeError(f"migration {st}: {r}")
        time.sleep(0.01)
    raise RuntimeError(f"no {want} within {timeout} s: {r}")


def boot(vmm, tmp, label):
    qpath = os.path.join(tmp, f"{label}.qmp")
    vm = vmlib.Vm(vmm.source_argv(f"{GUEST_GIB}G", 2, APPEND, qpath), label)
    if not vm.wait_console(rb"workload started", 300):
        raise RuntimeError("the guest did not fill its memory\n"
                           + vm.describe())
    return vm, vmlib.Qmp(qpath, timeout=60)


INSTANT_APPEND = "mem=256 rate=64 pattern=hot-cold"
INSTANT_SIZES = ("1G", "16G")


def instant_round(vmm, tmp, size):
    """(ms to the first heartbeat after migrate-incoming, ms until the
    filler had every page, or None)."""
    path = os.path.join(tmp, "instant.img")
    qpath = os.path.join(tmp, "isrc.qmp")
    src = vmlib.Vm(vmm.source_argv(size, 2, INSTANT_APPEND, qpath), "isrc")
    if not src.wait_console(rb"workload started", 120):
        raise RuntimeError("the guest did not start\n" + src.describe())
    q = vmlib.Qmp(qpath, timeout=60)
    time.sleep(1)
    q.cmd("migrate-set-capabilities", capabilities=KVMIG_CAPS[:1])
    q.cmd("migrate", uri=f"file:{path}")
    wait_status(q, ("completed",))
    q.cmd("quit")
    src.wait(30)
    drop_caches()
    qpath = os.path.join(tmp, "idst.qmp")
    # The filler's "every page in" line is at info level.
    os.environ["KVMIG_LOG"] = "info"
    dst = vmlib.Vm(vmm.dest_argv(size, 2, "defer", qpath), "idst")
    del os.environ["KVMIG_LOG"]
    qd = vmlib.Qmp(qpath, timeout=60)
    qd.cmd("migrate-set-capabilities", capabilities=KVMIG_CAPS[:1] + [
        {"capability": "postcopy-ram", "state": True}])
    t0 = time.monotonic()
    qd.cmd("migrate-incoming", uri=f"file:{path}")
    dst.wait_heartbeats(1, 30, since=t0)
    first = [t for t in dst.heartbeat_times() if t >= t0]
    deadline = time.monotonic() + 120
    fill = None
    while fill is None and time.monotonic() < deadline:
        m = re.search(r"every page in memory ([0-9.]+) ms", dst.stderr)
        fill = float(m.group(1)) if m else None
        time.sleep(0.1)
    ok = dst.wait_heartbeats(500, 30, since=t0)
    dst.send_console(b"q")
    dst.wait(30)
    os.unlink(path)
    if not first or not ok:
        raise RuntimeError("instant resume: no heartbeats\n" + dst.describe())
    return (first[0] - t0) * 1000, fill


KVMIG_CAPS = [{"capability": "mapped-ram", "state": True},
              {"capability": "multifd", "state": True}]
KVMIG_PARAMS = {"multifd-channels": 2, "direct-io": True}

# Variant: (VMM kind, capabilities, parameters, what it is).
VARIANTS = {
    "kvmig": ("kvmig", KVMIG_CAPS, KVMIG_PARAMS,
              "mapped-ram + multifd (2 channels) + direct-io"),
    "kvmig-1": ("kvmig", KVMIG_CAPS[:1], {},
                "mapped-ram, one channel (no multifd), direct-io off"),
    "kvmig-1d": ("kvmig", KVMIG_CAPS[:1], {"direct-io": True},
                 "mapped-ram, one channel (no multifd), direct-io"),
    "qemu": ("qemu", [], {}, "`exec:cat`"),
}


class Target:
    """One row: a variant of a VMM from a build."""

    def __init__(self, label, variant, build):
        kind, self.caps, self.params, self.what = VARIANTS[variant]
        self.label = label
        self.vmm = vmms.make([kind], build)[0]
        self.name = self.vmm.name

    def configure(self, q):
        if self.caps:
            q.cmd("migrate-set-capabilities", capabilities=self.caps)
        if self.params:
            q.cmd("migrate-set-parameters", **self.params)


def parse_targets(spec, build):
    out = []
    for item in spec.split(","):
        label, _, rest = item.partition("=")
        variant, _, where = (rest or label).partition(":")
        out.append(Target(label, variant, where or build))
    return out


def one_round(t, tmp):
    vmm = t.vmm
    path = os.path.join(tmp, f"{t.label}.img")
    if os.path.exists(path):
        os.unlink(path)
    src, q = boot(vmm, tmp, f"{t.label}-src")
    q.cmd("stop")
    t.configure(q)
    uri = f"file:{path}" if vmm.name == "kvmig" else f"exec:cat > {path}"
    t0 = time.monotonic()
    q.cmd("migrate", uri=uri)
    wait_status(q, ("completed",))
    t_mig = time.monotonic() - t0
    os.sync()
    t_save = time.monotonic() - t0
    q.cmd("quit")
    src.wait(30)
    st = os.stat(path)
    drop_caches()
    qpath = os.path.join(tmp, f"{t.label}-dst.qmp")
    dst = vmlib.Vm(vmm.dest_argv(f"{GUEST_GIB}G", 2, "defer", qpath),
                   f"{t.label}-dst")
    qd = vmlib.Qmp(qpath, timeout=60)
    t.configure(qd)
    uri = f"file:{path}" if vmm.name == "kvmig" else f"exec:cat {path}"
    t0 = time.monotonic()
    qd.cmd("migrate-incoming", uri=uri)
    wait_status(qd, ("completed",))
    t_restore = time.monotonic() - t0
    state = qd.cmd("query-status")["status"]
    qd.cmd("quit")
    dst.wait(30)
    os.unlink(path)
    return {"save_s": t_save, "migrate_s": t_mig, "restore_s": t_restore,
            "size": st.st_size, "on_disk": st.st_blocks * 512,
            "state": state}


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--no-instant", action="store_true")
    ap.add_argument("--instant-only", action="store_true")
    ap.add_argument("--vmms", default="kvmig,kvmig-1,qemu")
    ap.add_argument("--out", default=os.path.join(
        HERE, "results", "mapped-latest.md"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-mapped drops the page cache: run it as root")
    kvmig, qemu = vmms.Kvmig(a.build), vmms.Qemu(a.build)
    targets = parse_targets(a.vmms, a.build)
    for v in [kvmig] + [t.vmm for t in targets]:
        why = v.check()
        if why:
            sys.exit(why)
    rows = {"disk": []}
    rows.update({t.label: [] for t in targets})
    loads = []
    instant = {size: [] for size in INSTANT_SIZES}
    with tempfile.TemporaryDirectory(prefix="kvmig-bench-mapped-",
                                     dir=a.dir) as tmp:
        for r in range(a.rounds if not a.no_instant else 0):
            for size in INSTANT_SIZES:
                ms, fill = instant_round(kvmig, tmp, size)
                instant[size].append((ms, fill, loadavg()))
                print(f"round {r + 1}: instant resume {size}: first "
                      f"heartbeat {ms:.1f} ms, every page in after {fill} "
                      f"ms (load {loadavg()})", flush=True)
        for r in range(a.rounds if not a.instant_only else 0):
            loads.append(loadavg())
            w, rd = disk_speeds(os.path.join(tmp, "disk.img"))
            rows["disk"].append((w, rd))
            print(f"round {r + 1}: disk write {w / 1e9:.2f} GB/s read "
                  f"{rd / 1e9:.2f} GB/s (load {loads[-1]})", flush=True)
            order = targets if r % 2 == 0 else targets[::-1]
            for v in order:
                res = one_round(v, tmp)
                rows[v.label].append(res)
                print(f"round {r + 1}: {v.label} save {res['save_s']:.2f} s "
                      f"(migrate {res['migrate_s']:.2f}) restore "
                      f"{res['restore_s']:.2f} s size {res['size']} "
                      f"on disk {res['on_disk']} ({res['state']})",
                      flush=True)
            loads.append(loadavg())
    text = report(a, rows, loads, qemu.version(), targets) \
        if rows["disk"] else ""
    text += report_instant(instant)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


def report_instant(instant):
    if not any(instant.values()):
        return ""
    lines = ["", "## Instant resume (postcopy-ram on the destination)", "",
             f"Guest workload `{INSTANT_APPEND}`, saved with mapped-ram, "
             "page cache dropped before each resume.", "",
             "| guest | runs | first heartbeat after migrate-incoming, ms "
             "(median, each) | every page in, ms (median) | load |",
             "|---|---|---|---|---|"]
    for size, runs in instant.items():
        ms = [x[0] for x in runs]
        fills = [x[1] for x in runs if x[1] is not None]
        lines.append(f"| {size} | {len(runs)} | {med(ms):.1f} ("
                     + ", ".join(f"{x:.1f}" for x in ms) + ") | "
                     + (f"{med(fills):.0f}" if fills else "-") + " | "
                     + " ".join(x[2] for x in runs) + " |")
    return "\n".join(lines) + "\n"


def report(a, rows, loads, qemu_version, targets):
    fill = FILL_MIB << 20
    dw = med([x[0] for x in rows["disk"]])
    dr = med([x[1] for x in rows["disk"]])
    kvm = [t for t in targets if t.name == "kvmig"]
    qem = [t for t in targets if t.name == "qemu"]
    lines = [
        "# bench-mapped: suspend and resume through a file",
        "",
        f"{a.rounds} rounds, interleaved (disk, then every row in "
        f"alternating order); medians. Guest {GUEST_GIB} GiB, "
        f"`{APPEND}` ({FILL_MIB} MiB of incompressible pages), stopped "
        f"before the save. "
        + " ".join(f"{t.label}: {t.what}"
                   + (f" ({t.vmm.build})" if t.name == "kvmig" else
                      f" ({qemu_version})") + ";" for t in targets)
        + f" Page cache dropped before every restore and disk read. Load "
        f"average {' '.join(loads)}.",
        "",
        "| | save | restore | file size | on disk |",
        "|---|---|---|---|---|",
        f"| disk (O_DIRECT, 1 MiB) | {dw / 1e9:.2f} GB/s | "
        f"{dr / 1e9:.2f} GB/s | | |",
    ]
    meds = {}
    for t in targets:
        k = rows[t.label]
        ks, kr = med([x["save_s"] for x in k]), med([x["restore_s"] for x in k])
        kd, ksz = med([x["on_disk"] for x in k]), med([x["size"] for x in k])
        meds[t.label] = (ks, kr, ksz, kd)
        if t.name == "kvmig":
            lines.append(
                f"| {t.label} | {ks:.2f} s = {fill / ks / 1e9:.2f} GB/s "
                f"({fill / ks / dw:.2f} x disk) | {kr:.2f} s = "
                f"{fill / kr / 1e9:.2f} GB/s ({fill / kr / dr:.2f} x disk) | "
                f"{ksz / 2**30:.2f} GiB | {kd / 2**30:.2f} GiB |")
        else:
            lines.append(f"| QEMU 7.2 | {ks:.2f} s | {kr:.2f} s | "
                         f"{ksz / 2**30:.2f} GiB | {kd / 2**30:.2f} GiB |")
    if kvm and qem:
        k, q = meds[kvm[0].label], meds[qem[0].label]
        lines.append(f"| {kvm[0].label} / QEMU | {k[0] / q[0]:.2f} | "
                     f"{k[1] / q[1]:.2f} | {k[2] / q[2]:.2f} | "
                     f"{k[3] / q[3]:.2f} |")
    lines += ["", "Every round (x disk: against that round's own disk "
              "speeds), save s / restore s:", "",
              "| round | disk write / read GB/s | "
              + " | ".join(t.label for t in targets) + " |",
              "|---|---|" + "---|" * len(targets)]
    for i, (w, r) in enumerate(rows["disk"]):
        cells = []
        for t in targets:
            x = rows[t.label][i] if i < len(rows[t.label]) else None
            if x is None:
                cells.append("-")
            elif t.name == "kvmig":
                cells.append(f"{x['save_s']:.2f} ({fill / x['save_s'] / w:.2f})"
                             f" / {x['restore_s']:.2f} "
                             f"({fill / x['restore_s'] / r:.2f})")
            else:
                cells.append(f"{x['save_s']:.2f} / {x['restore_s']:.2f}")
        lines.append(f"| {i + 1} | {w / 1e9:.2f} / {r / 1e9:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.SubprocessError) as e:
        sys.exit(f"bench-mapped: {e}")
