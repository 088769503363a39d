#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The fault proxy itself, against a plain TCP peer on loopback: it
forwards both ways; cuts exactly at a byte offset, at a pattern plus a
delta, at a return-path message before forwarding it; flips one byte;
black-holes and restores; truncates one direction; of two alternative
triggers (first_of) only the first acts; logs where it acted.
Usage: test_proxy.py"""
import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from kvmig_testlib import Tap  # noqa: E402
from faultproxy import Proxy, Rule, first_of  # noqa: E402


class Peer:
    """The 'destination': accepts one connection, keeps what it reads."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.data = b""
        self.eof = threading.Event()
        self.conn = None
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self.conn, _ = self.lsock.accept()
        self.ready.set()
        while True:
            try:
                d = self.conn.recv(65536)
            except OSError:
                d = b""
            if not d:
                self.eof.set()
                return
            self.data += d

    def close(self):
        self.lsock.close()
        if self.conn:
            self.conn.close()


def recv_until_eof(s, timeout=3):
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return out, True
            out += d
    except (socket.timeout, OSError):
        return out, False


def main():
    tap = Tap(10)
    payload = bytes(range(256)) * 64          # 16 KiB

    # plain forwarding both ways
    peer = Peer()
    px = Proxy(peer.port)
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(payload)
    peer.ready.wait(3)
    peer.conn.sendall(b"back")
    c.shutdown(socket.SHUT_WR)
    back, eof = recv_until_eof(c, 1)
    peer.eof.wait(3)
    tap.ok(peer.data == payload and back == b"back",
           "forwards both directions unchanged",
           f"{len(peer.data)} bytes, back {back!r}")
    c.close(), px.close(), peer.close()

    # cut at byte offset, in the middle of a chunk
    peer = Peer()
    px = Proxy(peer.port, [Rule("cut", "s2d", offset=1000)])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(payload)
    peer.eof.wait(3)
    tap.ok(peer.data == payload[:1000] and "cut conn 0 s2d byte 1000"
           in px.fired_at(), "cut at byte 1000: exactly 1000 bytes arrive",
           f"{len(peer.data)}; {px.fired_at()}")
    c.close(), px.close(), peer.close()

    # cut at a pattern + delta, the pattern split across two sends
    peer = Peer()
    px = Proxy(peer.port, [Rule("cut", "s2d", pattern=b"KVMIGDEC",
                                delta=3)])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(b"x" * 100 + b"KVMI")
    time.sleep(0.01)
    c.sendall(b"GDEC" + b"y" * 100)
    peer.eof.wait(3)
    tap.ok(peer.data == b"x" * 100 + b"KVM",
           "cut at pattern+3 across a split: the bytes before arrive",
           repr(peer.data[-20:]))
    c.close(), px.close(), peer.close()

    # a partial match that is not the pattern is not held for long
    peer = Peer()
    px = Proxy(peer.port, [Rule("cut", "s2d", pattern=b"KVMIGDEC")])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(b"abcKVM")
    time.sleep(0.3)
    tap.ok(peer.data == b"abcKVM",
           "a tail that only looks like the pattern's start is forwarded",
           repr(peer.data))
    c.close(), px.close(), peer.close()

    # the return path: cut when the second SHUT-type message begins,
    # before forwarding any byte of it
    peer = Peer()
    px = Proxy(peer.port, [Rule("cut", "d2s", rp_type=1, nth=0)])
    c = socket.create_connection(("127.0.0.1", px.port))
    peer.ready.wait(3)
    pong = struct.pack(">HHI", 2, 4, 0x00010004)
    shut = struct.pack(">HHI", 1, 4, 0)
    peer.conn.sendall(pong + pong[:3])
    time.sleep(0.01)
    peer.conn.sendall(pong[3:] + shut)
    got, eof = recv_until_eof(c)
    tap.ok(got == pong + pong and eof and
           px.rp_log[:3] == [(2, 4, 0), (2, 4, 8), (1, 4, 16)],
           "return path: cut at SHUT, the PONGs before it arrive",
           f"{got!r} {px.rp_log}")
    c.close(), px.close(), peer.close()

    # flip one byte
    peer = Peer()
    px = Proxy(peer.port, [Rule("flip", "s2d", offset=5, mask=0x0f)])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
    peer.eof.wait(3)
    want = bytearray(payload)
    want[5] ^= 0x0f
    tap.ok(peer.data == bytes(want), "flip: only byte 5 differs",
           f"{len(peer.data)}")
    c.close(), px.close(), peer.close()

    # black hole, then the link comes back
    peer = Peer()
    px = Proxy(peer.port, [Rule("blackhole", "s2d", offset=100)])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(payload)
    time.sleep(0.3)
    held = len(peer.data)
    px.restore()
    c.shutdown(socket.SHUT_WR)
    peer.eof.wait(3)
    tap.ok(held == 100 and peer.data == payload,
           "black hole at 100: nothing more until restore, then all",
           f"{held} then {len(peer.data)}")
    c.close(), px.close(), peer.close()

    # truncate: this direction ends, the other goes on
    peer = Peer()
    px = Proxy(peer.port, [Rule("truncate", "s2d", offset=10)])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(payload)
    peer.eof.wait(3)
    peer.conn.sendall(b"still here")
    c.settimeout(3)
    tap.ok(peer.data == payload[:10] and peer.eof.is_set() and
           c.recv(100) == b"still here",
           "truncate: end of input after 10 bytes, the return way works",
           f"{len(peer.data)}")
    c.close(), px.close(), peer.close()

    # alternatives: the first trigger to come acts, the other never
    peer = Peer()
    alt = first_of(Rule("flip", "s2d", pattern=b"BBBB", delta=-2),
                   Rule("flip", "s2d", pattern=b"AAAA", mask=0x20))
    px = Proxy(peer.port, alt)
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(b"x" * 10 + b"AAAA" + b"y" * 10 + b"BBBB")
    c.shutdown(socket.SHUT_WR)
    peer.eof.wait(3)
    tap.ok(peer.data == b"x" * 10 + b"aAAA" + b"y" * 10 + b"BBBB" and
           alt[1].fired.is_set() and alt[0].where is None,
           "first_of: the first of two alternative triggers acts, alone",
           f"{peer.data!r} {px.fired_at()}")
    c.close(), px.close(), peer.close()

    # a call at a point: the direction holds while the callback runs
    peer = Peer()
    seen = []
    px = Proxy(peer.port, [Rule("call", "s2d", offset=50,
                                func=lambda r: seen.append(len(peer.data)))])
    c = socket.create_connection(("127.0.0.1", px.port))
    c.sendall(b"z" * 50)
    time.sleep(0.1)
    c.sendall(b"z" * 50)
    c.shutdown(socket.SHUT_WR)
    peer.eof.wait(3)
    tap.ok(seen == [50] and len(peer.data) == 100,
           "call at byte 50: runs once, after 50 bytes arrived", f"{seen}")
    c.close(), px.close(), peer.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
