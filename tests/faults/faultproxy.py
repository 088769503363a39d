# SPDX-License-Identifier: MIT
"""A TCP proxy the fault suite controls (Python standard library only).

It listens on 127.0.0.1 (port 0: the kernel picks one) and forwards every
accepted connection to the destination's port: connection 0 is the main
channel (source -> destination: the stream; destination -> source: the
return path), connections 1.. are the multifd channels, in accept order.

Faults are Rules. A rule watches one direction ("s2d" or "d2s") of one
connection (or of every connection, conn=None) and fires once at a
trigger point:

  offset=N            byte N of that direction (0 = the first byte)
  pattern=B, nth=i    the start of the i-th occurrence (from 0) of bytes B,
  delta=D             plus D bytes (the point may lie inside or after B)
  rp_type=T, nth=i    the start of the i-th return-path message of type T
                      (be16 type, be16 length, payload: the d2s direction
                      of the main channel), plus delta
  now()               Proxy.fire(rule): at once, at the current offset

first_of(r1, r2, ...) makes rules alternatives: whichever trigger point
comes first acts, the others never do (they share one `fired`).

Actions, at the trigger point (bytes before it are forwarded, the byte at
it is not yet):

  cut        close both directions of that connection (FIN both ways)
  reset      close both directions with RST (SO_LINGER 0)
  blackhole  stop forwarding both directions, read nothing, keep the
             sockets open (as a firewall DROP: senders' buffers fill);
             Proxy.restore() forwards again from where it stopped
  flip       XOR the byte at the point with `mask` and go on
  truncate   forward nothing more in this direction and close its
             writing half (the receiver sees end of input); the other
             direction goes on
  stall      stop reading this direction (the receiver stalls; the
             sender's buffers fill); the other direction goes on;
             Proxy.restore() resumes
  call       hold this direction, call rule.func(rule) and go on

Every action is logged (Proxy.log: dicts with time, conn, dir, offset,
action, what triggered it) so a report can say where a cut happened.
"""
import select
import socket
import struct
import threading
import time

HOLD_BACK_S = 0.05   # how long a partial pattern match may hold bytes back


class Rule:
    def __init__(self, action, direction="s2d", conn=0, offset=None,
                 pattern=None, nth=0, delta=0, rp_type=None, mask=0xff,
                 func=None, label=None):
        assert action in ("cut", "reset", "blackhole", "flip", "truncate",
                          "stall", "call")
        assert direction in ("s2d", "d2s")
        self.action = action
        self.direction = direction
        self.conn = conn
        self.offset = offset
        self.pattern = pattern
        self.nth = nth
        self.delta = delta
        self.rp_type = rp_type
        self.mask = mask
        self.func = func
        self.label = label or action
        self.fired = threading.Event()
        self.manual = offset is None and pattern is None and rp_type is None
        self.where = None   # absolute offset it fired at
        self.t_fired = None
        self.seen = 0       # pattern/message occurrences so far
        self.after = -1     # matches before this offset were counted

    def describe(self):
        if self.offset is not None:
            t = f"{self.direction} byte {self.offset}"
        elif self.pattern is not None:
            t = f"{self.direction} pattern {self.pattern.hex()}#{self.nth}" \
                f"{'+%d' % self.delta if self.delta else ''}"
        elif self.rp_type is not None:
            t = f"d2s return-path type {self.rp_type:#x}#{self.nth}" \
                f"{'+%d' % self.delta if self.delta else ''}"
        else:
            t = "on demand"
        c = "any conn" if self.conn is None else f"conn {self.conn}"
        return f"{self.action} at {t} ({c})"


def first_of(*rules):
    """The rules as alternatives: the first to trigger acts, alone."""
    for r in rules[1:]:
        r.fired = rules[0].fired
    return list(rules)


class _Pipe:
    """One direction of one proxied connection, run by its own thread."""

    def __init__(self, proxy, conn, direction, src, dst):
        self.proxy = proxy
        self.conn = conn
        self.dir = direction
        self.src = src
        self.dst = dst
        self.pos = 0             # bytes of this direction forwarded
        self.rp_buf = b""        # return-path parser (d2s of conn 0)
        self.rp_start = 0        # absolute offset of rp_buf[0]
        self.rp_noted = False    # rp_buf's first header was looked at
        self.pend = []           # (absolute offset, rule)
        self.stopped = False     # stall
        self.closed = False
        self.hold = b""          # bytes held back (partial pattern, stop)
        self.hold_since = 0.0

    def rules(self):
        return [r for r in self.proxy.rules
                if not r.fired.is_set() and r.direction == self.dir and
                (r.conn is None or r.conn == self.conn) and
                not any(p[1] is r for p in self.pend)]

    def _scan(self, data, new_from):
        """data = held bytes + new bytes, data[0] at absolute self.pos;
        new bytes start at data[new_from]."""
        base = self.pos
        for r in self.rules():
            if r.offset is not None:
                self.pend.append((r.offset, r))
            elif r.pattern is not None:
                j = data.find(r.pattern)
                while j >= 0:
                    if base + j >= r.after:
                        r.after = base + j + 1
                        if r.seen == r.nth:
                            self.pend.append((base + j + r.delta, r))
                            r.seen += 1
                            break
                        r.seen += 1
                    j = data.find(r.pattern, j + 1)
        if self.dir == "d2s" and self.conn == 0:
            self._scan_rp(data[new_from:])

    def _scan_rp(self, new):
        self.rp_buf += new
        while len(self.rp_buf) >= 4:
            typ, ln = struct.unpack(">HH", self.rp_buf[:4])
            if not self.rp_noted:
                self.rp_noted = True
                self.proxy.note_rp(typ, ln, self.rp_start)
                for r in self.rules():
                    if r.rp_type == typ:
                        if r.seen == r.nth:
                            self.pend.append((self.rp_start + r.delta, r))
                        r.seen += 1
            if len(self.rp_buf) < 4 + ln:
                break
            self.rp_buf = self.rp_buf[4 + ln:]
            self.rp_start += 4 + ln
            self.rp_noted = False

    def _partial_tail(self, data):
        """How many bytes at the end of data could start a pattern."""
        keep = 0
        for r in self.rules():
            if r.pattern is None:
                continue
            before = max(0, -r.delta)   # the point lies before B
            for n in range(min(len(r.pattern) - 1, len(data)), 0, -1):
                if data.endswith(r.pattern[:n]):
                    keep = max(keep, min(len(data), n + before))
                    break
        return keep

    def feed(self, new):
        data = self.hold + new
        held = len(self.hold)
        self.hold = b""
        self._scan(data, held)
        keep = self._partial_tail(data)
        if keep:
            self.hold = data[-keep:]
            self.hold_since = time.monotonic()
            data = data[:-keep]
        self._forward(data)

    def flush_hold(self):
        data, self.hold = self.hold, b""
        self._forward(data)

    def _forward(self, data):
        while data and not self.closed:
            self.pend.sort(key=lambda p: p[0])
            due = [p for p in self.pend if p[0] < self.pos + len(data)]
            if not due:
                self._send(data)
                return
            at, rule = due[0]
            self.pend.remove(due[0])
            if rule.fired.is_set():   # an alternative (first_of) acted
                continue
            n = max(0, at - self.pos)
            self._send(data[:n])
            data = data[n:]
            data = self.proxy.act(self, rule, data)
            if data is None:
                return

    def _send(self, data):
        if not data or self.closed:
            return
        try:
            self.dst.sendall(data)
        except OSError:
            # the receiver is gone: the sender must learn it as it would
            # over a direct connection (its writes fail), not block on a
            # proxy that stopped reading
            self.proxy._log(self.conn, self.dir, self.pos, "peer-gone", "")
            self.proxy.close_conn(self.conn, rst=True)
            return
        self.pos += len(data)
        self.proxy.count(self.conn, self.dir, len(data))

    def run(self):
        while not self.closed and not self.proxy.stopping:
            if self.stopped or self.conn in self.proxy.blocked:
                time.sleep(0.02)
                continue
            if self.hold and time.monotonic() - self.hold_since >= \
                    HOLD_BACK_S:
                self.flush_hold()
                continue
            try:
                r, _, _ = select.select([self.src], [], [],
                                        HOLD_BACK_S if self.hold else 0.05)
            except (OSError, ValueError):
                break
            if not r or self.closed or self.stopped or \
                    self.conn in self.proxy.blocked:
                continue
            try:
                data = self.src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if self.closed:
                    break
                self.proxy._log(self.conn, self.dir, self.pos, "eof", "")
                self.flush_hold()
                self.closed = True
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                break
            self.feed(data)


class Proxy:
    def __init__(self, target_port, rules=(), host="127.0.0.1"):
        self.target = (host, target_port)
        self.rules = list(rules)
        self.log = []
        self.rp_log = []          # (type, len, d2s offset) of conn 0
        self.bytes = {}           # (conn, dir) -> forwarded
        self.lock = threading.RLock()
        self.conns = []           # [(a, b, pipes)]
        self.blocked = set()      # conns whose forwarding is stopped
        self.t0 = time.monotonic()
        self.lsock = socket.socket()
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self):
        return f"tcp:127.0.0.1:{self.port}"

    def add(self, rule):
        with self.lock:
            self.rules.append(rule)
        return rule

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target, timeout=5)
                b.settimeout(None)
            except OSError as e:
                self._log(len(self.conns), "s2d", 0, "connect-failed", str(e))
                a.close()
                continue
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                conn = len(self.conns)
                pipes = (_Pipe(self, conn, "s2d", a, b),
                         _Pipe(self, conn, "d2s", b, a))
                self.conns.append([a, b, pipes])
            self._log(conn, "s2d", 0, "accept", "")
            for p in pipes:
                threading.Thread(target=p.run, daemon=True).start()

    # -- actions ---------------------------------------------------------

    def act(self, pipe, rule, rest):
        """Carry out rule at pipe's current offset; rest = the bytes from
        the point on. Returns what is still to forward, or None."""
        rule.where = pipe.pos
        rule.t_fired = time.monotonic()
        rule.fired.set()
        self._log(pipe.conn, pipe.dir, pipe.pos, rule.action, rule.describe())
        a = rule.action
        if a in ("cut", "reset"):
            self.close_conn(pipe.conn, rst=(a == "reset"))
            return None
        if a == "flip":
            if not rest:
                return rest
            return bytes([rest[0] ^ rule.mask]) + rest[1:]
        if a == "truncate":
            pipe.closed = True
            try:
                pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return None
        if a == "stall":
            pipe.stopped = True
            pipe.hold = rest + pipe.hold
            pipe.hold_since = float("inf")
            return None
        if a == "blackhole":
            self.blocked.add(pipe.conn)
            pipe.hold = rest + pipe.hold
            pipe.hold_since = float("inf")
            return None
        if a == "call":
            rule.func(rule)
            return rest
        return rest

    def fire(self, rule, conn=0, direction=None):
        """Carry out a manual rule now, on connection conn (or every)."""
        with self.lock:
            targets = range(len(self.conns)) if conn is None else [conn]
            for c in targets:
                if c >= len(self.conns):
                    continue
                pipes = self.conns[c][2]
                p = pipes[0] if (direction or rule.direction) == "s2d" \
                    else pipes[1]
                if rule.action in ("cut", "reset"):
                    rule.where = p.pos
                    rule.t_fired = time.monotonic()
                    rule.fired.set()
                    self._log(c, p.dir, p.pos, rule.action, "on demand")
                    self.close_conn(c, rst=rule.action == "reset")
                elif rule.action == "blackhole":
                    rule.where = p.pos
                    rule.t_fired = time.monotonic()
                    rule.fired.set()
                    self._log(c, p.dir, p.pos, "blackhole", "on demand")
                    self.blocked.add(c)
                elif rule.action == "stall":
                    rule.where = p.pos
                    rule.t_fired = time.monotonic()
                    rule.fired.set()
                    self._log(c, p.dir, p.pos, "stall", "on demand")
                    p.stopped = True
                else:
                    raise ValueError(f"{rule.action} needs a trigger point")

    def restore(self):
        """The link comes back: forward again whatever was stopped."""
        with self.lock:
            self.blocked.clear()
            for c, (_, _, pipes) in enumerate(self.conns):
                for p in pipes:
                    if p.stopped:
                        p.stopped = False
                    if p.hold_since == float("inf"):
                        p.hold_since = 0.0   # its thread forwards it
            self._log(-1, "-", 0, "restore", "")

    def close_conn(self, conn, rst=False):
        with self.lock:
            a, b, pipes = self.conns[conn]
            for p in pipes:
                p.closed = True
            for s in (a, b):
                try:
                    if rst:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
                    else:
                        s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def cut_all(self):
        with self.lock:
            for c in range(len(self.conns)):
                self.close_conn(c)

    def close(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        self.cut_all()

    # -- bookkeeping -----------------------------------------------------

    def count(self, conn, direction, n):
        self.bytes[(conn, direction)] = self.bytes.get((conn, direction),
                                                       0) + n

    def note_rp(self, typ, ln, off):
        self.rp_log.append((typ, ln, off))

    def _log(self, conn, direction, offset, what, detail):
        self.log.append({"t": round(time.monotonic() - self.t0, 4),
                         "conn": conn, "dir": direction, "offset": offset,
                         "action": what, "detail": detail})

    def fired_at(self):
        """A short text: where each fired rule acted."""
        out = []
        for e in self.log:
            if e["action"] in ("cut", "reset", "blackhole", "flip",
                               "truncate", "stall", "call"):
                out.append(f"{e['action']} conn {e['conn']} {e['dir']} "
                           f"byte {e['offset']} @{e['t']:.2f}s")
        return "; ".join(out)
