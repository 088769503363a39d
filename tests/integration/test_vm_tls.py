#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Issue 12: TLS and authorization on every migration channel, from
outside the process. Credentials are made by certtool in a temp dir.

(a) x509 with verify-peer on both sides, an authz-list that allows the
    source's DN by glob: the guest migrates (--verify-ram), heartbeats go
    on; then the destination refuses a plaintext RESOLVE;
(b) the same with two multifd channels;
(c) PSK, with multifd and authz-simple naming the PSK user, and on
    one channel;
(d) each failure names its check on both sides, the source guest runs
    on and the destination keeps waiting: wrong CA, expired and
    not-yet-valid certificate, host name mismatch, PSK mismatch, unknown
    PSK user, authz refusal, a plaintext source to a TLS destination and
    a TLS source to a plaintext one, a handshake that stalls (both
    directions); after them the last destination still takes a proper
    source.
Usage: test_vm_tls.py KVMIG GUEST_ELF"""
import os
import socket
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import (VmSet, corrupt_lines, free_port, have_kvm,  # noqa: E402
                   wait_migration, workload_started)
import tlslib  # noqa: E402

PLAN = 40
VERIFY = ("--verify-ram",)
PSK_KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"


def set_params(q, **kw):
    q.cmd("migrate-set-parameters", **{k.replace("_", "-"): v
                                       for k, v in kw.items()})


def set_multifd(q, on, channels=2):
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": "multifd", "state": on}])
    if on:
        set_params(q, multifd_channels=channels)


def wait_status(q, want, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        st = q.cmd("query-status")["status"]
        if st == want or time.monotonic() > deadline:
            return st
        time.sleep(0.02)


def wait_stderr(vm, text, timeout=8):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in vm.stderr:
            return True
        time.sleep(0.05)
    return text in vm.stderr


class Ctx:
    def __init__(self, tap, vms, root):
        self.tap, self.vms, self.root = tap, vms, root
        self.src = self.qs = None
        self.src_objs = src_objects(root)

    def dest(self, label, objects, tls="tls0", authz="", multifd=False):
        """A destination with the source's command line (its client
        credentials, to be the next source) plus objects."""
        port = free_port()
        dst = self.vms.incoming(label, "defer",
                                extra=(*VERIFY, *self.src_objs, *objects))
        qd = self.vms.qmp(dst)
        set_params(qd, tls_creds=tls, tls_authz=authz)
        set_multifd(qd, multifd)
        qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        return dst, qd, port

    def migrate(self, port, creds, multifd=False, hostname=""):
        set_params(self.qs, tls_creds=creds, tls_hostname=hostname)
        set_multifd(self.qs, multifd)
        self.qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        return wait_migration(self.qs)

    def good(self, name, dst, qd, r):
        tap = self.tap
        tap.ok(r.get("status") == "completed", f"{name}: the migration "
               "completes", f"{r}\n{self.src.describe()}\n{dst.describe()}")
        ds = wait_status(qd, "running")
        ok = dst.wait_heartbeats(200, 10, since=time.monotonic())
        tap.ok(ds == "running" and ok and
               "ram-verify: RAM differs" not in dst.stderr,
               f"{name}: the guest runs at the destination (--verify-ram)",
               f"{ds}\n{dst.describe()}")
        self.src, self.qs = dst, qd

    def refused(self, name, dst, qd, r, src_says, dst_says):
        """A failed attempt: both messages, the source guest runs on, the
        destination runs nothing and still waits."""
        tap = self.tap
        err = r.get("error-desc", "")
        print(f"# {name}: the source: {err}")
        tap.ok(r.get("status") == "failed" and
               all(s in err for s in src_says),
               f"{name}: the source says {src_says}", f"{r}")
        seen = all(wait_stderr(dst, s) for s in dst_says)
        print(f"# {name}: the destination: {dst.stderr.splitlines()[-1]}")
        t0 = time.monotonic()
        tap.ok(seen and dst.p.poll() is None and
               qd.cmd("query-migrate").get("status") == "setup" and
               qd.cmd("query-status")["status"] != "running",
               f"{name}: the destination says {dst_says} and still waits",
               dst.describe())
        if not self.src.wait_heartbeats(50, 10, since=t0):
            print(f"# {name}: source heartbeats stopped")
            return False
        return wait_status(self.qs, "running") == "running"


def plaintext_listener(port, seen):
    """Accept one connection on port, keep its first bytes in seen."""
    srv = socket.create_server(("127.0.0.1", port))

    def run():
        c, _ = srv.accept()
        c.settimeout(5)
        try:
            seen.append(c.recv(5))
        except OSError:
            seen.append(b"")
        time.sleep(1)
        c.close()
        srv.close()
    threading.Thread(target=run, daemon=True).start()


def config_errors(c):
    """tls-creds / tls-authz naming nothing, or the wrong endpoint: refused
    at migrate-incoming (destination) and by migrate (source)."""
    tap = c.tap
    dst = c.vms.incoming("cfg-dst", "defer", extra=c.src_objs)
    qd = c.vms.qmp(dst)
    said = []
    for creds, authz in (("nope", ""), ("tlsc", ""), ("psk", "")):
        set_params(qd, tls_creds=creds, tls_authz=authz)
        r = qd.execute("migrate-incoming", uri="tcp:127.0.0.1:0")
        said.append(r.get("error", {}).get("desc", ""))
    tap.ok("No TLS credentials with id 'nope'" == said[0] and
           "'tlsc' has endpoint=client, but the destination needs "
           "endpoint=server" in said[1],
           "migrate-incoming refuses unknown tls-creds and a client "
           "endpoint", f"{said}")
    dst.kill()
    set_params(c.qs, tls_creds="nope")
    c.qs.cmd("migrate", uri="tcp:127.0.0.1:9")
    r = wait_migration(c.qs)
    tap.ok(r.get("status") == "failed" and "No TLS credentials with id "
           "'nope'" in r.get("error-desc", ""),
           "migrate with unknown tls-creds fails saying so", f"{r}")
    tap.ok(wait_status(c.qs, "running") == "running",
           "... and the source guest runs on")


def migrations(c):
    r, tap = c.root, c.tap
    allow_src = ["--object", '{"qom-type": "authz-list", "id": "auth0", '
                 '"policy": "deny", "rules": [{"match": "*CN=' +
                 tlslib.CLIENT_CN + '*", "policy": "allow", '
                 '"format": "glob"}]}']
    srv = tlslib.x509_object(f"{r}/server", "server")
    dst, qd, port = c.dest("x509-dst", srv + allow_src, authz="auth0")
    c.good("(a) x509 + authz-list glob", dst, qd, c.migrate(port, "tlsc"))
    # The destination now answers the switch-over's RESOLVE on its port:
    # only over TLS too, or anyone could settle a migration.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"KVMIGRES" + bytes(24))
        ok = wait_stderr(dst, "while running the migrated guest", 8)
    tap.ok(ok and "sent plaintext" in dst.stderr and
           wait_status(qd, "running") == "running",
           "(a) a plaintext RESOLVE at the destination is refused",
           dst.describe())

    # The destination's role now: it is the source of the next hop.
    dst, qd, port = c.dest("x509-mfd-dst",
                           tlslib.x509_object(f"{r}/server", "server"),
                           multifd=True)
    tap.ok(c.qs.cmd("query-migrate-parameters")["tls-creds"] == "tls0",
           # the destination's own setting, before it is a source
           "(b) query-migrate-parameters shows tls-creds")
    c.good("(b) x509 + multifd", dst, qd,
           c.migrate(port, "tlsc", multifd=True))

    psk = tlslib.make_psk(f"{r}/psk", {"qemu": PSK_KEY, "other": OTHER_KEY})
    dst, qd, port = c.dest("psk-dst", tlslib.psk_object(psk, "server") +
                           ["--object", "authz-simple,id=auth0,"
                            "identity=qemu"], authz="auth0", multifd=True)
    c.good("(c) PSK + multifd + authz-simple", dst, qd,
           c.migrate(port, "psk", multifd=True))
    dst, qd, port = c.dest("psk-one-dst", tlslib.psk_object(psk, "server"))
    c.good("(c) PSK on one channel", dst, qd, c.migrate(port, "psk"))


def failures(c):
    r, tap = c.root, c.tap
    srv = lambda d: tlslib.x509_object(f"{r}/{d}", "server")  # noqa: E731
    cases = [
        ("wrong CA", srv("server"), "tls0", "tlsother", "",
         ["not signed by the CA", "wrong CA"], ["the source refused this side's certificate"]),
        ("expired", srv("expired"), "tls0", "tlsc", "",
         ["certificate has expired"], ["the source refused this side's certificate"]),
        ("not yet valid", srv("future"), "tls0", "tlsc", "",
         ["not yet valid"], ["the source refused this side's certificate"]),
        ("host name", srv("wronghost"), "tls0", "tlsc", "",
         ["is not for host '127.0.0.1'"], ["the source refused this side's certificate"]),
        ("authz refusal", srv("server") + ["--object",
         "authz-list,id=auth0,policy=deny,rules.0.match=CN=nobody,"
         "rules.0.policy=allow"], "tls0", "tlsc", "auth0",
         ["Permission denied"],
         ["refused by tls-authz 'auth0'", tlslib.CLIENT_CN]),
        ("PSK mismatch", tlslib.psk_object(
            tlslib.make_psk(f"{r}/psk-bad", {"qemu": OTHER_KEY}), "server"),
         "tls0", "psk", "", ["PSK mismatch"], ["PSK mismatch"]),
        ("unknown PSK user", tlslib.psk_object(
            tlslib.make_psk(f"{r}/psk-nobob", {"qemu": PSK_KEY}), "server"),
         "tls0", "pskbob", "", ["PSK", "'bob'"],
         ["PSK user 'bob' is not in", "unknown PSK user"]),
        ("plaintext source", srv("server"), "tls0", "", "",
         ["answered with a TLS record", "tls-creds"],
         ["sent plaintext, not a TLS handshake"]),
        ("TLS source, plaintext destination", [], "", "tlsc", "",
         ["closed the connection during the TLS handshake"],
         ["began a TLS handshake, but this destination has no tls-creds"]),
    ]
    last = None
    for name, objs, dcreds, screds, authz, src_says, dst_says in cases:
        dst, qd, port = c.dest(f"bad-{len(c.vms.vms)}", objs, tls=dcreds,
                               authz=authz)
        res = c.migrate(port, screds)
        alive = c.refused(f"(d) {name}", dst, qd, res, src_says, dst_says)
        if last:
            last[0].kill()
        last = (dst, qd, port)
        if not alive:
            tap.skip_rest("the source guest stopped")
            return None
    # tls-hostname: the wrong-host certificate is right for its own name.
    dst, qd, port = c.dest("hostname-dst", srv("wronghost"))
    r_ok = c.migrate(port, "tlsc", hostname="elsewhere.example")
    tap.ok(r_ok.get("status") == "completed", "(d) with tls-hostname set "
           "to the certificate's name the same destination is accepted",
           f"{r_ok}\n{dst.describe()}")
    c.src.kill()
    last[0].kill()
    c.src, c.qs = dst, qd
    wait_status(qd, "running")
    stalls(c)
    return True


def stalls(c):
    tap, r = c.tap, c.root
    # A destination that accepts and says nothing.
    port = free_port()
    srv = socket.create_server(("127.0.0.1", port))
    set_params(c.qs, x_connect_timeout=1000)
    t0 = time.monotonic()
    res = c.migrate(port, "tlsc")
    took = time.monotonic() - t0
    srv.close()
    tap.ok(res.get("status") == "failed" and
           "did not complete the TLS handshake in time" in
           res.get("error-desc", "") and took < 5,
           f"(d) a stalled handshake fails the source in time ({took:.1f} s)",
           f"{res}")
    set_params(c.qs, x_connect_timeout=30000)
    # A silent client at a TLS destination: dropped in time; a listener
    # sees the source's first byte; then a real source comes.
    dst, qd, port = c.dest("stall-dst",
                           tlslib.x509_object(f"{r}/server", "server"))
    holder = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    ok = wait_stderr(dst, "did not complete the TLS handshake in time", 8)
    tap.ok(ok and time.monotonic() - t0 < 6,
           "(d) a client that stalls the handshake is dropped in time",
           dst.describe())
    holder.close()
    seen = []
    port2 = free_port()
    plaintext_listener(port2, seen)
    set_params(c.qs, tls_creds="tlsc")
    c.qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port2}")
    wait_migration(c.qs)
    tap.ok(seen and seen[0][:1] == b"\x16",
           "(d) with tls-creds the source's first byte is a TLS record",
           f"{seen}")
    c.good("(d) after all that, a proper source", dst, qd,
           c.migrate(port, "tlsc"))


def src_objects(r):
    psk = tlslib.make_psk(f"{r}/psk-src", {"qemu": PSK_KEY})
    bob = tlslib.make_psk(f"{r}/psk-bob", {"bob": PSK_KEY})
    return (tlslib.x509_object(f"{r}/client", "client", oid="tlsc") +
            tlslib.x509_object(f"{r}/other-client", "client",
                               oid="tlsother") +
            tlslib.psk_object(psk, "client", oid="psk") +
            tlslib.psk_object(bob, "client", user="bob", oid="pskbob"))


def qmp_warning(tap, kvmig):
    """kvmig run warns when QMP listens on a non-loopback address (no TLS
    for QMP yet), and not on loopback."""
    import subprocess
    said = {}
    for host in ("0.0.0.0", "127.0.0.1"):
        p = subprocess.run([kvmig, "run", "--qmp", f"tcp:{host}:0",
                            "--kernel", "/nonexistent"],
                           capture_output=True, text=True, timeout=20)
        said[host] = "without TLS" in p.stderr
    tap.ok(said["0.0.0.0"], "QMP on 0.0.0.0: kvmig run warns: no TLS")
    tap.ok(not said["127.0.0.1"], "QMP on loopback: no warning")


def main():
    tap = Tap(PLAN)
    reason = have_kvm() or tlslib.certtool_missing()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    kvmig, guest = sys.argv[1], sys.argv[2]
    qmp_warning(tap, kvmig)
    with tempfile.TemporaryDirectory(prefix="kvmig-tls-") as tmp, \
            VmSet(kvmig, guest, tmp) as vms:
        root = tlslib.make_x509(f"{tmp}/pki")
        c = Ctx(tap, vms, root)
        c.src = vms.boot("src", "mem=32 rate=16",
                         extra=(*VERIFY, *c.src_objs))
        if not workload_started(c.src):
            tap.skip_rest("guest did not start: " + c.src.describe())
            return tap.finish()
        c.qs = vms.qmp(c.src)
        config_errors(c)
        migrations(c)
        if failures(c):
            tap.ok(not corrupt_lines(*vms.vms), "no CORRUPT in any console",
                   f"{corrupt_lines(*vms.vms)}")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
