# SPDX-License-Identifier: MIT
"""Credentials for TLS tests, made by GnuTLS's certtool in a temp dir
(never committed): a CA, a server and a client certificate signed by it
(QEMU's file names), and variants: another CA, an expired and a
not-yet-valid server certificate, a server certificate for another host;
and PSK key files in QEMU's "user:hexkey" format."""
import os
import shutil
import subprocess

SERVER_CN = "localhost"
CLIENT_CN = "source.kvmig.test"
CLIENT_DN = f"O=kvmig,CN={CLIENT_CN}"


def certtool_missing():
    if shutil.which("certtool") is None:
        return "certtool not found (Debian package gnutls-bin)"
    return None


def _certtool(*args):
    subprocess.run(["certtool", *args], check=True, capture_output=True)


def _template(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _key(path):
    _certtool("--generate-privkey", "--key-type", "ecdsa", "--outfile", path)


def make_ca(d, cn="kvmig test CA"):
    os.makedirs(d, exist_ok=True)
    _key(f"{d}/ca-key.pem")
    _template(f"{d}/ca.info", [f'cn = "{cn}"', "ca", "cert_signing_key",
                               "expiration_days = 2"])
    _certtool("--generate-self-signed", "--load-privkey", f"{d}/ca-key.pem",
              "--template", f"{d}/ca.info", "--outfile", f"{d}/ca-cert.pem")


def make_cert(d, ca, who, cn, hosts=(), dates=("expiration_days = 2",)):
    """who: "server" or "client"; writes d/WHO-cert.pem and d/WHO-key.pem
    and copies ca's ca-cert.pem into d."""
    os.makedirs(d, exist_ok=True)
    if os.path.abspath(d) != os.path.abspath(ca):
        shutil.copy(f"{ca}/ca-cert.pem", f"{d}/ca-cert.pem")
    _key(f"{d}/{who}-key.pem")
    lines = ['organization = "kvmig"', f'cn = "{cn}"', "signing_key",
             "encryption_key", *dates]
    lines.append("tls_www_server" if who == "server" else "tls_www_client")
    for h in hosts:
        lines.append(f"ip_address = {h}" if h[0].isdigit() else
                     f"dns_name = {h}")
    _template(f"{d}/{who}.info", lines)
    _certtool("--generate-certificate", "--load-privkey", f"{d}/{who}-key.pem",
              "--load-ca-certificate", f"{ca}/ca-cert.pem",
              "--load-ca-privkey", f"{ca}/ca-key.pem",
              "--template", f"{d}/{who}.info",
              "--outfile", f"{d}/{who}-cert.pem")


def make_x509(root):
    """root/ca (the CA), root/server, root/client: the good pair; and
    root/other-ca, root/expired, root/future, root/wronghost."""
    ca = f"{root}/ca"
    make_ca(ca)
    make_cert(f"{root}/server", ca, "server", SERVER_CN,
              hosts=("127.0.0.1", "localhost"))
    make_cert(f"{root}/client", ca, "client", CLIENT_CN)
    make_ca(f"{root}/other-ca", cn="another CA")
    make_cert(f"{root}/other-client", f"{root}/other-ca", "client", CLIENT_CN)
    make_cert(f"{root}/expired", ca, "server", SERVER_CN,
              hosts=("127.0.0.1",),
              dates=('activation_date = "2020-01-01 00:00:00 UTC"',
                     'expiration_date = "2020-02-01 00:00:00 UTC"'))
    make_cert(f"{root}/future", ca, "server", SERVER_CN,
              hosts=("127.0.0.1",),
              dates=('activation_date = "2098-01-01 00:00:00 UTC"',
                     'expiration_date = "2099-01-01 00:00:00 UTC"'))
    make_cert(f"{root}/wronghost", ca, "server", "elsewhere",
              hosts=("elsewhere.example",))
    return root


def make_psk(d, users):
    """users: {name: hexkey}."""
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/keys.psk", "w") as f:
        for u, k in users.items():
            f.write(f"{u}:{k}\n")
    return d


def x509_object(d, endpoint, oid="tls0", verify=True):
    return ["--object", f"tls-creds-x509,id={oid},dir={d},endpoint={endpoint},"
            f"verify-peer={'on' if verify else 'off'}"]


def psk_object(d, endpoint, user=None, oid="tls0"):
    s = f"tls-creds-psk,id={oid},dir={d},endpoint={endpoint}"
    if user:
        s += f",username={user}"
    return ["--object", s]
