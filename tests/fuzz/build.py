"""The one place the fuzzer constructs the core (keep construction changes here).

A *setup* is a plain, JSON-able dictionary, so a reproducer file can rebuild the
exact proxy a trace was recorded with::

    {"kind": "pair" | "mp",          # one connection, or with a PathManager
     "seed": 7,                      # the random_bytes stream (keys, ISNs, nonces)
     "config": {...},                # ProxyConfig fields
     "pm": {...},                    # PmConfig fields (kind "mp")
     "ifaces": [["c0", 1, ["0a000001"]], ...],   # LocalIface(name, addr_id, v4) (kind "mp")
     "port_base": 50000}             # first port - 1 of the join subflows (kind "mp")

The random source and the port allocator are small objects rather than closures so
that ``copy.deepcopy`` of a proxy (the fuzzer branches from live states) copies them
too, and a branch never advances the stream of the run it was copied from. They
produce exactly what the unit-test models use (``random.Random(seed).randbytes``;
ports counting up from ``port_base + 1``), so a recorded trace replays bit for bit.
"""

from __future__ import annotations

import random
from dataclasses import fields

from mptcp_proxy.core.pm import LocalIface, PathManager, PmConfig
from mptcp_proxy.core.proxy import Proxy, ProxyConfig


class SeededBytes:
    """``random_bytes`` for the proxy: ``random.Random(seed).randbytes`` as an object."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class PortCounter:
    """``alloc_port`` for the path manager: base+1, base+2, ... (as tests/unit/mp_model)."""

    def __init__(self, base: int) -> None:
        self.port = base

    def __call__(self, addr: bytes) -> int:
        self.port += 1
        return self.port


def config_dict(cfg) -> dict:
    """The fields of a dataclass config as a JSON-able dict (frozensets as lists)."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = sorted(v) if isinstance(v, (set, frozenset)) else v
    return out


def _proxy_config(d: dict) -> ProxyConfig:
    d = dict(d)
    if "ports" in d:
        d["ports"] = frozenset(d["ports"])
    known = {f.name for f in fields(ProxyConfig)}
    return ProxyConfig(**{k: v for k, v in d.items() if k in known})


def make_proxy(setup: dict) -> tuple[Proxy, PathManager | None]:
    """Build the proxy (and for kind "mp" its path manager) of ``setup``."""
    proxy = Proxy(_proxy_config(setup.get("config", {})), SeededBytes(setup["seed"]))
    pm = None
    if setup["kind"] == "mp":
        ifaces = [LocalIface(name, addr_id, v4=[bytes.fromhex(a) for a in v4])
                  for name, addr_id, v4 in setup["ifaces"]]
        known = {f.name for f in fields(PmConfig)}
        pmc = PmConfig(**{k: v for k, v in setup.get("pm", {}).items() if k in known})
        pm = PathManager(proxy, ifaces, pmc, alloc_port=PortCounter(setup["port_base"]))
    return proxy, pm
