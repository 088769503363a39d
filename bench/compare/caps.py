# SPDX-License-Identifier: MIT
"""Capability profiles (issue 5): the migration capabilities and parameters
a run sets, with QEMU's names, identically on both VMMs.

A profile sets its capabilities and parameters on the source after the
warm-up (with downtime-limit and max-bandwidth); a profile whose
capability both ends must know (multifd: the destination opens the
channels and decodes the packets) starts the destination with `-incoming
defer` / `--incoming defer`, sets the same capabilities and parameters on
it, then `migrate-incoming` (what QEMU requires, and kvmig accepts the
same way). Each profile may name a guest workload of its own (used when
the run does not give one): the one its capability is for.

    PROFILES[name] -> Profile
"""

MIB = 1 << 20

# kvmig's own x-compress (on by default where the link is the bottleneck)
# is off in every profile but its own: a profile measures its capability
# against QEMU's same capability, nothing else.
KVMIG_ISOLATE = {"x-compress": "off"}


class Profile:
    def __init__(self, name, caps=(), params=None, dest=False, qemu=True,
                 workload=None, what="", tls=False, postcopy=False,
                 kvmig_defaults=False):
        self.name = name
        self.caps = list(caps)
        self.params = dict(params or {})
        self.dest = dest            # configure the destination too (defer)
        self.qemu = qemu            # QEMU 7.2 has it
        self.workload = dict(workload or {})
        self.what = what
        self.tls = tls              # both VMMs get TLS credentials objects
        # Switch to postcopy once the first pass has ended (postcopy.py).
        self.postcopy = postcopy
        # Keep kvmig's defaults (x-compress auto): the profile compares
        # each VMM as it ships, plus the capability.
        self.kvmig_defaults = kvmig_defaults

    def supported_by(self, vmm_name):
        return vmm_name != "qemu" or self.qemu

    def params_for(self, vmm_name):
        """The parameters to set on VMM_NAME (kvmig: KVMIG_ISOLATE, then
        the profile's own)."""
        out = dict(KVMIG_ISOLATE) if vmm_name == "kvmig" and \
            not self.kvmig_defaults else {}
        out.update(self.params)
        return out

    def capabilities_arg(self):
        return [{"capability": c, "state": True} for c in self.caps]

    def describe(self):
        parts = [f"capabilities {', '.join(self.caps) or 'none'}"]
        if self.params:
            parts.append("parameters " + ", ".join(
                f"{k}={fmt_value(v)}" for k, v in self.params.items()))
        if self.dest:
            parts.append("destination too (defer, then migrate-incoming)")
        if not self.qemu:
            parts.append("kvmig only (QEMU lacks it)")
        if self.postcopy:
            parts.append("migrate-start-postcopy once the first pass "
                         "has ended")
        if "x-compress" not in self.params and not self.kvmig_defaults:
            parts.append("kvmig with x-compress off")
        return "; ".join(parts)


def fmt_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and v >= MIB and v % MIB == 0:
        return f"{v // MIB} MiB"
    return str(v)


def _multifd(compression, level=None, qemu=True, workload=None):
    params = {"multifd-channels": 2, "multifd-compression": compression}
    if level is not None:
        params[f"multifd-{compression}-level"] = level
    return dict(caps=["multifd"], params=params, dest=True, qemu=qemu,
                workload=workload)


SPARSE = {"fill": "sparse"}

# TLS (issue 12): x509 credentials made for the run (vmms.Vmm.tls_dir),
# verify-peer on both sides; the certificate names "localhost", which
# tls-hostname gives whatever address the link uses.
TLS_PARAMS = {"tls-creds": "tls0", "tls-hostname": "localhost"}

PROFILES = {p.name: p for p in (
    Profile("plain", what="plain precopy, one stream"),
    # QEMU's cache is direct-mapped on the page address: as large as the
    # largest working set used here (512 MiB, contiguous) keeps all of it
    # (the default, 64 MiB, would measure cache misses, not XBZRLE).
    Profile("xbzrle", caps=["xbzrle"],
            params={"xbzrle-cache-size": 512 * MIB},
            workload={"pattern": "small-writes"},
            what="XBZRLE deltas against a cache of the pages sent"),
    Profile("multifd", **_multifd("none"),
            what="2 multifd channels, no compression"),
    Profile("multifd-zlib", **_multifd("zlib", 1, workload=SPARSE),
            what="2 multifd channels, zlib level 1"),
    Profile("multifd-zstd", **_multifd("zstd", 1, workload=SPARSE),
            what="2 multifd channels, zstd level 1"),
    Profile("multifd-lz4", **_multifd("lz4", qemu=False, workload=SPARSE),
            what="2 multifd channels, lz4 (kvmig only)"),
    Profile("tls", params=TLS_PARAMS, dest=True, tls=True,
            what="x509 TLS on the main stream, one channel"),
    Profile("multifd-tls", caps=["multifd"],
            params=dict(TLS_PARAMS, **{"multifd-channels": 2,
                                       "multifd-compression": "none"}),
            dest=True, tls=True,
            what="x509 TLS on 2 multifd channels and the main stream"),
    Profile("x-compress", params={"x-compress": "auto"}, qemu=False,
            what="kvmig's zstd on the main stream while the link is the "
                 "bottleneck (kvmig only)"),
    Profile("auto-converge", caps=["auto-converge"],
            params={"cpu-throttle-initial": 20,
                    "cpu-throttle-increment": 10,
                    "cpu-throttle-tailslow": False,
                    "max-cpu-throttle": 99},
            what="vCPU throttling when passes stop shrinking"),
    # Issue 11. postcopy-blocktime makes the destination report its
    # fault figures (QEMU 7.2: blocktime; kvmig: latency too); both ends
    # need postcopy-ram (and postcopy-preempt: its own channel).
    Profile("postcopy", caps=["postcopy-ram", "postcopy-blocktime"],
            dest=True, postcopy=True, kvmig_defaults=True,
            what="precopy, then postcopy after the first pass"),
    Profile("postcopy-preempt",
            caps=["postcopy-ram", "postcopy-preempt", "postcopy-blocktime"],
            dest=True, postcopy=True, kvmig_defaults=True,
            what="the same, requested pages on their own channel"),
    # x-postcopy-auto (kvmig's) against kvmig as it ships: the source
    # switches to postcopy by itself or not at all.
    Profile("defaults", qemu=False, kvmig_defaults=True,
            what="kvmig at its defaults (x-compress auto), precopy only"),
    Profile("postcopy-ram", caps=["postcopy-ram"], dest=True, qemu=False,
            kvmig_defaults=True,
            what="kvmig at its defaults with postcopy-ram on both sides, "
                 "never switched: what enabling postcopy costs precopy"),
    Profile("postcopy-auto", caps=["postcopy-ram"],
            params={"x-postcopy-auto": True}, dest=True, qemu=False,
            kvmig_defaults=True,
            what="the same with postcopy-ram and x-postcopy-auto"),
)}


def parse(names):
    """'plain,xbzrle' -> [Profile]; ValueError naming an unknown one."""
    out = []
    for n in names:
        if n not in PROFILES:
            raise ValueError(f"unknown capability profile {n!r} (known: "
                             f"{', '.join(PROFILES)})")
        out.append(PROFILES[n])
    return out


def parse_params(text):
    """'k=v,k=v' -> {k: int|bool|str} (overrides for every profile)."""
    out = {}
    for item in (x for x in text.split(",") if x):
        if "=" not in item:
            raise ValueError(f"bad parameter {item!r}: KEY=VALUE")
        k, v = item.split("=", 1)
        if v in ("true", "false"):
            out[k] = v == "true"
        elif v.isdigit():
            out[k] = int(v)
        else:
            out[k] = v
    return out


def set_on(qmp, profile, params, label):
    """Set the profile's capabilities and PARAMS (profile's, with the
    run's) on one VMM's monitor and read them back."""
    from vmlib import QmpError  # noqa: E402  (put on the path by driver)
    if profile.caps:
        qmp.cmd("migrate-set-capabilities",
                capabilities=profile.capabilities_arg())
        got = {c["capability"]: c["state"]
               for c in qmp.cmd("query-migrate-capabilities")}
        for c in profile.caps:
            if got.get(c) is not True:
                raise QmpError(f"{label}: capability {c} is {got.get(c)} "
                               f"after migrate-set-capabilities")
    if params:
        qmp.cmd("migrate-set-parameters", **params)
        got = qmp.cmd("query-migrate-parameters")
        for k, v in params.items():
            if got.get(k) != v:
                raise QmpError(f"{label}: {k} is {got.get(k)!r} after "
                               f"migrate-set-parameters {k}={v!r}")
