# SPDX-License-Identifier: MIT
"""A link the kernel black-holes (the fault suite's and
test_vm_link_silence's): the destination runs in a network namespace the
test makes, joined to this one by a veth pair with
addresses of its own (nothing leaves the machine). drop() points each
side's neighbour entry for the other at a MAC nobody has, so every frame
either way is discarded by the receiving veth, as a firewall DROP would
(this host has no nft, iptables or netem); restore() puts the real
addresses back."""
import os
import random
import shutil
import subprocess

BOGUS_MAC = "02:00:5e:00:53:01"


def run(*argv):
    return subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def unavailable():
    if os.geteuid() != 0:
        return "not root: cannot make a network namespace"
    if not shutil.which("ip"):
        return "no ip(8) here"
    return None


class VethLink:
    """tmpdir and kvmig given: .wrapper is a `kvmig` that runs in the
    namespace."""

    def __init__(self, tmpdir=None, kvmig=None):
        tag = "%d%03d" % (os.getpid() % 10000, random.randrange(1000))
        self.ns = f"kvmig-fz-{tag}"
        self.va, self.vb = f"kvfa{tag}"[:15], f"kvfb{tag}"[:15]
        net = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.mine, self.theirs = f"{net}.1", f"{net}.2"
        self.made = False
        steps = [
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.va, "type", "veth", "peer", "name",
             self.vb],
            ["ip", "link", "set", self.vb, "netns", self.ns],
            ["ip", "addr", "add", f"{self.mine}/30", "dev", self.va],
            ["ip", "link", "set", self.va, "up"],
            ["ip", "-n", self.ns, "addr", "add", f"{self.theirs}/30", "dev",
             self.vb],
            ["ip", "-n", self.ns, "link", "set", self.vb, "up"],
            ["ip", "-n", self.ns, "link", "set", "lo", "up"],
        ]
        self.made = True
        for argv in steps:
            r = run(*argv)
            if r.returncode != 0:
                self.close()
                raise OSError(f"{' '.join(argv)}: {r.stdout.strip()}")
        self.mac_a = self._mac(["ip", "link", "show", self.va])
        self.mac_b = self._mac(["ip", "-n", self.ns, "link", "show",
                                self.vb])
        if tmpdir and kvmig:
            self._make_wrapper(tmpdir, kvmig)

    def _make_wrapper(self, tmpdir, kvmig):
        # a `kvmig` that runs in the namespace (exec: same pid)
        self.wrapper = os.path.join(tmpdir, f"kvmig-in-{self.ns}")
        with open(self.wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec ip netns exec {self.ns} {kvmig} "
                    f"\"$@\"\n")
        os.chmod(self.wrapper, 0o755)

    @staticmethod
    def _mac(argv):
        out = run(*argv).stdout.split()
        return out[out.index("link/ether") + 1]

    def _neigh(self, mac_for_theirs, mac_for_mine):
        run("ip", "neigh", "replace", self.theirs, "lladdr",
            mac_for_theirs, "dev", self.va, "nud", "permanent")
        run("ip", "-n", self.ns, "neigh", "replace", self.mine, "lladdr",
            mac_for_mine, "dev", self.vb, "nud", "permanent")

    def drop(self):
        self._neigh(BOGUS_MAC, BOGUS_MAC)

    def restore(self):
        self._neigh(self.mac_b, self.mac_a)

    def close(self):
        if self.made:
            run("ip", "netns", "del", self.ns)
            run("ip", "link", "del", self.va)
            self.made = False
