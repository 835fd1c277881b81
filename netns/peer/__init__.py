"""The traffic peer of the test bed: one server, client and agent for the tests, the
benchmark (``tools/bench``), the handover measurement (``tools/handover``) and the soak
(``tools/soak``), all sending one deterministic byte pattern and checking every byte.

Modules:

- :mod:`~netns.peer.pattern` — the byte pattern: streams named ``(seed, direction)``,
  position-exact checks, prefix hashes (:func:`expected_sha`).
- :mod:`~netns.peer.protocol` — what a client asks of the server (:class:`Request`, flags
  and modes).
- :mod:`~netns.peer.flow` — one connection end: sending (limits, pacing), receiving and
  checking, gaps, read traces, the record.
- :mod:`~netns.peer.server`, :mod:`~netns.peer.client`, :mod:`~netns.peer.agent` — the
  three roles; ``python -m netns.peer {server,client,probe,agent}`` (see ``__main__``).
- :mod:`~netns.peer.handle` — starting peers in a namespace and reading what they print
  (:func:`start_server`, :func:`run_client`, :func:`start_agent`, :func:`start_client`).
- :mod:`~netns.peer.sockinfo` — MPTCP facts of a socket (``MPTCP_INFO``, fallback).

**Records.** Each bulk connection ends with one JSON object on the stdout of the server
and of the client (objects with an ``"event"`` key are events: ``listening``,
``connected``, ``progress``, ``rtt``). Fields: ``role``, ``conn``, ``local``, ``peer``,
``mode``, ``seed``, ``sent``/``received`` (bytes), ``sent_sha256``/``recv_sha256`` (None
with ``no-hash``), ``pattern_ok`` (every received byte was the expected one) and
``bad_at`` (stream offset of the first one that was not), ``elapsed`` (s, from
accept/connect to close), ``connect_s`` (client: s spent in connect), ``recv_s`` (s from
the first to the last received byte: ``received * 8 / recv_s`` is the receive rate; None
if nothing arrived), ``max_gap_s`` (longest pause between two reads that returned data:
the delivery gap of a handover), ``idle_at_end_s`` (s from the last received byte to the
end), ``t0``/``t_send_end``/``t_end`` (``time.monotonic()`` of the start, the end of
sending and the end), ``error`` (None, ``reset``, ``broken-pipe``, ``timeout``,
``short-header``, ``terminated`` or an errno name), ``mptcp_socket`` (SO_PROTOCOL is
IPPROTO_MPTCP), ``is_mptcp`` (TCP_IS_MPTCP), ``fallback`` (None for a plain TCP socket of
a plain TCP listener/client) and ``mptcp_info`` (decoded MPTCP_INFO read before close, or
None); with ``report``, the client's record has the server's under ``server``.
"""

from __future__ import annotations

from .handle import (
                     AgentHandle,
                     PeerError,
                     PeerProcess,
                     ServerHandle,
                     measure_rtt,
                     peer_argv,
                     run_client,
                     start_agent,
                     start_client,
                     start_server,
)
from .pattern import CHUNK, PERIOD, Stream, expected_sha, stream_chunks
from .protocol import MODES, REQUEST, Request
from .sockinfo import brief_facts, error_name, mptcp_info, socket_facts

__all__ = [
    "MODES", "CHUNK", "PERIOD", "REQUEST", "Request", "Stream", "stream_chunks",
    "expected_sha", "mptcp_info", "socket_facts", "brief_facts", "error_name",
    "start_server", "start_agent", "start_client", "run_client", "measure_rtt",
    "peer_argv", "PeerError", "PeerProcess", "ServerHandle", "AgentHandle",
]
