"""Kernel MIB counters of a namespace (``/proc/net/netstat`` and ``/proc/net/snmp``).

Counter names are the kernel's (``net/mptcp/mib.c``) without the ``MPTcpExt`` prefix, as in
``nstat -asz | grep MPTcpExt``. Typical use::

    before = mptcp_counters(topo.server)
    ...                                   # traffic
    delta = diff(before, mptcp_counters(topo.server))
    assert delta["MPCapableSYNRX"] >= 1
    assert_no_errors(delta)
"""

from __future__ import annotations

import subprocess
from typing import Iterable, Mapping

__all__ = [
    "ERROR_COUNTERS",
    "EXPECTED_COUNTERS",
    "parse_netstat",
    "read_counters",
    "mptcp_counters",
    "tcp_counters",
    "diff",
    "nonzero",
    "assert_no_errors",
]

# MPTcpExt counters (net/mptcp/mib.c) that must stay 0 unless a test targets them: each
# one counts a fallback, a refused join, a broken mapping or a dropped signal. Every name
# here exists in /proc/net/netstat on this kernel (6.18; a unit test checks that when run
# on Linux).
ERROR_COUNTERS: tuple[str, ...] = (
    # handshake and fallback
    "MPCapableFallbackACK",
    "MPCapableFallbackSYNACK",
    "MPCapableDataFallback",
    "MPFallbackTokenInit",
    "MPCapableSYNTXDrop",
    "MPCapableSYNTXDisabled",
    "Blackhole",
    "MPCapableEndpAttempt",
    # joins
    "MPJoinNoTokenFound",
    "MPJoinSynAckHMacFailure",
    "MPJoinAckHMacFailure",
    "MPJoinRejected",
    "MismatchPortSynRx",
    "MismatchPortAckRx",
    # data path
    "DSSNotMatching",
    "DSSNoMatchTCP",
    "DSSCorruptionFallback",
    "DSSCorruptionReset",
    "InfiniteMapRx",
    "InfiniteMapTx",
    "DataCsumErr",
    "MPFailRx",
    "MPFailTx",
    # addresses
    "AddAddrDrop",
    "RmAddrDrop",
    "AddAddrTxDrop",
    "EchoAddTxDrop",
    # other
    "DssFallback",
    "MD5SigFallback",
    "SimultConnectFallback",
    "FallbackFailed",
)

# MPTcpExt counters expected to increase in a healthy run (each only where the test exercises
# it: handshake always, joins/addresses/priority/close only in the tests about them).
EXPECTED_COUNTERS: dict[str, tuple[str, ...]] = {
    "handshake_server": ("MPCapableSYNRX", "MPCapableACKRX"),
    "handshake_client": ("MPCapableSYNTX", "MPCapableSYNACKRX"),
    "join_server": ("MPJoinSynRx", "MPJoinAckRx"),
    "join_client": ("MPJoinSynTx", "MPJoinSynAckRx"),
    "addresses": ("AddAddr", "EchoAdd", "AddAddrTx", "EchoAddTx", "PortAdd", "RmAddr",
                  "RmAddrTx", "RmSubflow"),
    "priority": ("MPPrioTx", "MPPrioRx"),
    "close": ("MPFastcloseTx", "MPFastcloseRx", "MPRstTx", "MPRstRx"),
}


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """Parse ``/proc/net/netstat`` or ``/proc/net/snmp`` text.

    Both files hold pairs of lines ``Prefix: name1 name2 ...`` / ``Prefix: v1 v2 ...``.
    Returns ``{prefix: {name: value}}``, e.g. ``{"MPTcpExt": {"MPCapableSYNRX": 3, ...}}``.
    Malformed pairs are skipped.
    """
    out: dict[str, dict[str, int]] = {}
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    for head, vals in zip(lines[::2], lines[1::2]):
        if not head or not vals or head[0] != vals[0] or not head[0].endswith(":"):
            continue
        if len(head) != len(vals):
            continue
        try:
            values = [int(v) for v in vals[1:]]
        except ValueError:
            continue
        out.setdefault(head[0][:-1], {}).update(zip(head[1:], values))
    return out


def read_counters(ns: str | None = None) -> dict[str, dict[str, int]]:
    """All counter groups (``Tcp``, ``TcpExt``, ``MPTcpExt``, ``IpExt``, ...) of namespace
    ``ns`` (``None``: the current one), read from ``/proc/net/netstat`` + ``/proc/net/snmp``."""
    files = ["/proc/net/netstat", "/proc/net/snmp"]
    if ns is None:
        text = "\n".join(open(f).read() for f in files)
    else:
        res = subprocess.run(["ip", "netns", "exec", ns, "cat", *files], capture_output=True,
                             text=True, timeout=30, check=True)
        text = res.stdout
    return parse_netstat(text)


def mptcp_counters(ns: str | None = None) -> dict[str, int]:
    """``MPTcpExt`` counters of ``ns`` as ``{name_without_prefix: value}``."""
    return read_counters(ns).get("MPTcpExt", {})


def tcp_counters(ns: str | None = None) -> dict[str, int]:
    """``TcpExt`` counters merged with ``Tcp`` (snmp: ``RetransSegs``, ``OutSegs`` ...)."""
    groups = read_counters(ns)
    return {**groups.get("Tcp", {}), **groups.get("TcpExt", {})}


def diff(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """``after - before`` for every name in either mapping (missing counts as 0)."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in {*before, *after}}


def nonzero(delta: Mapping[str, int]) -> dict[str, int]:
    """The entries of ``delta`` that are not 0, sorted by name (for failure messages)."""
    return {k: v for k, v in sorted(delta.items()) if v}


def assert_no_errors(delta: Mapping[str, int], allow: Iterable[str] = ()) -> None:
    """Raise AssertionError naming every :data:`ERROR_COUNTERS` entry of ``delta`` that is
    non-zero, except those in ``allow``."""
    allowed = set(allow)
    bad = {k: delta[k] for k in ERROR_COUNTERS if delta.get(k) and k not in allowed}
    if bad:
        raise AssertionError(f"MPTcpExt error counters changed: {bad} "
                             f"(all changes: {nonzero(delta)})")
