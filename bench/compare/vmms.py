# SPDX-License-Identifier: MIT
"""The two VMMs the comparison drives, described only by their command
lines: everything after the process start (console, QMP, migration,
measurements) is the same code for both (driver.py).

Both get the same guest (BUILD/guest/guest.elf), the same kernel command
line, RAM size and vCPU count, a console on stdout (timestamped by
vmlib.Vm) and a QMP socket. QEMU's options are the ones this host needs
(docs/PLATFORM-NOTES.md): `-cpu host,-arch-capabilities` (plain `-cpu
host` aborts on MSR 0x10a under PVM), no default devices, no display.
"""
import os
import shutil


class Vmm:
    name = "?"
    # A directory made by tests/integration/tlslib.make_x509 (client/,
    # server/): both VMMs then get the same x509 credentials object
    # "tls0", as QEMU's -object tls-creds-x509 declares it (issue 12).
    tls_dir = None

    def tls_object(self, endpoint):
        """QEMU's tls-creds-x509 spec for endpoint, or None."""
        if not self.tls_dir:
            return None
        return (f"tls-creds-x509,id=tls0,dir={self.tls_dir}/{endpoint},"
                f"endpoint={endpoint},verify-peer=on")

    def source_argv(self, memory, cpus, append, qmp_path):
        raise NotImplementedError

    def dest_argv(self, memory, cpus, uri, qmp_path):
        raise NotImplementedError

    def fault_trace_argv(self, path):
        """Options making the destination log each postcopy fault and
        placement to PATH (postcopy.py), or None if it cannot."""
        return None

    def check(self):
        """None if the VMM can run here, else the reason it cannot."""
        return None

    def version(self):
        return "?"


class Kvmig(Vmm):
    name = "kvmig"

    def __init__(self, build):
        self.binary = os.path.join(build, "src", "cli", "kvmig")
        self.guest = os.path.join(build, "guest", "guest.elf")
        self.build = build

    def check(self):
        for f in (self.binary, self.guest):
            if not os.path.exists(f):
                return f"{f} is missing: build first (ninja -C {self.build})"
        return None

    def _objects(self, endpoint):
        spec = self.tls_object(endpoint)
        return ["--object", spec] if spec else []

    def source_argv(self, memory, cpus, append, qmp_path):
        return [self.binary, "run", "--memory", memory, "--cpus", str(cpus),
                "--kernel", self.guest, "--append", append,
                "--qmp", "unix:" + qmp_path, "--console", "stdio",
                *self._objects("client")]

    def dest_argv(self, memory, cpus, uri, qmp_path):
        return [self.binary, "run", "--memory", memory, "--cpus", str(cpus),
                "--incoming", uri, "--qmp", "unix:" + qmp_path,
                *self._objects("server")]


class Qemu(Vmm):
    name = "qemu"

    def __init__(self, build, binary="qemu-system-x86_64"):
        self.binary = shutil.which(binary) or binary
        self.guest = os.path.join(build, "guest", "guest.elf")

    def check(self):
        if not shutil.which(self.binary):
            return (f"{self.binary} is not installed (Debian package "
                    f"qemu-system-x86; scripts/deps.sh installs it)")
        if not os.path.exists(self.guest):
            return f"{self.guest} is missing: build first"
        return None

    def version(self):
        import subprocess
        try:
            out = subprocess.run([self.binary, "--version"],
                                 capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return out.splitlines()[0] if out else "?"

    def _common(self, memory, cpus, qmp_path, endpoint):
        spec = self.tls_object(endpoint)
        return [self.binary, "-enable-kvm", "-cpu", "host,-arch-capabilities",
                "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", "stdio", "-m", memory, "-smp", str(cpus),
                "-qmp", f"unix:{qmp_path},server=on,wait=off",
                *(["-object", spec] if spec else [])]

    def source_argv(self, memory, cpus, append, qmp_path):
        return self._common(memory, cpus, qmp_path, "client") + [
            "-kernel", self.guest, "-append", append]

    def dest_argv(self, memory, cpus, uri, qmp_path):
        # The destination needs the same machine; -kernel/-append too, so
        # that the option ROM QEMU builds for the multiboot loader is the
        # same size on both sides (RAM block list must match).
        return self._common(memory, cpus, qmp_path, "server") + [
            "-kernel", self.guest, "-incoming", uri]

    def fault_trace_argv(self, path):
        # QEMU 7.2 reports no per-fault time; its trace events do, with
        # gettimeofday's microseconds (-msg timestamp=on).
        events = ("postcopy_ram_fault_thread_request", "postcopy_place_page",
                  "postcopy_place_page_zero",
                  # Whether its blocktime accounting saw the fault (a
                  # vCPU thread it knows): postcopy.FaultTrace counts it.
                  "mark_postcopy_blocktime_begin")
        argv = ["-msg", "timestamp=on", "-D", path]
        for e in events:
            argv += ["-trace", f"enable={e}"]
        return argv


def make(names, build):
    known = {"kvmig": Kvmig, "qemu": Qemu}
    out = []
    for n in names:
        if n not in known:
            raise ValueError(f"unknown VMM {n!r} (known: kvmig, qemu)")
        out.append(known[n](build))
    return out
