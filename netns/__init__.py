"""Test bed: network namespaces, links, link emulation and native MPTCP peers.

Modules:

- :mod:`netns.topology` — :class:`Topology`: client — router — server namespaces (pyroute2),
  policy routing per client link, process tracking and cleanup.
- :mod:`netns.peer` — the traffic peer (``python -m netns.peer``: server, client, agent) and
  its library API; one byte pattern, every byte checked.
- :mod:`netns.proxyd` — ``mptcp-proxy`` in a bed, its control requests, RSS.
- :mod:`netns.multipath` — the multipath bed of the interop tests (emulated paths, native
  MPTCP server, captures) and the checks every multipath test shares;
  :mod:`netns.transfer` (a transfer in a thread), :mod:`netns.linkmeter` (bytes per link).
- :mod:`netns.bench`, :mod:`netns.handover`, :mod:`netns.soak` — the measurement tools
  behind ``tools/bench``, ``tools/handover`` and ``tools/soak``.
- :mod:`netns.httpd` — tiny HTTP/1.1 server for ``mptcpize run`` + curl tests.
- :mod:`netns.nstat` — ``MPTcpExt``/``TcpExt`` counters, deltas, error-counter checks.
- :mod:`netns.capture` — tcpdump captures, tshark MPTCP checks and summaries.
- :mod:`netns.emulation` / :mod:`netns.delay` — rate, loss, delay, link down/up.

The names below are re-exported lazily, so ``python -m netns.peer`` inside a namespace does
not pay for importing pyroute2. (The capture context manager is not among them: its name is
its module's, use ``from netns.capture import capture``.)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Topology": "topology", "CommandError": "topology", "ns_pids": "topology",
    "python_argv": "topology", "reap_stale": "topology", "wait_until": "topology",
    "start_server": "peer", "run_client": "peer", "measure_rtt": "peer",
    "expected_sha": "peer", "ServerHandle": "peer", "socket_facts": "peer",
    "mptcp_info": "peer",
    "mptcp_counters": "nstat", "tcp_counters": "nstat", "diff": "nstat",
    "assert_no_errors": "nstat", "ERROR_COUNTERS": "nstat", "EXPECTED_COUNTERS": "nstat",
    "tshark_failures": "capture", "mptcp_summary": "capture",
    "LinkMeter": "linkmeter", "Transfer": "transfer",
    "Emulation": "emulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netns' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
