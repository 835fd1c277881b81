"""Addresses that vanish under a live connection are kept local while it uses them.

The local stack's socket stays bound to the address it connected from. When that
address is deleted from its interface (a DHCP lease replaced, the interface removed),
the kernel drops the socket's segments at the route lookup, before any netfilter hook
(``IpOutNoRoutes``, docs/platform.md §3): the proxy would never see them, and could not
move them to a live subflow. So when an address of a managed interface disappears while
a proxied connection is bound to it, the daemon puts it back on the loopback device, as
a host address (``/32``, ``/128``), for as long as such a connection lives. The segments
of the local socket then route (from a local address, by the main table), reach the
proxy's queue and leave rewritten onto a subflow from a live address; inbound segments
rewritten back to the old address are delivered locally.

Traps, and what is done about them:

- **ARP**: Linux answers ARP requests for any local address on every interface
  (``arp_ignore=0``) and may use any local address as the source of its own requests
  (``arp_announce=0``): the host would claim the old address on the new network. While an
  IPv4 address is kept, the managed interfaces get ``arp_ignore=1`` (answer only for
  addresses on the asking interface) and ``arp_announce=2`` (always the interface's own
  address as the source); the values are restored when no address is kept any more.
  IPv6 neighbour discovery answers only for the receiving interface's own addresses.
- **the address reappears** on a managed interface (the same lease again): the copy on
  loopback is removed at once.
- **the same address given to another host** on the new network: while it is kept, this
  host cannot reach that one (the address is local here). Kept only as long as a
  connection uses it.
- **reverse-path filtering**: inbound segments for the old address arrive on another
  interface; the daemon already runs the interfaces in loose mode.

Everything added is recorded and removed on exit (and by :meth:`KeptAddresses.release`
once unused). Driver side (pyroute2); the core only sees the address as gone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path
from typing import Callable

log = logging.getLogger("mptcp_proxy.addresses")

LOOPBACK = "lo"
ARP_SETTINGS = {"arp_ignore": "1", "arp_announce": "2"}
IFA_F_NODAD = 0x02


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


class KeptAddresses:
    """Vanished addresses kept on loopback while connections use them.

    ``managed``: the managed interfaces' names (a list that may grow); ``record``: called
    with a description of each change before it is made (a state journal)."""

    def __init__(self, managed: list[str], record: Callable[[str, dict], None] | None = None,
                 conf_root: Path = Path("/proc/sys/net/ipv4/conf")) -> None:
        self.managed = managed
        self.record = record or (lambda kind, fields: None)
        self.conf_root = conf_root
        self.kept: set[bytes] = set()
        self.saved_arp: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ decisions
    def sync(self, present: set[bytes], gone: set[bytes], in_use: set[bytes]) -> None:
        """Addresses ``gone`` just left the managed interfaces; ``present`` are on them now;
        ``in_use`` are bound to by live connections. Keep the gone ones in use; drop the
        copies that reappeared."""
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for a in sorted(gone & in_use - present - self.kept):
                self._add(ipr, a)
            for a in sorted(self.kept & present):
                log.info("%s is back on an interface: its loopback copy goes", _text(a))
                self._del(ipr, a)
        self._arp()

    def release(self, in_use: set[bytes]) -> list[bytes]:
        """Drop the kept addresses no connection uses any more; returns them."""
        unused = sorted(self.kept - in_use)
        if unused:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                for a in unused:
                    log.info("%s: no connection uses it any more", _text(a))
                    self._del(ipr, a)
            self._arp()
        return unused

    def remove(self) -> None:
        """Remove every kept address and restore the ARP settings (daemon exit)."""
        self.release(set())
        self._arp()

    # ------------------------------------------------------------------ the host
    def _add(self, ipr, addr: bytes) -> None:
        fam = socket.AF_INET6 if len(addr) == 16 else socket.AF_INET
        plen = 128 if len(addr) == 16 else 32
        idx = ipr.link_lookup(ifname=LOOPBACK)[0]
        self.record("address", {"family": fam, "address": _text(addr), "prefixlen": plen,
                                "ifname": LOOPBACK})
        try:
            ipr.addr("add", index=idx, address=_text(addr), prefixlen=plen, family=fam,
                     flags=IFA_F_NODAD if len(addr) == 16 else 0)
        except Exception as e:
            if getattr(e, "code", None) != 17:  # EEXIST: someone keeps it already
                log.warning("keeping %s on %s: %s", _text(addr), LOOPBACK, e)
                return
        self.kept.add(addr)
        log.info("%s vanished under a live connection: kept on %s", _text(addr), LOOPBACK)

    def _del(self, ipr, addr: bytes) -> None:
        fam = socket.AF_INET6 if len(addr) == 16 else socket.AF_INET
        plen = 128 if len(addr) == 16 else 32
        idx = ipr.link_lookup(ifname=LOOPBACK)[0]
        try:
            ipr.addr("del", index=idx, address=_text(addr), prefixlen=plen, family=fam)
        except Exception as e:
            log.debug("removing %s from %s: %s", _text(addr), LOOPBACK, e)
        self.kept.discard(addr)

    def _arp(self) -> None:
        """ARP settings of the managed interfaces: the safe ones while an IPv4 address is
        kept, the user's otherwise (only values we set are put back)."""
        need = any(len(a) == 4 for a in self.kept)
        for name in self.managed:
            for key, value in ARP_SETTINGS.items():
                path = self.conf_root / name / key
                if need and (name, key) not in self.saved_arp:
                    try:
                        old = path.read_text().strip()
                    except OSError:
                        continue
                    if int(old) >= int(value):
                        continue
                    self.record("sysctl", {"path": str(path), "old": old, "new": value})
                    path.write_text(value)
                    self.saved_arp[(name, key)] = old
                    log.info("%s: %s %s -> %s while an address is kept", name, key, old, value)
                elif not need and (name, key) in self.saved_arp:
                    old = self.saved_arp.pop((name, key))
                    try:
                        if path.read_text().strip() == value:
                            path.write_text(old)
                    except OSError:
                        pass
