"""The one place the fuzzer constructs the core (keep construction changes here).

A *setup* is a plain, JSON-able dictionary, so a reproducer file can rebuild the
exact proxy a trace was recorded with::

    {"kind": "pair" | "mp",          # one connection, or with a PathManager
     "seed": 7,                      # the random_bytes stream (keys, ISNs, nonces)
     "config": {...},                # ProxyConfig fields (client, serve, anchor, limits...)
     "pm": {...},                    # PmConfig fields (kind "mp"; kind "pair": a path
                                     # manager of its own, e.g. announce or peer_joins)
     "ifaces": [["c0", 1, ["0a000001"]], ...],   # LocalIface(name, addr_id, v4) (kind "mp")
     "port_base": 50000}             # first port - 1 of the join subflows (kind "mp")

Addresses in ``pm.announce`` are hex strings (``[["0a0001fe", 9000], ...]``). Without a
``pm`` a "pair" proxy has the core's default path manager, as the unit-test pairs have.

:func:`verdict_of` reads a verdict the same way through the same change (the core's
verdicts became an enum). The random source and the port allocator are small objects
rather than closures so that a copy of a proxy (the fuzzer branches from live states)
copies them too, and a branch never advances the stream of the run it was copied from. They
produce exactly what the unit-test models use (``random.Random(seed).randbytes``;
ports counting up from ``port_base + 1``), so a recorded trace replays bit for bit.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import fields

from mptcp_proxy.core import tcp as _tcp
from mptcp_proxy.core.proxy import Proxy, ProxyConfig

try:  # the path manager's module (core/pm.py before the restructuring, core/policy.py after)
    from mptcp_proxy.core.policy import LocalIface, PathManager, PmConfig
except ImportError:  # pragma: no cover - the layout before the restructuring
    from mptcp_proxy.core.pm import LocalIface, PathManager, PmConfig

# After the restructuring the path manager is given to the proxy (Proxy(..., pm=...));
# before it, PathManager(proxy, ...) attached itself.
PM_GIVEN_TO_PROXY = "pm" in inspect.signature(Proxy.__init__).parameters

# Checksum states. After the restructuring CSUM_OK means "complete and verified by the
# kernel or NIC" and a received segment nobody verified is CSUM_UNVERIFIED (the core
# checks it); before it, CSUM_OK meant "complete" and the core checked such segments.
CSUM_OK = _tcp.CSUM_OK
CSUM_UNVERIFIED = getattr(_tcp, "CSUM_UNVERIFIED", None)
CSUM_RECEIVED = CSUM_UNVERIFIED if CSUM_UNVERIFIED is not None else CSUM_OK
FULL_CSUM = frozenset(x for x in (CSUM_OK, CSUM_UNVERIFIED) if x is not None)
IN_CSUM_DEFAULT = inspect.signature(Proxy.inbound).parameters["csum"].default
OUT_CSUM_DEFAULT = inspect.signature(Proxy.outbound).parameters["csum"].default


class SeededBytes:
    """``random_bytes`` for the proxy: ``random.Random(seed).randbytes`` as an object."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class PortCounter:
    """``alloc_port`` for the path manager: base+1, base+2, ... (as tests/unit/mpnet)."""

    def __init__(self, base: int) -> None:
        self.port = base

    def __call__(self, addr: bytes) -> int:
        self.port += 1
        return self.port


def verdict_of(v, buf):
    """A verdict in the fuzzer's terms: ``None`` (pass the original), ``False`` (drop) or
    the packet that replaces the original. The core returns either these (before the
    restructuring) or a ``Verdict`` enum whose MANGLE means "the rewritten ``buf``"
    (after it); anything else is returned as it is, for the checker to flag."""
    name = getattr(v, "name", None)
    if name == "ACCEPT":
        return None
    if name == "DROP":
        return False
    if name == "MANGLE":
        return buf
    return v


def config_dict(cfg) -> dict:
    """The fields of a dataclass config as a JSON-able dict (frozensets as lists)."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = sorted(v) if isinstance(v, (set, frozenset)) else v
    return out


def pm_config_dict(cfg) -> dict:
    """The fields of a :class:`PmConfig` as a JSON-able dict (announced addresses in hex)."""
    out = config_dict(cfg)
    if "announce" in out:
        out["announce"] = [[bytes(a).hex(), port] for a, port in out["announce"]]
    return out


def _proxy_config(d: dict) -> ProxyConfig:
    d = dict(d)
    for name in ("ports", "serve"):
        if name in d:
            d[name] = frozenset(d[name])
    known = {f.name for f in fields(ProxyConfig)}
    return ProxyConfig(**{k: v for k, v in d.items() if k in known})


def _pm_config(d: dict) -> PmConfig:
    d = dict(d)
    if "announce" in d:
        d["announce"] = [(bytes.fromhex(a), port) for a, port in d["announce"]]
    known = {f.name for f in fields(PmConfig)}
    return PmConfig(**{k: v for k, v in d.items() if k in known})


def make_pm(ifaces: list, config: PmConfig, alloc_port=None, proxy: Proxy | None = None):
    """A path manager; before the restructuring it needs (and attaches to) ``proxy``."""
    if PM_GIVEN_TO_PROXY:
        return PathManager(ifaces, config, alloc_port=alloc_port)
    return PathManager(proxy, ifaces, config, alloc_port=alloc_port)


def attach_pm(proxy: Proxy, ifaces: list, config: PmConfig):
    """Give an already built proxy a path manager of its own (the unit-test pair builds
    its proxy itself)."""
    if PM_GIVEN_TO_PROXY:
        pm = PathManager(ifaces, config)
        proxy.pm = pm
        pm.attach(proxy)
        return pm
    return PathManager(proxy, ifaces, config)


def make_proxy(setup: dict) -> tuple[Proxy, PathManager | None]:
    """Build the proxy (and for kind "mp", or with a "pm", its path manager) of ``setup``."""
    cfg = _proxy_config(setup.get("config", {}))
    rb = SeededBytes(setup["seed"])
    if setup["kind"] != "mp":
        if "pm" not in setup:
            return Proxy(cfg, rb), None
        pm = make_pm([], _pm_config(setup["pm"]))
        return Proxy(cfg, rb, pm=pm), pm
    ifaces = [LocalIface(name, addr_id, v4=[bytes.fromhex(a) for a in v4])
              for name, addr_id, v4 in setup["ifaces"]]
    pmc = _pm_config(setup.get("pm", {}))
    ports = PortCounter(setup["port_base"])
    if PM_GIVEN_TO_PROXY:
        pm = make_pm(ifaces, pmc, ports)
        return Proxy(cfg, rb, pm=pm), pm
    proxy = Proxy(cfg, rb)
    return proxy, make_pm(ifaces, pmc, ports, proxy)
