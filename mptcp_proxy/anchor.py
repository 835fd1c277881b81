"""Driver-side pieces of the server role and of the anchor mode: ``--announce`` endpoints,
the addresses of this host, and the sysctls a router needs while it converts.

- :func:`parse_endpoint` reads ``ADDR``, ``ADDR:PORT``, ``[ADDR6]:PORT``;
- :func:`local_addresses` lists the addresses configured on this host (pyroute2): an
  announced address must be one of them (the peer's joins go there);
- :class:`AcceptLocal` sets ``accept_local=1`` on the interfaces the servers' packets
  arrive on, and restores them. A server's segment that the anchor moves to a subflow
  ending at an announced address leaves with that address (the router's own) as source;
  it is rewritten in PREROUTING, before the routing decision, whose source validation
  drops a packet from a local address unless ``accept_local`` is set on its input
  interface (docs/platform.md §9).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

log = logging.getLogger("mptcp_proxy.anchor")

__all__ = ["parse_endpoint", "endpoint_text", "local_addresses", "other_interfaces",
           "AcceptLocal"]


def parse_endpoint(text: str) -> tuple[bytes, int | None]:
    """``ADDR``, ``ADDR:PORT`` (IPv4) or ``ADDR6``, ``[ADDR6]:PORT`` → (packed address,
    port or None). Raises ``ValueError`` with a message naming what is wrong."""
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: not an IP address") from None
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: port must be 1-65535")
        port = int(port)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise ValueError(f"{text!r}: not an address a peer can join")
    return addr.packed, port


def endpoint_text(addr: bytes, port: int | None) -> str:
    """``ADDR``, ``ADDR:PORT`` or ``[ADDR6]:PORT``."""
    a = str(ipaddress.ip_address(addr))
    if port is None:
        return a
    return f"[{a}]:{port}" if len(addr) == 16 else f"{a}:{port}"


def local_addresses() -> dict[bytes, str]:
    """Every address configured on this host (network namespace) → its interface."""
    from pyroute2 import IPRoute
    out: dict[bytes, str] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr():
            addr = a.get_attr("IFA_ADDRESS")
            if a["family"] in (socket.AF_INET, socket.AF_INET6) and addr:
                out[ipaddress.ip_address(addr).packed] = names.get(a["index"], "")
    return out


def other_interfaces(managed: list[str]) -> list[str]:
    """The interfaces of this host other than ``managed`` and ``lo``."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [n for n in names if n and n != "lo" and n not in managed]


class AcceptLocal:
    """``net.ipv4.conf.IF.accept_local=1`` on ``ifaces`` while the anchor runs; the
    previous values are restored by :meth:`restore`. With a ``journal``
    (:class:`~mptcp_proxy.recovery.Journal`) each change is recorded before it is made,
    so a crashed daemon's change is undone by the next start or ``--cleanup``."""

    def __init__(self, ifaces: list[str], journal=None,
                 root: Path = Path("/proc/sys/net/ipv4/conf")) -> None:
        self.ifaces = ifaces
        self.journal = journal
        self.root = root
        self.saved: dict[str, str] = {}

    def _entry(self, name: str) -> dict:
        return {"kind": "sysctl", "path": str(self.root / name / "accept_local"),
                "old": self.saved[name], "new": "1"}

    def apply(self) -> None:
        for name in self.ifaces:
            p = self.root / name / "accept_local"
            try:
                v = p.read_text().strip()
                if v == "1":
                    continue
                self.saved[name] = v
                if self.journal is not None:
                    self.journal.record(**self._entry(name))
                p.write_text("1")
                log.info("%s: accept_local %s -> 1 while the anchor runs", name, v)
            except OSError as e:
                log.warning("%s: cannot set accept_local: %s", name, e)

    def restore(self) -> None:
        """Put back every value we changed, unless someone changed it since."""
        from .recovery import undo
        for name in list(self.saved):
            entry = self._entry(name)
            if undo(entry) and self.journal is not None:
                self.journal.done(entry)
            del self.saved[name]
