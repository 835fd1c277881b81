"""What the benchmark runs: the configurations, the ratios and targets it reports, the
stages and the run profiles. Adding a configuration is one :func:`register` call (a bed
that needs something new, e.g. a daemon in the router namespace, is a :class:`Daemon`
with another ``ns``); adding a ratio is one entry of :data:`RATIOS`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FNFQ", "NFQ", "MSS", "PLAIN_PORT", "MPTCP_PORT", "BACKENDS", "Daemon", "Config",
    "CONFIGS", "register", "ALL_CONFIGS", "NFQ_CONFIGS", "HEADLINE", "MEMORY_CONFIG", "RATIOS",
    "TARGETS", "DEFINITIONS", "STAGES", "PROFILES", "runnable", "latency_configs",
    "cpu_configs",
]

FNFQ, NFQ = "fnfqueue", "netfilterqueue"
MSS = 1448  # an MSS-equivalent: 1500 MTU - 20 IPv4 - 20 TCP - 12 timestamp option
PLAIN_PORT, MPTCP_PORT = 5001, 5002  # the server's plain TCP and IPPROTO_MPTCP listeners
BACKENDS = {
    FNFQ: "fnfqueue: recvmmsg batches, NFQA_CFG_F_GSO (GSO super-packets are queued whole)",
    NFQ: "netfilterqueue 1.1: one packet per callback, segmented to <= 1 MSS before queueing",
}


@dataclass(frozen=True)
class Daemon:
    """An ``mptcp-proxy`` of a configuration: its arguments, the namespace it runs in
    (``client``, ``router`` or ``server``: the bed's role names) and its ``--iface``s
    (None: the client-side links of that namespace, c0/c1 or rc0/rc1)."""

    args: tuple[str, ...]
    ns: str = "client"
    ifaces: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Config:
    """One benchmark configuration.

    ``bed``: configurations with the same bed name share its namespaces, server, agent
    and daemons; ``mptcp``: the client socket is ``IPPROTO_MPTCP``; ``port``: the server
    listener (:data:`PLAIN_PORT` or :data:`MPTCP_PORT`); ``daemons``: what runs in the
    bed; ``backend``: the queue backend the figures are labelled with (None: no queue);
    ``expect``: what the server's socket must be (``tcp``, ``mptcp``, ``mptcp2`` = with a
    second subflow, ``fallback`` = an MPTCP listener that got plain TCP); ``latency``:
    also in the setup-latency and connection-rate stages; ``implemented``: False for a
    hook reported as n/a; ``what``: its line in ``--help``."""

    name: str
    bed: str
    mptcp: bool
    port: int
    daemons: tuple[Daemon, ...] = ()
    backend: str | None = None
    expect: str = "mptcp"
    latency: bool = False
    implemented: bool = True
    what: str = ""


CONFIGS: dict[str, Config] = {}


def register(cfg: Config) -> Config:
    """Add ``cfg`` to :data:`CONFIGS` (the order of registration is the order of runs)."""
    if cfg.name in CONFIGS:
        raise ValueError(f"configuration {cfg.name} registered twice")
    CONFIGS[cfg.name] = cfg
    return cfg


def _proxy(*args: str) -> tuple[Daemon, ...]:
    return (Daemon(args),)


register(Config("plain_tcp", "base", mptcp=False, port=PLAIN_PORT, expect="tcp",
                latency=True, what="plain TCP client <-> plain TCP server, no queue"))
register(Config("native_mptcp", "base", mptcp=True, port=MPTCP_PORT, latency=True,
                what="IPPROTO_MPTCP client <-> IPPROTO_MPTCP server"))
register(Config("nfqueue_floor", "nfqueue_floor", mptcp=False, port=MPTCP_PORT,
                daemons=_proxy("--accept-all", "--backend", FNFQ), backend=FNFQ,
                expect="fallback",
                what="plain TCP client through `mptcp-proxy --accept-all`\n"
                     "<-> native MPTCP server (falls back to TCP): the floor\n"
                     "of the default backend"))
register(Config("nfqueue_floor_nfq", "nfqueue_floor_nfq", mptcp=False, port=MPTCP_PORT,
                daemons=_proxy("--accept-all", "--backend", NFQ), backend=NFQ,
                expect="fallback", what="the same floor with `--backend netfilterqueue`"))
register(Config("proxy", "proxy", mptcp=False, port=MPTCP_PORT,
                daemons=_proxy("--subflows", "manual", "--backend", FNFQ), backend=FNFQ,
                latency=True,
                what="plain TCP client through `mptcp-proxy --subflows\n"
                     "manual` <-> native MPTCP"))
register(Config("proxy_nfq", "proxy_nfq", mptcp=False, port=MPTCP_PORT,
                daemons=_proxy("--subflows", "manual", "--backend", NFQ), backend=NFQ,
                latency=True, what="the same proxy with `--backend netfilterqueue`"))
register(Config("proxy_2sf", "proxy_2sf", mptcp=False, port=MPTCP_PORT,
                daemons=_proxy("--subflows", "active", "--backend", FNFQ), backend=FNFQ,
                expect="mptcp2", what="`--subflows active` (a second subflow on c1)"))
# Hook: proxy <-> proxy (both ends plain TCP, a proxy at each: the second daemon in the
# server namespace in front of a plain TCP server, once the daemon has a server role).
register(Config("proxy_proxy", "proxy_proxy", mptcp=False, port=PLAIN_PORT,
                implemented=False, what="hook only: not implemented yet, reported as n/a"))

ALL_CONFIGS = list(CONFIGS)
NFQ_CONFIGS = [c.name for c in CONFIGS.values() if c.backend == NFQ]
HEADLINE = "proxy"  # the configuration the targets judge
MEMORY_CONFIG = HEADLINE  # the idle-connection ramp runs on this configuration's bed


def runnable(names: list[str]) -> list[str]:
    return [n for n in names if CONFIGS[n].implemented]


def latency_configs(names: list[str]) -> list[str]:
    """Those of ``names`` in the setup-latency and connection-rate stages (in
    registration order)."""
    return [n for n, c in CONFIGS.items() if n in names and c.implemented and c.latency]


def cpu_configs(names: list[str]) -> list[str]:
    """Those of ``names`` with a daemon, whose CPU per packet is measured (in
    registration order)."""
    return [n for n, c in CONFIGS.items() if n in names and c.implemented and c.daemons]


# name -> (numerator, denominator, direction): medians of the same run
RATIOS: dict[str, tuple[str, str, str]] = {
    "proxy_vs_floor": ("proxy", "nfqueue_floor", "up"),
    "proxy_vs_native": ("proxy", "native_mptcp", "up"),
    "proxy_2sf_vs_proxy": ("proxy_2sf", "proxy", "up"),
    "floor_vs_plain": ("nfqueue_floor", "plain_tcp", "up"),
    "proxy_nfq_vs_floor_nfq": ("proxy_nfq", "nfqueue_floor_nfq", "up"),
    "proxy_nfq_vs_native": ("proxy_nfq", "native_mptcp", "up"),
    "proxy_vs_proxy_nfq": ("proxy", "proxy_nfq", "up"),
    "floor_vs_floor_nfq": ("nfqueue_floor", "nfqueue_floor_nfq", "up"),
    "down_proxy_vs_floor": ("proxy", "nfqueue_floor", "down"),
    "down_proxy_vs_native": ("proxy", "native_mptcp", "down"),
    "down_proxy_nfq_vs_floor_nfq": ("proxy_nfq", "nfqueue_floor_nfq", "down"),
    "down_proxy_vs_proxy_nfq": ("proxy", "proxy_nfq", "down"),
    "down_floor_vs_floor_nfq": ("nfqueue_floor", "nfqueue_floor_nfq", "down"),
}

# the targets: (description, threshold, comparison)
TARGETS = {
    "bulk_proxy_vs_floor_up": ("proxy / nfqueue_floor, upload (same backend, same run)",
                               0.8, ">="),
    "bulk_proxy_vs_floor_down": ("proxy / nfqueue_floor, download", 0.8, ">="),
    "setup_overhead_ms": ("setup latency proxy - native_mptcp (ms)", 1.0, "<="),
    "bytes_per_idle_conn": ("daemon RSS per idle connection (bytes), worst of the ramp",
                            4096, "<="),
    "conn_per_s": ("new proxied connections per second", 1000, ">="),
}

DEFINITIONS = {
    "backend": "queue backend of the configuration's daemon (mptcp-proxy --backend); null: "
               "no queue. " + "; ".join(BACKENDS.values()),
    "us_per_packet": "daemon CPU (utime+stime, all threads) during the transfer / packets "
                     "the daemon took from its queues (both directions, data and ACKs); "
                     "with fnfqueue+GSO a queued packet is a GSO super-packet",
    "us_per_mss": f"the same CPU / MSS-equivalents of payload moved (payload bytes / {MSS}):"
                  " comparable across backends",
    "bytes_per_packet": "payload bytes moved / packets queued (GSO aggregation)",
    "setup_ms": "median connect() to first byte of a 1-byte request/response",
    "setup_overhead_ms": "setup_ms of the configuration - setup_ms of native_mptcp",
    "bytes_per_conn": "daemon RSS growth / idle connections held (fnfqueue proxy)",
    "conn_per_s": "completed connect + 1-byte exchange + close per second",
    "ratios": "of upload medians unless prefixed down_",
}
STAGES = ["throughput", "setup", "cps", "memory"]

PROFILES = {
    # runs, seconds, max MB, rr count, setup runs, cps runs, cps seconds, memory runs, warm-up s
    "full": dict(runs=5, seconds=3.0, max_mb=2000, rr_count=200, setup_runs=3, cps_runs=3,
                 cps_seconds=3.0, memory_runs=2, warmup=0.3),
    "quick": dict(runs=3, seconds=0.6, max_mb=600, rr_count=100, setup_runs=1, cps_runs=1,
                  cps_seconds=1.0, memory_runs=1, warmup=0.15),
}
