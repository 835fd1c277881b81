"""Facts about a socket (is it MPTCP, did it fall back, its MPTCP_INFO) and small socket
helpers shared by the peer's server, client and agent."""

from __future__ import annotations

import errno
import resource
import socket
import struct
from typing import Any, Sequence

__all__ = [
    "IPPROTO_MPTCP", "mptcp_info", "socket_facts", "brief_facts", "error_name",
    "addr_str", "abort", "raise_nofile", "new_socket",
]

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
TCP_IS_MPTCP = 43
MPTCP_INFO_FLAG_FALLBACK = 1 << 0
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 1 << 1

# struct mptcp_info (include/uapi/linux/mptcp.h, 6.10+: 96 bytes), native alignment.
MPTCP_INFO_STRUCT = struct.Struct("=6B2xIIQQQ3BxIQQQQB3xIII")
MPTCP_INFO_FIELDS = (
    "subflows", "add_addr_signal", "add_addr_accepted", "subflows_max",
    "add_addr_signal_max", "add_addr_accepted_max", "flags", "token", "write_seq",
    "snd_una", "rcv_nxt", "local_addr_used", "local_addr_max", "csum_enabled",
    "retransmits", "bytes_retrans", "bytes_sent", "bytes_received", "bytes_acked",
    "subflows_total", "last_data_sent", "last_data_recv", "last_ack_recv",
)


def mptcp_info(sock: socket.socket) -> dict[str, Any] | None:
    """Decoded ``getsockopt(SOL_MPTCP, MPTCP_INFO)`` (field names without ``mptcpi_``, plus
    ``fallback`` and ``remote_key_received`` from ``flags``), or None when the socket is not
    an MPTCP socket or has fallen back (the kernel then refuses the option)."""
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, MPTCP_INFO_STRUCT.size)
    except OSError:
        return None
    raw = raw.ljust(MPTCP_INFO_STRUCT.size, b"\0")
    info = dict(zip(MPTCP_INFO_FIELDS, MPTCP_INFO_STRUCT.unpack(raw)))
    info["fallback"] = bool(info["flags"] & MPTCP_INFO_FLAG_FALLBACK)
    info["remote_key_received"] = bool(info["flags"] & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED)
    return info


def socket_facts(sock: socket.socket, mptcp_expected: bool = False) -> dict[str, Any]:
    """``mptcp_socket``, ``is_mptcp``, ``mptcp_info`` and ``fallback`` of ``sock``.

    ``mptcp_expected``: the socket was asked to be MPTCP (MPTCP client, or accepted from an
    MPTCP listener, which hands out a plain TCP socket when the SYN had no MP_CAPABLE).
    ``fallback`` is None for plain TCP that never meant to be MPTCP.
    """
    try:
        mptcp_socket = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == IPPROTO_MPTCP
    except OSError:
        mptcp_socket = False
    try:
        is_mptcp = bool(sock.getsockopt(socket.SOL_TCP, TCP_IS_MPTCP))
    except OSError:
        is_mptcp = False
    info = mptcp_info(sock) if mptcp_socket else None
    if info is not None:
        fallback: bool | None = info["fallback"]
    elif mptcp_socket or mptcp_expected:
        fallback = True
    else:
        fallback = None
    return {"mptcp_socket": mptcp_socket, "is_mptcp": is_mptcp, "fallback": fallback,
            "mptcp_info": info}


def brief_facts(record: dict[str, Any]) -> dict[str, Any]:
    """The MPTCP facts of a peer record in four keys: ``mptcp_socket``, ``fallback``
    (True: asked for MPTCP, got TCP), ``subflows`` and ``subflows_total`` (MPTCP_INFO)."""
    info = record.get("mptcp_info") or {}
    return {"mptcp_socket": record.get("mptcp_socket"), "fallback": record.get("fallback"),
            "subflows": info.get("subflows"), "subflows_total": info.get("subflows_total")}


def error_name(exc: BaseException, detail: bool = False) -> str:
    """Short name of a socket error (``reset``, ``timeout``, an errno name...); other
    exceptions by type name, with their message if ``detail``."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken-pipe"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return f"{type(exc).__name__}: {exc}" if detail else type(exc).__name__


def addr_str(sa: Sequence[Any]) -> str:
    """``host:port`` (``[v6]:port``; a v4-mapped address as plain IPv4)."""
    host = sa[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{sa[1]}" if ":" in host else f"{host}:{sa[1]}"


def abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def new_socket(addr: str, mptcp: bool) -> socket.socket:
    """A stream socket of ``addr``'s family; ``IPPROTO_MPTCP`` if ``mptcp``."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (and the hard limit to 1M when root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        return want
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
