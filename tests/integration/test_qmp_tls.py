#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Issue 12 item 5: QMP over TLS, from outside the process. Credentials
are made by certtool in a temp dir. The VMs wait for a migration
(--incoming defer): nothing but the monitor runs.

(a) an x509 monitor (verify-peer=on, an authz-list allowing the client's
    DN): a whole QMP session from Python's ssl module (greeting,
    qmp_capabilities, query-status), `kvmig set` and `kvmig status` with
    client credentials, the setting read back over TLS;
(b) refusals, each with its message: a plaintext QMP client (kvmig's,
    and a raw socket that waits for the greeting, and one that talks
    first), a client whose CA differs, a certificate for another host,
    a client certificate the authz list refuses; the monitor serves a
    proper client after them;
(c) a PSK monitor: kvmig status with the right key, and a wrong key
    refused;
(d) a TLS client to a plaintext monitor is told the monitor answered in
    plaintext;
(e) kvmig run warns on a non-loopback tcp QMP without TLS (0.0.0.0),
    not on 127.0.0.1 nor with tls-creds; --qmp's tls-creds naming no
    object or client credentials is a usage error.
Usage: test_qmp_tls.py KVMIG GUEST_ELF"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvmig_testlib import Tap  # noqa: E402
from vmlib import Vm, free_port, have_kvm  # noqa: E402
import tlslib  # noqa: E402

PLAN = 26
PSK_KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
WARNING = "without TLS: whoever reaches that address controls this VM"


def wait_stderr(vm, text, timeout=8):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in vm.stderr:
            return True
        time.sleep(0.05)
    return text in vm.stderr


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def monitor(kvmig, label, qmp, objects=(), host="127.0.0.1"):
    """A VM waiting for a migration with its QMP on tcp:HOST:PORT[,qmp]."""
    port = free_port()
    spec = f"tcp:{host}:{port}" + (f",{qmp}" if qmp else "")
    vm = Vm([kvmig, "run", "--memory", "64M", "--incoming", "defer",
             "--qmp", spec, *objects], label)
    vm.port = port
    vm.ready = wait_port(port)
    return vm


def ctl(kvmig, *args, timeout=20):
    return subprocess.run([kvmig, *args], capture_output=True, text=True,
                          timeout=timeout)


def client_args(port, d, kind="x509", extra=""):
    spec = f"tcp:127.0.0.1:{port},tls-creds=c0{extra}"
    if kind == "x509":
        obj = f"tls-creds-x509,id=c0,dir={d},endpoint=client"
    else:
        obj = f"tls-creds-psk,id=c0,dir={d},endpoint=client"
    return ["--qmp", spec, "--object", obj]


class SslQmp:
    """A QMP session over Python's ssl: an independent TLS client."""

    def __init__(self, port, pki):
        ctx = ssl.create_default_context(cafile=f"{pki}/client/ca-cert.pem")
        ctx.load_cert_chain(f"{pki}/client/client-cert.pem",
                            f"{pki}/client/client-key.pem")
        raw = socket.create_connection(("127.0.0.1", port), 10)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.f = self.s.makefile("rb")

    def read(self):
        return json.loads(self.f.readline())

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self.read()
            if "event" not in r:
                return r

    def close(self):
        self.s.close()


def part_x509(tap, kvmig, pki):
    authz = ("authz-list,id=auth0,policy=deny,rules.0.match=O=kvmig,,"
             f"CN={tlslib.CLIENT_CN},rules.0.policy=allow,"
             "rules.0.format=exact")
    vm = monitor(kvmig, "x509", "server=on,wait=off,tls-creds=tls0,"
                 "tls-authz=auth0",
                 [*tlslib.x509_object(f"{pki}/server", "server"),
                  "--object", authz])
    try:
        if not tap.ok(vm.ready, "x509 monitor listens", vm.describe()):
            return
        s = SslQmp(vm.port, pki)
        greeting = s.read()
        caps = s.cmd("qmp_capabilities")
        st = s.cmd("query-status")
        s.close()
        tap.ok("QMP" in greeting and caps == {"return": {}} and
               st.get("return", {}).get("status") == "inmigrate",
               "a QMP session over TLS (Python ssl, client certificate)",
               f"{greeting} {caps} {st}")
        r = ctl(kvmig, "set", *client_args(vm.port, f"{pki}/client"),
                "downtime-limit=123")
        tap.ok(r.returncode == 0, "kvmig set over TLS (x509)",
               r.stdout + r.stderr)
        s = SslQmp(vm.port, pki)
        s.read()
        s.cmd("qmp_capabilities")
        p = s.cmd("query-migrate-parameters")["return"]
        s.close()
        tap.ok(p.get("downtime-limit") == 123,
               "the setting made over TLS reads back over TLS", p)
        r = ctl(kvmig, "status", *client_args(vm.port, f"{pki}/client"))
        tap.ok(r.returncode == 0 and "VM: inmigrate" in r.stdout,
               "kvmig status over TLS (x509)", r.stdout + r.stderr)

        t0 = time.monotonic()
        r = ctl(kvmig, "status", "--qmp", f"tcp:127.0.0.1:{vm.port}")
        took = time.monotonic() - t0
        tap.ok(r.returncode == 1 and "refused the session: this QMP "
               "monitor takes TLS clients only (tls-creds 'tls0')"
               in r.stderr and took < 8,
               "a plaintext kvmig client is told the monitor takes TLS "
               f"only ({took:.1f} s)", r.stderr)
        tap.ok(wait_stderr(vm, "sent no TLS handshake in 2000 ms"),
               "the monitor says the client sent no TLS handshake",
               vm.stderr)
        with socket.create_connection(("127.0.0.1", vm.port), 10) as raw:
            raw.sendall(b'{"execute": "qmp_capabilities"}\n')
            raw.settimeout(10)
            line = raw.makefile("rb").readline()
        tap.ok(b"takes TLS clients only" in line,
               "a plaintext client that talks first gets the error line",
               line)
        tap.ok(wait_stderr(vm, "the QMP client sent plaintext, not a TLS "
                           "handshake"),
               "the monitor names the plaintext", vm.stderr)

        r = ctl(kvmig, "status", *client_args(vm.port,
                                              f"{pki}/other-client"))
        tap.ok(r.returncode == 1 and "the monitor's certificate is not "
               "signed by the CA in" in r.stderr and "(wrong CA)"
               in r.stderr, "a client with another CA refuses the monitor",
               r.stderr)
        r = ctl(kvmig, "status", *client_args(
            vm.port, f"{pki}/client", extra=",tls-hostname=elsewhere"))
        tap.ok(r.returncode == 1 and "the monitor's certificate is not for "
               "host 'elsewhere'" in r.stderr,
               "tls-hostname: a certificate for another host is refused",
               r.stderr)
        r = ctl(kvmig, "status", *client_args(vm.port, f"{pki}/intruder"))
        tap.ok(r.returncode == 1, "a client the authz list refuses fails",
               r.stderr)
        tap.ok(wait_stderr(vm, "the QMP client 'O=kvmig,CN=intruder."
                           "kvmig.test' is refused by tls-authz 'auth0'"),
               "the monitor names the authz refusal", vm.stderr)
        r = ctl(kvmig, "status", *client_args(vm.port, f"{pki}/client"))
        tap.ok(r.returncode == 0 and vm.p.poll() is None,
               "the monitor serves a proper client after the refusals",
               r.stdout + r.stderr)
    finally:
        vm.kill()


def part_psk(tap, kvmig, root):
    srv = tlslib.make_psk(f"{root}/psk-server", {"qemu": PSK_KEY})
    good = tlslib.make_psk(f"{root}/psk-good", {"qemu": PSK_KEY})
    bad = tlslib.make_psk(f"{root}/psk-bad", {"qemu": OTHER_KEY})
    vm = monitor(kvmig, "psk", "tls-creds=tls0",
                 tlslib.psk_object(srv, "server"))
    try:
        if not tap.ok(vm.ready, "PSK monitor listens", vm.describe()):
            return
        r = ctl(kvmig, "status", *client_args(vm.port, good, "psk"))
        tap.ok(r.returncode == 0 and "VM: inmigrate" in r.stdout,
               "kvmig status over TLS (PSK)", r.stdout + r.stderr)
        r = ctl(kvmig, "status", *client_args(vm.port, bad, "psk"))
        tap.ok(r.returncode == 1 and "PSK" in r.stderr,
               "a wrong PSK is refused, the client names the PSK",
               r.stderr)
        tap.ok(wait_stderr(vm, "PSK mismatch"),
               "the monitor names the PSK mismatch", vm.stderr)
    finally:
        vm.kill()


def part_plain_monitor(tap, kvmig, pki):
    vm = monitor(kvmig, "plain", "")
    try:
        r = ctl(kvmig, "status", *client_args(vm.port, f"{pki}/client"))
        tap.ok(r.returncode == 1 and "the monitor answered in plaintext, "
               "not TLS" in r.stderr,
               "a TLS client to a plaintext monitor says so", r.stderr)
        tap.ok(WARNING not in vm.stderr,
               "no warning for QMP on 127.0.0.1", vm.stderr)
    finally:
        vm.kill()


def part_warning(tap, kvmig, pki):
    vm = monitor(kvmig, "open", "", host="0.0.0.0")
    try:
        tap.ok(wait_stderr(vm, f"kvmig run: warning: QMP listens on "
                           f"tcp:0.0.0.0:{vm.port} {WARNING}"),
               "a warning for QMP on 0.0.0.0 without TLS", vm.stderr)
        tap.ok(sum(WARNING in ln for ln in vm.stderr.splitlines()) == 1,
               "the warning is one line", vm.stderr)
    finally:
        vm.kill()
    vm = monitor(kvmig, "open-tls", "tls-creds=tls0",
                 tlslib.x509_object(f"{pki}/server", "server", verify=False),
                 host="0.0.0.0")
    try:
        r = ctl(kvmig, "status", *client_args(vm.port, f"{pki}/client"))
        tap.ok(r.returncode == 0 and WARNING not in vm.stderr,
               "no warning for QMP on 0.0.0.0 with TLS, which serves",
               vm.stderr + r.stderr)
    finally:
        vm.kill()
    base = [kvmig, "run", "--memory", "64M", "--incoming", "defer"]
    r = subprocess.run([*base, "--qmp", "tcp:127.0.0.1:0,tls-creds=nosuch"],
                       capture_output=True, text=True, timeout=20)
    tap.ok(r.returncode == 2 and "No TLS credentials with id 'nosuch'"
           in r.stderr, "--qmp tls-creds naming no object: usage error",
           r.stderr)
    r = subprocess.run([*base, "--qmp", "tcp:127.0.0.1:0,tls-creds=tls0",
                        *tlslib.x509_object(f"{pki}/client", "client")],
                       capture_output=True, text=True, timeout=20)
    tap.ok(r.returncode == 2 and "endpoint=client" in r.stderr,
           "--qmp with client credentials: usage error", r.stderr)
    r = subprocess.run([*base, "--qmp", "tcp:127.0.0.1:0,wait=on"],
                       capture_output=True, text=True, timeout=20)
    tap.ok(r.returncode == 2 and "wait=on is not supported" in r.stderr,
           "--qmp wait=on: usage error naming it", r.stderr)


def main():
    kvmig = sys.argv[1]
    tap = Tap(PLAN)
    reason = have_kvm() or tlslib.certtool_missing()
    if reason:
        tap.skip_rest(reason)
        return tap.finish()
    with tempfile.TemporaryDirectory(prefix="kvmig-qmptls-") as tmp:
        pki = tlslib.make_x509(f"{tmp}/pki")
        tlslib.make_cert(f"{pki}/intruder", f"{pki}/ca", "client",
                         "intruder.kvmig.test")
        part_x509(tap, kvmig, pki)
        part_psk(tap, kvmig, tmp)
        part_plain_monitor(tap, kvmig, pki)
        part_warning(tap, kvmig, pki)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
