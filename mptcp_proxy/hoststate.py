"""What the daemon changes in the host so that connections survive mobility, in one place:
policy routing by source address for the managed interfaces (:mod:`.routing`), vanished
addresses kept local while connections use them (:mod:`.addresses`), the fallback table
that keeps a downed link's address routable (:class:`~.links.FallbackRoutes`), loose
reverse-path filtering on interfaces that appear later, and the interfaces themselves:
``--iface`` names that do not exist yet and patterns (``--iface 'wl*'``) are watched and
used when they appear.

The link monitor's thread calls :meth:`HostState.on_new` and :meth:`HostState.after` (pyroute2 is
synchronous: the host changes happen there, before the core hears of the link change);
the event loop runs :meth:`HostState.collect` now and then to release kept addresses no
connection uses any more. :meth:`HostState.remove` undoes everything on exit; each change is
passed to ``record`` first (a state journal, if the daemon has one).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .addresses import KeptAddresses
from .core.policy import LocalIface
from .core.states import ConnState
from .routing import ManagedRoutes

log = logging.getLogger("mptcp_proxy.hoststate")

LIVE_STATES = (ConnState.SYN_SENT, ConnState.ESTABLISHED)


class HostState:
    """Routes, kept addresses and appearing interfaces of one daemon.

    ``names``: the managed interfaces known now (existing or not); ``proxy``/``pm``: the
    core (touched only from the event loop); ``routes``/``kept``/``fallback``/``rp``:
    the helpers in use (None: disabled)."""

    def __init__(self, names: list[str], proxy, pm, loop=None,
                 routes: ManagedRoutes | None = None, kept: KeptAddresses | None = None,
                 fallback=None, rp=None,
                 record: Callable[[str, dict], None] | None = None) -> None:
        self.names = list(names)
        self.proxy = proxy
        self.pm = pm
        self.loop = loop
        self.routes = routes
        self.kept = kept
        self.fallback = fallback
        self.rp = rp
        self.record = record or (lambda kind, fields: None)
        self.present: set[bytes] = set()
        self.in_use: set[bytes] = set()
        self.closed = False  # removed: nothing more is changed
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ start, stop
    def install(self, ifaces: dict[str, dict]) -> None:
        """At start (off the event loop): the routes, and what is there now."""
        self.present = {a for info in ifaces.values() for a in info["v4"] + info["v6"]}
        if self.routes is not None:
            self.routes.sync()

    def remove(self) -> None:
        """Undo every change (daemon exit); each step on its own."""
        self.closed = True
        for what, step in (("routes", self.routes and self.routes.remove),
                           ("kept addresses", self.kept and self.kept.remove)):
            if step:
                try:
                    step()
                except Exception:
                    log.exception("removing the %s failed", what)

    # ------------------------------------------------------------------ the monitor thread
    def on_new(self, name: str) -> None:
        """An interface matching a pattern appeared: it is managed from now on."""
        with self._lock:
            if name in self.names:
                return
            self.names.append(name)
        if self.routes is not None:
            self.routes.add_name(name)
        if self.kept is not None and name not in self.kept.managed:
            self.kept.managed.append(name)
        if self.rp is not None:
            self.rp.ifaces.append(name)
            self.rp.apply()
        if self.loop is not None:
            addr_id = len(self.names)
            self.loop.call_soon_threadsafe(self.pm.add_iface,
                                           LocalIface(name, addr_id, up=False))

    def after(self, changes: dict) -> None:
        """A batch of link, address or route events was read: routes follow, vanished
        addresses still in use are kept, reappeared ones released."""
        if self.closed:
            return
        present = set()
        gone = set()
        for name, (old, new) in changes.items():
            if old is not None:
                gone |= set(old[1]) | set(old[2])
            if new is not None:
                gone -= set(new[1]) | set(new[2])
        from .links import read_ifaces
        try:
            now = read_ifaces(list(self.names), allow_missing=True)
        except Exception:
            now = {}
        for info in now.values():
            present |= set(info["v4"]) | set(info["v6"])
        gone -= present
        self.present = present
        if self.kept is not None and (gone or self.kept.kept):
            # every vanished address is kept at first (a connection made a moment ago is
            # not in ``in_use`` yet): :meth:`collect` releases the unused ones soon after
            self.kept.sync(present, gone, gone)
        self.sync_routes()

    def sync_routes(self) -> None:
        """(Off the loop.) Routes follow the interfaces and the kept addresses."""
        if self.routes is not None:
            if self.kept is not None:
                import ipaddress
                self.routes.extra_sources = {str(ipaddress.ip_address(a))
                                             for a in self.kept.kept}
            self.routes.sync()

    # ------------------------------------------------------------------ the event loop
    def collect(self) -> list[bytes]:
        """(Event loop.) The addresses live connections are bound to; returns the kept
        ones no longer in use (to release off the loop, :meth:`release`)."""
        self.in_use = {c.key[0] for c in list(self.proxy.connections.values())
                       if c.state in LIVE_STATES}
        if self.kept is None:
            return []
        return sorted(self.kept.kept - self.in_use)

    def release(self) -> None:
        """(Off the loop.) Release the kept addresses no connection uses."""
        if self.kept is not None:
            self.kept.release(set(self.in_use))
            self.sync_routes()

