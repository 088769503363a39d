# SPDX-License-Identifier: MIT
"""Links the migration runs over.

- loopback: source and destination on 127.0.0.1, no shaping.
- NAME=RATE (e.g. 1g=1gbit, 10g=10gbit): a network namespace holding one
  end of a veth pair, both ends shaped with tc tbf to RATE (each
  direction), addresses 10.213.0.1 (here) and 10.213.0.2 (namespace).
  The destination VMM runs inside the namespace; the source stays here,
  so the migration stream crosses the shaped link.

A ShapedLink is a context manager: it always deletes its namespace (and so
the veth pair) on exit, and deletes the namespaces left by earlier,
killed runs (kvcmpPID whose PID is gone) before creating its own.
"""
import os
import re
import socket
import subprocess
import time

# Named after this process, so that two harnesses never touch each
# other's link (and a leftover of a killed one can be told apart).
PREFIX = "kvcmp"
PID = os.getpid()
NS = f"{PREFIX}{PID}"
HOST_IF = f"kvc{PID}h"
NS_IF = f"kvc{PID}n"
HOST_ADDR = f"10.213.{PID % 250}.1"
NS_ADDR = f"10.213.{PID % 250}.2"


class LinkError(Exception):
    pass


def sh(*argv, ns=None, check=True):
    if ns:
        argv = ("ip", "netns", "exec", ns) + argv
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise LinkError(f"{' '.join(argv)}: exit {p.returncode}: "
                        f"{p.stderr.strip()}")
    return p


def rate_bits(text):
    """'1gbit' / '10gbit' / '500mbit' -> bits per second."""
    t = text.lower().rstrip("it").rstrip("b")
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}
    if t and t[-1] in mult:
        return float(t[:-1]) * mult[t[-1]]
    return float(t)


class Loopback:
    name = "loopback"
    rate = None
    netns = None
    dest_host = "127.0.0.1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def describe(self):
        return "loopback TCP (127.0.0.1), no shaping"


class ShapedLink:
    netns = NS
    dest_host = NS_ADDR

    def __init__(self, name, rate):
        self.name = name
        self.rate = rate
        self.measured_bps = None

    def describe(self):
        m = ""
        if self.measured_bps:
            m = f", measured {self.measured_bps / 1e9:.2f} Gbit/s " \
                f"(one TCP stream, 2 s)"
        return (f"veth pair into network namespace `{NS}`, tc tbf "
                f"{self.rate} each way{m}")

    def __enter__(self):
        remove_stale()
        teardown()
        try:
            self._setup()
        except BaseException:
            teardown()
            raise
        return self

    def __exit__(self, *exc):
        teardown()
        return False

    def _setup(self):
        bits = rate_bits(self.rate)
        # tbf needs a bucket of at least one (GSO) packet and, at high
        # rates, a few ms worth so that timer granularity does not cap it.
        burst = max(256 * 1024, int(bits / 8 / 250))
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name",
           NS_IF)
        sh("ip", "link", "set", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        sh("ip", "addr", "add", f"{NS_ADDR}/30", "dev", NS_IF, ns=NS)
        sh("ip", "link", "set", NS_IF, "up", ns=NS)
        sh("ip", "link", "set", "lo", "up", ns=NS)
        for dev, ns in ((HOST_IF, None), (NS_IF, NS)):
            sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
               self.rate, "burst", str(burst), "latency", "20ms", ns=ns)
        self.measured_bps = measure(2.0)


def remove_stale():
    out = sh("ip", "netns", "list", check=False).stdout
    for name in re.findall(rf"^{PREFIX}(\d+)\b", out, re.M):
        if not os.path.exists(f"/proc/{name}"):
            sh("ip", "netns", "del", f"{PREFIX}{name}", check=False)


def teardown():
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)


def measure(seconds, port=5999):
    """One TCP stream from here into the namespace: bits per second
    (a python receiver in the namespace, a sender here)."""
    recv = subprocess.Popen(
        ["ip", "netns", "exec", NS, "python3", "-c",
         "import socket,sys\n"
         "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
         "socket.SO_REUSEADDR,1)\n"
         f"s.bind(('{NS_ADDR}',{port}));s.listen(1)\n"
         "print('ready',flush=True)\n"
         "c,_=s.accept()\n"
         "n=0\n"
         "while True:\n"
         "  d=c.recv(1<<20)\n"
         "  if not d: break\n"
         "  n+=len(d)\n"
         "print(n,flush=True)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        if recv.stdout.readline().strip() != "ready":
            return None
        s = socket.create_connection((NS_ADDR, port), timeout=10)
        buf = b"\0" * (1 << 20)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            s.sendall(buf)
        s.close()
        n = int(recv.stdout.readline().strip() or 0)
        return n * 8 / (time.monotonic() - t0)
    except (OSError, ValueError):
        return None
    finally:
        recv.kill()
        recv.wait()


def make(spec):
    """'loopback' or NAME=RATE."""
    if spec == "loopback":
        return Loopback()
    if "=" not in spec:
        raise ValueError(f"bad link {spec!r}: loopback or NAME=RATE "
                         f"(e.g. 1g=1gbit)")
    name, rate = spec.split("=", 1)
    rate_bits(rate)
    return ShapedLink(name, rate)

