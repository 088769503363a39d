# SPDX-License-Identifier: MIT
"""VM-level helpers for kvmig's integration tests (standard library only).

- Qmp: a small synchronous QMP client (greeting, negotiation, commands,
  events kept aside).
- Vm: a `kvmig run` process whose console (stdout) is read by a thread that
  timestamps every chunk with the host's monotonic clock, so heartbeats can
  be counted and the guest-observed pause measured.
- guest_downtime_ms(): the largest gap between heartbeat arrivals across the
  source's and the destination's consoles, as issue 3 defines it.
"""
import json
import os
import re
import socket
import subprocess
import threading
import time

HEARTBEAT = b"*"


def have_kvm():
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible to this user"
    return None


class QmpError(Exception):
    pass


class Qmp:
    """address: a unix socket path, "unix:PATH" or "tcp:HOST:PORT"."""

    def __init__(self, address, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = self._connect(address, timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.events = []
        self.greeting = self._recv()
        self.cmd("qmp_capabilities")

    @staticmethod
    def _connect(address, timeout):
        if address.startswith("tcp:"):
            host, port = address[4:].rsplit(":", 1)
            return socket.create_connection((host.strip("[]"), int(port)),
                                            timeout=timeout)
        path = address[5:] if address.startswith("unix:") else address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def _recv(self):
        dec = json.JSONDecoder()
        while True:
            text = self.buf.decode("utf-8", "replace").lstrip()
            if text:
                try:
                    obj, end = dec.raw_decode(text)
                    self.buf = text[end:].encode()
                    return obj
                except ValueError:
                    pass
            data = self.sock.recv(65536)
            if not data:
                raise QmpError("QMP connection closed")
            self.buf += data

    def execute(self, name, **args):
        """The whole reply object ({"return": ..} or {"error": ..})."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            obj = self._recv()
            if "event" in obj:
                self.events.append(obj)
                continue
            return obj

    def cmd(self, name, **args):
        r = self.execute(name, **args)
        if "error" in r:
            raise QmpError(f"{name}: {r['error']}")
        return r["return"]

    def wait_event(self, name, timeout=30, pred=None):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name and (pred is None or pred(e)):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                obj = self._recv()
            except (socket.timeout, QmpError):
                return None
            if "event" in obj:
                self.events.append(obj)

    def close(self):
        self.sock.close()


class Vm:
    """A `kvmig run` process. Console = stdout (timestamped chunks);
    stderr is kept as text for diagnostics."""

    def __init__(self, argv, label):
        self.label = label
        self.argv = argv
        self.chunks = []          # (monotonic time, bytes)
        self.cond = threading.Condition()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.err_lines = []
        self.exit_time = None
        threading.Thread(target=self._read_console, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_console(self):
        fd = self.p.stdout.fileno()
        while True:
            data = os.read(fd, 4096)
            now = time.monotonic()
            with self.cond:
                if not data:
                    self.exit_time = now
                    self.cond.notify_all()
                    return
                self.chunks.append((now, data))
                self.cond.notify_all()

    def _read_stderr(self):
        for line in self.p.stderr:
            with self.cond:
                self.err_lines.append(line.decode("utf-8", "replace")
                                      .rstrip("\n"))
                self.cond.notify_all()

    @property
    def console(self):
        with self.cond:
            return b"".join(c for _, c in self.chunks)

    @property
    def stderr(self):
        with self.cond:
            return "\n".join(self.err_lines)

    def heartbeat_times(self):
        with self.cond:
            return [t for t, c in self.chunks for _ in range(c.count(HEARTBEAT))]

    def heartbeats_since(self, t0):
        return sum(1 for t in self.heartbeat_times() if t >= t0)

    def wait_console(self, pattern, timeout):
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(b"".join(c for _, c in self.chunks))
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.exit_time is not None:
                    return None
                self.cond.wait(min(left, 0.5))

    def wait_heartbeats(self, n, timeout, since=0.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.heartbeats_since(since) >= n:
                return True
            if self.p.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def send_console(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def describe(self):
        tail = self.console[-2000:].decode("utf-8", "replace")
        tail = tail.replace(HEARTBEAT.decode(), "")
        return (f"[{self.label}] {' '.join(self.argv)} rc={self.p.poll()}\n"
                f"--- stderr ---\n{self.stderr}\n--- console (no heartbeats) ---\n{tail}")


def guest_downtime_ms(*vms, since=0.0):
    """Largest gap between consecutive heartbeats, all consoles merged."""
    times = sorted(t for vm in vms for t in vm.heartbeat_times() if t >= since)
    if len(times) < 2:
        return None
    return max(b - a for a, b in zip(times, times[1:])) * 1000.0


def corrupt_lines(*vms):
    out = []
    for vm in vms:
        out += re.findall(rb"CORRUPT[^\n]*", vm.console)
    return out


# ---- test scaffolding shared by test_vm_*.py ----

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class VmSet:
    """Starts kvmig VMs for one test and kills whatever is left at exit."""

    def __init__(self, kvmig, guest, tmpdir):
        self.kvmig = kvmig
        self.guest = guest
        self.tmp = tmpdir
        self.vms = []
        self.qmps = []
        self.n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for q in self.qmps:
            try:
                q.close()
            except OSError:
                pass
        for vm in self.vms:
            vm.kill()
        return False

    def _start(self, label, args):
        self.n += 1
        sock = os.path.join(self.tmp, f"qmp{self.n}.sock")
        vm = Vm([self.kvmig, "run", "--qmp", f"unix:{sock}", *args], label)
        vm.qmp_path = sock
        self.vms.append(vm)
        return vm

    def qmp(self, vm, timeout=10):
        q = Qmp(vm.qmp_path, timeout=timeout)
        self.qmps.append(q)
        return q

    def boot(self, label, append, memory="1G", cpus=2, extra=()):
        return self._start(label, ["--memory", memory, "--cpus", str(cpus),
                                   "--kernel", self.guest, "--append", append,
                                   *extra])

    def incoming(self, label, uri, memory="1G", cpus=2, extra=()):
        return self._start(label, ["--memory", memory, "--cpus", str(cpus),
                                   "--incoming", uri, *extra])


def wait_migration(q, timeout=60):
    """Poll query-migrate until a final status; the last reply."""
    deadline = time.monotonic() + timeout
    r = {}
    while time.monotonic() < deadline:
        r = q.cmd("query-migrate")
        if r.get("status") in ("completed", "failed", "cancelled"):
            return r
        time.sleep(0.05)
    return r


def workload_started(vm, timeout=30):
    return vm.wait_console(rb"guest: workload started", timeout) is not None
